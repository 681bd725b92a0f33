"""Model faults end to end: each one ends in one readable message in the room (R01, R02, A14)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import replies
from bot.agent import prompts
from tests.fakes.llm_server import FakeLLM, closed_port_url
from tests.fakes.talk_server import FakeTalk
from tests.harness import Daemon, dm_event, running_daemon

Script = Callable[[FakeLLM], None]
FAST_RETRY = {"retry-after-ms": "10"}


async def assert_healthy(daemon: Daemon) -> None:
    for path in ("/healthz", "/readyz"):
        async with daemon.session.get(f"{daemon.url}{path}") as resp:
            assert resp.status == 200, path


async def assert_still_serving(daemon: Daemon) -> None:
    """The process is healthy and the next ordinary message gets an ordinary answer."""
    await assert_healthy(daemon)
    daemon.llm.reply("back to normal")
    assert await daemon.say(dm_event("still there?")) == ["back to normal"]


def tool_results(daemon: Daemon, request_index: int) -> list[str]:
    """What the model was told about the tool calls, in the given request."""
    messages = daemon.llm.requests[request_index].messages
    return [str(m["content"]) for m in messages if m["role"] == "tool"]


def _times(count: int, script: Script) -> Script:
    def repeated(fake: FakeLLM) -> None:
        for _ in range(count):
            script(fake)

    return repeated


@pytest.mark.parametrize(
    ("extra", "script", "notice_kind"),
    [
        pytest.param(
            {"llm": {"base_url": closed_port_url()}},
            lambda _fake: None,
            "unavailable",
            id="r01_connection_refused",
        ),
        pytest.param(
            {"llm": {"timeout_s": 0.3}},
            lambda fake: fake.hang(10),  # one: the timeout bounds the retries too
            "timeout",
            id="r01_hang_past_timeout",
        ),
        pytest.param(
            {},
            _times(3, lambda fake: fake.raw(500, {"error": "boom"}, FAST_RETRY)),
            "unavailable",
            id="r01_http_500",
        ),
        pytest.param(
            {},
            _times(3, lambda fake: fake.raw(429, {"error": "slow"}, FAST_RETRY)),
            "rate_limited",
            id="r01_http_429_persistent",
        ),
        pytest.param(
            {},
            lambda fake: fake.raw(200, "<html><body>Please log in</body></html>"),
            "bad_response",
            id="r02_html_instead_of_json",
        ),
    ],
)
async def test_r01_r02_model_failure_gives_one_readable_notice(
    *,
    tmp_path: Path,
    talk: FakeTalk,
    llm: FakeLLM,
    extra: dict[str, Any],
    script: Script,
    notice_kind: str,
) -> None:
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        script(llm)
        texts = await daemon.say(dm_event("hello?"))
        assert texts == [replies.llm_notice(notice_kind)]
        if "base_url" in extra.get("llm", {}):
            await assert_healthy(daemon)  # the model stays unreachable for this daemon
        else:
            await assert_still_serving(daemon)


async def test_r01_429_with_retry_after_then_success_answers_normally(daemon: Daemon) -> None:
    daemon.llm.raw(429, {"error": "slow down"}, {"Retry-After": "0.01"})
    daemon.llm.reply("recovered")
    assert await daemon.say(dm_event("are you busy?")) == ["recovered"]
    assert len(daemon.llm.requests) == 2


async def test_r02_invalid_tool_call_json_goes_back_to_the_model(daemon: Daemon) -> None:
    daemon.llm.call("current_time", '{"timezone": "UTC",,')
    daemon.llm.reply("Sorry, let me answer without the tool.")
    texts = await daemon.say(dm_event("what time is it?"))
    assert texts == ["Sorry, let me answer without the tool."]
    [result] = tool_results(daemon, 1)
    assert result.startswith("error:")
    assert "JSON" in result
    await assert_still_serving(daemon)


async def test_r02_unknown_tool_is_refused_and_the_turn_goes_on(daemon: Daemon) -> None:
    daemon.llm.call("launch_missiles", {"target": "moon"})
    daemon.llm.reply("I can't do that.")
    assert await daemon.say(dm_event("launch!")) == ["I can't do that."]
    [result] = tool_results(daemon, 1)
    assert "unknown tool" in result
    await assert_still_serving(daemon)


async def test_r02_fifty_parallel_tool_calls_all_run_within_the_configured_cap(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    """Fifty calls in one answer, allowed by [limits]: each runs and answers its own id
    (the default cap of 16 and what happens beyond it: tests/test_injection.py, I07)."""
    extra = {"limits": {"tool_calls_per_round": 50, "tool_calls_per_turn": 50}}
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        zones = ["UTC", "Europe/Berlin", "Asia/Tokyo", "America/New_York", "Australia/Sydney"]
        llm.calls([("current_time", {"timezone": zones[i % 5]}, None) for i in range(50)])
        llm.reply("Here are fifty clocks.")
        texts = await daemon.say(dm_event("time everywhere, 50 times"))
        assert texts == ["Here are fifty clocks."]
        results = tool_results(daemon, 1)
    assert len(results) == 50
    assert not any(r.startswith("error:") for r in results)
    assert all(zones[i % 5] in results[i] for i in range(50))


async def test_a14_model_calling_tools_forever_is_stopped_with_a_final_message(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm, {"llm": {"max_rounds": 4}}) as daemon:
        for _ in range(5):  # one more than the limit: the model never stops by itself
            llm.call("current_time", {"timezone": "UTC"})
        texts = await daemon.say(dm_event("loop forever"))
        assert texts == [prompts.max_rounds_summary(4, ["current_time"])]
        assert len(llm.requests) == 4
        await assert_still_serving(daemon)  # the fifth tool call, then an answer
