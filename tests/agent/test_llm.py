"""The model client against the scripted fake server: paths, retries, timeouts, typed errors."""

from __future__ import annotations

import asyncio
import email.utils
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from bot import __version__
from bot.agent import llm as llm_module
from bot.agent.llm import (
    LLM,
    MAX_RETRY_AFTER_DELAY,
    Completion,
    LLMCallError,
    ToolCallRequest,
    Usage,
    parse_completion,
    retry_after,
    retry_delay,
    should_retry,
)
from bot.config import LLMSettings
from bot.errors import LLMError
from tests.fakes.llm_server import DEFAULT_REPLY, FakeLLM, closed_port_url

API_KEY = "sk-canary-0123456789abcdef"
USER = [{"role": "user", "content": "hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "current_time", "description": "d", "parameters": {"type": "object"}},
    }
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=API_KEY) as server:
        yield server


def settings(base_url: str, **changes: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": SecretStr(API_KEY),
        "model": "test-model",
        "timeout_s": 5,
    }
    return LLMSettings(**(values | changes))


@pytest.fixture
async def llm(fake: FakeLLM) -> AsyncIterator[LLM]:
    client = LLM(settings(fake.base_url))
    yield client
    await client.aclose()


async def complete_with(llm_settings: LLMSettings) -> Completion:
    client = LLM(llm_settings)
    try:
        return await client.complete(USER, [])
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("flavor", "use_server_url", "path"),
    [
        pytest.param("openai", False, "/v1/chat/completions", id="openai"),
        pytest.param("openwebui", True, "/api/chat/completions", id="openwebui_api_prefix"),
    ],
)
async def test_flavor_decides_the_path(
    fake: FakeLLM, flavor: str, use_server_url: bool, path: str
) -> None:
    base = fake.server_url if use_server_url else fake.base_url
    completion = await complete_with(settings(base, flavor=flavor))
    assert completion.text == "ok"
    assert [request.path for request in fake.requests] == [path]


async def test_request_carries_model_messages_and_tools(fake: FakeLLM, llm: LLM) -> None:
    fake.reply("hi there")
    completion = await llm.complete(USER, TOOLS)
    assert completion == Completion("hi there", (), "stop")
    (request,) = fake.requests
    assert request.body["model"] == "test-model"
    assert request.messages == USER
    assert request.tool_names == ["current_time"]


async def test_no_tools_key_when_no_tools(fake: FakeLLM, llm: LLM) -> None:
    await llm.complete(USER, [])
    assert fake.requests[0].tools is None


async def test_max_tokens_is_sent_when_configured(fake: FakeLLM) -> None:
    await complete_with(settings(fake.base_url, max_tokens=300))
    assert fake.requests[0].body["max_tokens"] == 300


async def test_tool_calls_are_returned_in_order(fake: FakeLLM, llm: LLM) -> None:
    fake.calls([("a", {"x": 1}, "c1"), ("b", "{}", "c2")], text="let me check")
    completion = await llm.complete(USER, TOOLS)
    assert completion == Completion(
        "let me check",
        (ToolCallRequest("c1", "a", '{"x": 1}'), ToolCallRequest("c2", "b", "{}")),
        "tool_calls",
    )


@pytest.mark.parametrize(
    ("script", "text"),
    [
        pytest.param(
            lambda f: f.raw(500, {"error": "boom"}, {"retry-after-ms": "10"}),
            "recovered",
            id="r01_500_then_success",
        ),
        pytest.param(
            lambda f: f.raw(429, {"error": "slow down"}, {"Retry-After": "0.01"}),
            "recovered",
            id="r01_429_retry_after_then_success",
        ),
    ],
)
async def test_r01_sdk_retries_then_succeeds(
    fake: FakeLLM, llm: LLM, script: Callable[[FakeLLM], None], text: str
) -> None:
    script(fake)
    fake.reply(text)
    completion = await llm.complete(USER, [])
    assert completion.text == text
    assert len(fake.requests) == 2


def _fail_always(status: int, headers: dict[str, str]) -> Callable[[FakeLLM], None]:
    def script(fake: FakeLLM) -> None:
        for _ in range(5):
            fake.raw(status, {"error": "no"}, headers)

    return script


@pytest.mark.parametrize(
    ("script", "kind", "attempts"),
    [
        pytest.param(
            _fail_always(500, {"retry-after-ms": "10"}), "unavailable", 3, id="r01_persistent_500"
        ),
        pytest.param(
            _fail_always(503, {"retry-after-ms": "10"}), "unavailable", 3, id="r01_persistent_503"
        ),
        pytest.param(
            _fail_always(429, {"retry-after-ms": "10"}), "rate_limited", 3, id="r01_persistent_429"
        ),
        pytest.param(
            _fail_always(429, {"Retry-After": "600"}), "rate_limited", 1, id="r01_429_wait_too_long"
        ),
        pytest.param(_fail_always(401, {}), "auth", 1, id="wrong_key_401"),
        pytest.param(_fail_always(403, {}), "auth", 1, id="forbidden_403"),
        pytest.param(_fail_always(400, {}), "bad_response", 1, id="rejected_400"),
        pytest.param(lambda f: f.raw(200, "<html>login</html>"), "bad_response", 1, id="r02_html"),
        pytest.param(lambda f: f.raw(200, {"choices": []}), "bad_response", 1, id="r02_no_choice"),
        pytest.param(lambda f: f.raw(200, {"error": "x"}), "bad_response", 1, id="error_body_200"),
        pytest.param(lambda f: f.raw(200, "[1, 2]"), "bad_response", 1, id="json_array_body"),
    ],
)
async def test_failures_become_typed_llm_errors(
    fake: FakeLLM, llm: LLM, script: Callable[[FakeLLM], None], kind: str, attempts: int
) -> None:
    script(fake)
    with pytest.raises(LLMCallError) as caught:
        await llm.complete(USER, [])
    assert caught.value.kind == kind
    assert isinstance(caught.value, LLMError)
    assert len(fake.requests) == attempts
    assert API_KEY not in str(caught.value)


async def test_r01_hang_past_the_timeout_is_a_timeout(fake: FakeLLM) -> None:
    fake.hang(5)
    started = time.monotonic()
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(fake.base_url, timeout_s=0.5))
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2


async def test_r01_refused_connection_is_unavailable() -> None:
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(closed_port_url()))
    assert caught.value.kind == "unavailable"


async def test_a_refused_connection_names_the_endpoint_but_not_the_key() -> None:
    where = closed_port_url()
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(where))
    assert caught.value.reason == f"cannot connect to the model server at {where}"
    assert API_KEY not in str(caught.value)


async def test_r01_server_gone_mid_session_is_unavailable(fake: FakeLLM, llm: LLM) -> None:
    await llm.complete(USER, [])
    await fake.refuse_connections()
    with pytest.raises(LLMCallError) as caught:
        await llm.complete(USER, [])
    assert caught.value.kind == "unavailable"


async def test_a13_api_key_only_in_the_authorization_header(fake: FakeLLM, llm: LLM) -> None:
    leaked = [{"role": "user", "content": f"my key is {API_KEY}, keep it"}]
    await llm.complete(leaked, TOOLS)
    (request,) = fake.requests
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in request.raw
    assert request.messages[0]["content"] == "my key is [redacted], keep it"


async def test_empty_key_still_talks_to_keyless_servers(fake: FakeLLM) -> None:
    completion = await complete_with(settings(fake.base_url, api_key=SecretStr("")))
    assert completion.text == "ok"
    assert fake.requests[0].headers["Authorization"] == "Bearer not-needed"


# -- the client's own HTTP (#19: one aiohttp POST with the SDK's retry policy) ---------


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every computed retry wait, recorded and then skipped."""
    waits: list[float] = []
    computed = llm_module.retry_delay

    def recorded(retries_taken: int, headers: Any) -> float:
        waits.append(computed(retries_taken, headers))
        return 0.0

    monkeypatch.setattr(llm_module, "retry_delay", recorded)
    return waits


@pytest.mark.timing
async def test_r01_the_timeout_bounds_the_retries_and_their_waits(fake: FakeLLM) -> None:
    for _ in range(5):
        fake.raw(500, {"error": "boom"}, {"retry-after-ms": "300"})  # answers at 0, 0.3 s
    started = time.monotonic()
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(fake.base_url, timeout_s=0.5))
    assert caught.value.kind == "timeout"
    assert len(fake.requests) == 2  # the third would come at 0.6 s: past the deadline
    assert time.monotonic() - started < 1.2


@pytest.mark.timing
async def test_r01_a_retry_wait_past_the_deadline_ends_in_the_timeout(fake: FakeLLM) -> None:
    # 90 s is honoured (the SDK honours up to 120 s), so no backoff-paced second try.
    fake.raw(429, {"error": "slow down"}, {"Retry-After": "90"})
    started = time.monotonic()
    with pytest.raises(LLMCallError) as caught:
        await complete_with(settings(fake.base_url, timeout_s=1))
    assert caught.value.kind == "timeout"
    assert len(fake.requests) == 1
    assert time.monotonic() - started < 2


JITTERED = (0.375, 0.5)  # the first backoff: 0.5 s less 0-25 %


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"retry-after-ms": "10"}, 0.01, id="ms"),
        pytest.param({"Retry-After": "1.5"}, 1.5, id="seconds_float"),
        pytest.param({"retry-after-ms": "200", "retry-after": "5"}, 0.2, id="ms_first"),
        pytest.param({"retry-after-ms": "soon", "retry-after": "5"}, 5.0, id="bad_ms_skipped"),
        pytest.param({"retry-after": "90"}, 90.0, id="beyond_60_honoured"),
        pytest.param({"retry-after": "120"}, 120.0, id="the_cap"),
        pytest.param({"retry-after": "121"}, JITTERED, id="beyond_the_cap_backoff"),
        pytest.param({"retry-after": "0"}, JITTERED, id="zero_backoff"),
        pytest.param({"retry-after": "-3"}, JITTERED, id="negative_backoff"),
        pytest.param({"retry-after": "inf"}, JITTERED, id="infinite_backoff"),
        pytest.param({"retry-after": "nan"}, JITTERED, id="nan_backoff"),
        pytest.param({"retry-after": "whenever"}, JITTERED, id="garbage_backoff"),
        pytest.param({}, JITTERED, id="none_backoff"),
    ],
)
def test_retry_delay_honours_retry_after_up_to_two_minutes(
    headers: dict[str, str], expected: float | tuple[float, float]
) -> None:
    delay = retry_delay(0, CIMultiDict(headers))  # as aiohttp gives them: any case
    if isinstance(expected, tuple):
        assert expected[0] <= delay <= expected[1]
    else:
        assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("retries_taken", "low", "high"),
    [(0, 0.375, 0.5), (1, 0.75, 1.0), (2, 1.5, 2.0), (4, 6.0, 8.0), (9, 6.0, 8.0)],
)
def test_the_backoff_doubles_up_to_eight_seconds(
    retries_taken: int, low: float, high: float
) -> None:
    for _ in range(50):
        assert low <= retry_delay(retries_taken, None) <= high


def test_an_http_date_retry_after_counts_from_now() -> None:
    in_30_s = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 29 <= retry_after({"retry-after": in_30_s}) <= 30  # type: ignore[operator]
    assert 29 <= retry_delay(0, {"retry-after": in_30_s}) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert JITTERED[0] <= retry_delay(0, {"retry-after": past}) <= JITTERED[1]
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    assert not should_retry(503, {"retry-after": in_an_hour})


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (500, {}, True),
        (503, {}, True),
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (400, {}, False),
        (401, {}, False),
        (404, {}, False),
        (500, {"x-should-retry": "false"}, False),
        (400, {"x-should-retry": "true"}, True),
        (429, {"retry-after": str(MAX_RETRY_AFTER_DELAY + 1)}, False),
        (400, {"x-should-retry": "true", "retry-after": "600"}, False),
        (429, {"retry-after": "1e999"}, False),  # overflow: a server asking for forever
        (429, {"retry-after": "inf"}, True),  # written out: ignored, as the SDK does
    ],
)
def test_should_retry_follows_the_sdk(status: int, headers: dict[str, str], expected: bool) -> None:
    assert should_retry(status, headers) is expected


async def test_r01_a_lost_connection_is_retried(
    fake: FakeLLM, llm: LLM, no_waits: list[float]
) -> None:
    fake.drop()
    fake.reply("recovered")
    assert (await llm.complete(USER, [])).text == "recovered"
    assert len(fake.requests) == 2
    assert len(no_waits) == 1


async def test_r01_a_connection_lost_every_time_is_unavailable(
    fake: FakeLLM, llm: LLM, no_waits: list[float]
) -> None:
    for _ in range(3):
        fake.drop()
    with pytest.raises(LLMCallError) as caught:
        await llm.complete(USER, [])
    assert (caught.value.kind, caught.value.reason) == (
        "unavailable",
        "lost the connection to the model server",
    )
    assert len(fake.requests) == 3


async def test_the_model_server_sees_talkbot_calling(fake: FakeLLM, llm: LLM) -> None:
    await llm.complete(USER, [])
    (request,) = fake.requests
    assert request.headers["User-Agent"] == f"talkbot/{__version__}"


async def test_a_closed_client_sends_nothing(fake: FakeLLM) -> None:
    client = LLM(settings(fake.base_url))
    await client.complete(USER, [])
    await client.aclose()
    await client.aclose()  # twice is fine
    with pytest.raises(LLMCallError) as caught:
        await client.complete(USER, [])
    assert caught.value.kind == "unavailable"
    assert len(fake.requests) == 1


async def test_a_client_closed_during_a_call_lets_it_finish_then_closes(fake: FakeLLM) -> None:
    """As `!reload` closes the client it replaces: the call under way gets its answer on
    its own connection, a new call is refused, and the connections close after the last."""
    fake.hang(0.5)
    client = LLM(settings(fake.base_url))
    under_way = asyncio.create_task(client.complete(USER, []))
    await fake.wait_for_requests(1)
    await client.aclose()
    with pytest.raises(LLMCallError) as caught:
        await client.complete(USER, [])
    assert caught.value.kind == "unavailable"
    assert (await under_way).text == DEFAULT_REPLY
    assert len(fake.requests) == 1
    assert client._session is None  # closed with the last call


def test_the_client_is_built_before_the_loop_and_used_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(llm_module, "retry_delay", lambda *_: 0.0)
    where = closed_port_url()
    client = LLM(settings(where))  # as the composition root may: no loop runs yet

    async def use() -> LLMCallError:
        try:
            with pytest.raises(LLMCallError) as caught:
                await client.complete(USER, [])
            return caught.value
        finally:
            await client.aclose()

    assert asyncio.run(use()).reason == f"cannot connect to the model server at {where}"


async def test_the_pool_does_not_cap_the_configured_concurrency(fake: FakeLLM, llm: LLM) -> None:
    fake.latency_s = 0.5
    # More than aiohttp's default pool (100); fewer than the fake's listen backlog (128).
    many = 120
    answers = await asyncio.gather(*(llm.complete(USER, []) for _ in range(many)))
    assert len(answers) == many
    assert fake.max_in_flight == many


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param('sk-"quoted"-0123456789', id="json_escaped"),
        pytest.param("sk-schlüssel-0123456789", id="non_ascii"),
    ],
)
async def test_a13_a_key_json_would_escape_is_redacted_too(fake: FakeLLM, secret: str) -> None:
    leaked = [{"role": "user", "content": f"my key is {secret}"}]
    client = LLM(settings(fake.base_url, api_key=SecretStr(secret)))
    try:
        await client.complete(leaked, [])
    finally:
        await client.aclose()
    (request,) = fake.requests
    assert request.messages[0]["content"] == "my key is [redacted]"


def test_the_daemon_does_not_import_the_openai_sdk() -> None:
    code = (
        "import sys, bot.app, bot.cli;"
        "from bot.agent.llm import LLM; from bot.config import LLMSettings;"
        "LLM(LLMSettings());"
        "print(sorted(m for m in ('openai', 'httpx', 'httpx2') if m in sys.modules))"
    )
    run = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.strip() == "[]"


def _body(message: dict[str, Any], finish: str | None = "stop") -> bytes:
    return json.dumps({"choices": [{"message": message, "finish_reason": finish}]}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            _body({"content": None, "tool_calls": [{"function": {"name": "a", "arguments": ""}}]}),
            Completion(None, (ToolCallRequest(None, "a", ""),), "stop"),
            id="r02_missing_id",
        ),
        pytest.param(
            _body({"tool_calls": [{"id": "c", "function": {"name": "a", "arguments": {"x": 1}}}]}),
            Completion(None, (ToolCallRequest("c", "a", '{"x": 1}'),), "stop"),
            id="arguments_as_object",
        ),
        pytest.param(
            _body({"tool_calls": [{"id": "c"}, "junk", {"function": {"arguments": "{}"}}]}),
            Completion(None, (ToolCallRequest(None, "", "{}"),), "stop"),
            id="r02_junk_calls",
        ),
        pytest.param(
            _body({"content": "cut"}, "length"),
            Completion("cut", (), "length"),
            id="r02_length",
        ),
        pytest.param(_body({"content": 5}, None), Completion(None, (), None), id="odd_content"),
    ],
)
def test_parse_completion_is_lenient_about_shape(body: bytes, expected: Completion) -> None:
    assert parse_completion(body) == expected


# -- usage (#16) ---------------------------------------------------------------------


def _with_usage(usage: Any) -> bytes:
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param({"prompt_tokens": 120, "completion_tokens": 7}, Usage(120, 7), id="openai"),
        pytest.param({"input_tokens": 50, "output_tokens": 3}, Usage(50, 3), id="input_output"),
        pytest.param(
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, Usage(0, 0), id="zero"
        ),
    ],
)
def test_the_servers_usage_is_read(usage: dict[str, Any], expected: Usage) -> None:
    assert parse_completion(_with_usage(usage)).usage == expected


REQUEST = {"model": "m", "messages": [{"role": "user", "content": "x" * 398}], "tools": TOOLS}


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(None, id="absent"),
        pytest.param("lots", id="not_an_object"),
        pytest.param({"prompt_tokens": "12", "completion_tokens": 3}, id="text"),
        pytest.param({"prompt_tokens": -1, "completion_tokens": 3}, id="negative"),
        pytest.param({"prompt_tokens": True, "completion_tokens": 3}, id="boolean"),
        pytest.param({"total_tokens": 30}, id="total_only"),
    ],
)
def test_without_usable_usage_the_tokens_are_estimated_and_marked(usage: Any) -> None:
    body = _with_usage(usage) if usage is not None else _body({"content": "hi"})
    estimate = parse_completion(body, REQUEST).usage
    sent = len(json.dumps(REQUEST["messages"])) + len(json.dumps(TOOLS))
    assert estimate == Usage(-(-sent // 4), 1, estimated=True)  # "hi": one token, rounded up
    assert estimate.prompt > 100  # the 398 characters of the message count


async def test_the_client_estimates_from_the_request_it_sent(fake: FakeLLM, llm: LLM) -> None:
    fake.reply("four", usage=None)
    completion = await llm.complete(USER, TOOLS)
    (request,) = fake.requests
    sent = len(json.dumps(request.body["messages"])) + len(json.dumps(request.body["tools"]))
    assert completion.usage == Usage(-(-sent // 4), 1, estimated=True)


async def test_the_client_passes_the_servers_usage_on(fake: FakeLLM, llm: LLM) -> None:
    fake.reply("hi", usage={"prompt_tokens": 321, "completion_tokens": 12, "total_tokens": 333})
    assert (await llm.complete(USER, TOOLS)).usage == Usage(321, 12)
