"""The tool loop against the scripted fake model: rounds, refusals, confirmations, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from structlog.testing import capture_logs

from bot.agent import prompts
from bot.agent.llm import LLM, Usage
from bot.agent.loop import (
    GaveUp,
    NeedsConfirmation,
    Reply,
    TurnOutcome,
    TurnState,
    resume_turn,
    run_turn,
)
from bot.config import LimitsSettings, LLMSettings, Role
from bot.confirmations import PendingCall
from bot.errors import ToolError
from bot.tools import Tool, Toolbox, ToolContext, roles_from
from bot.tools.clock import make_clock_tools
from tests.fakes.llm_server import FakeLLM, RecordedRequest
from tests.tools import context

NOW = datetime(2026, 5, 4, 8, 15, tzinfo=UTC).timestamp()
START = [
    {"role": "system", "content": "You are a test bot."},
    {"role": "user", "content": "hello"},
]


class NoteArgs(BaseModel):
    text: str = ""


class PathArgs(BaseModel):
    path: str


class Spy:
    """Tools that record their runs; the order of ``runs`` is the order they ran in."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def tool(self, name: str, minimum: Role = "user", **policy: Any) -> Tool[Any]:
        async def run(args: BaseModel, ctx: ToolContext) -> str:
            self.runs.append(f"{name}:{args.model_dump_json()}")
            return f"{name} ran"

        return Tool(
            name=name,
            description=f"the {name} tool",
            args=policy.pop("args", NoteArgs),
            run=run,
            roles=roles_from(minimum),
            **policy,
        )


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as server:
        yield server


@pytest.fixture
async def llm(fake: FakeLLM) -> AsyncIterator[LLM]:
    client = LLM(LLMSettings(base_url=fake.base_url, api_key=SecretStr("sk-test-key-123456")))
    yield client
    await client.aclose()


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def toolbox(spy: Spy) -> Toolbox:
    return Toolbox(
        [
            *make_clock_tools(),
            spy.tool("note"),
            spy.tool("other"),
            spy.tool("fetch", brings_untrusted=True),
            spy.tool("send", egress=True, confirm_when=lambda a, c: a.text != c.room),
            spy.tool("file_write", "admin", args=PathArgs, confirm=True),
            spy.tool("bot_restart", "admin", confirm=True),
        ]
    )


ctx = partial(context.ctx, now=NOW)


async def turn(llm: LLM, toolbox: Toolbox, context: ToolContext, rounds: int = 8) -> TurnOutcome:
    return await run_turn(llm, toolbox, context, list(START), max_rounds=rounds)


def tool_messages(request: RecordedRequest) -> list[dict[str, Any]]:
    return [m for m in request.messages if m["role"] == "tool"]


def assert_every_call_answered(request: RecordedRequest) -> None:
    """What OpenAI requires: each tool_call id has exactly one tool message after it."""
    asked = [c["id"] for m in request.messages for c in m.get("tool_calls") or ()]
    answered = [m["tool_call_id"] for m in tool_messages(request)]
    assert sorted(asked) == sorted(answered)
    assert len(set(asked)) == len(asked)


async def test_plain_reply(fake: FakeLLM, llm: LLM, toolbox: Toolbox) -> None:
    fake.reply("Hello Alice!")
    outcome = await turn(llm, toolbox, ctx())
    assert outcome == Reply("Hello Alice!", rounds=1, tools_used=())
    assert fake.requests[0].messages == START


async def test_two_round_current_time_turn(fake: FakeLLM, llm: LLM, toolbox: Toolbox) -> None:
    fake.call("current_time", {"timezone": "Europe/Berlin"}, id="call_1")
    fake.reply("It is 10:15 in Berlin.")
    outcome = await turn(llm, toolbox, ctx())
    assert outcome == Reply("It is 10:15 in Berlin.", rounds=2, tools_used=("current_time",))
    second = fake.requests[1]
    assert second.messages[-2]["tool_calls"][0]["id"] == "call_1"
    assert second.messages[-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "Monday 2026-05-04 10:15:00 CEST (UTC+0200, Europe/Berlin)",
    }


async def test_several_calls_in_one_round_run_in_order(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    fake.calls([("note", {"text": "1"}, None), ("other", {}, None), ("note", {"text": "2"}, None)])
    fake.reply("done")
    outcome = await turn(llm, toolbox, ctx())
    assert spy.runs == ['note:{"text":"1"}', 'other:{"text":""}', 'note:{"text":"2"}']
    assert isinstance(outcome, Reply)
    assert outcome.tools_used == ("note", "other", "note")
    assert [m["content"] for m in tool_messages(fake.requests[1])] == [
        "note ran",
        "other ran",
        "note ran",
    ]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            ("note", '{"text": ', "error: arguments are not valid JSON"), id="r02_bad_json"
        ),
        pytest.param(("note", "[1, 2]", "error: arguments must be a JSON object"), id="r02_array"),
        pytest.param(("note", '{"text": NaN}', "NaN is not allowed"), id="r02_nan"),
        pytest.param(("note", {"text": 5}, "text: Input should be a valid string"), id="schema"),
        pytest.param(("format_disk", {}, "error: unknown tool 'format_disk'"), id="r02_unknown"),
        pytest.param(("", {}, "error: unknown tool ''"), id="r02_no_name"),
        pytest.param(
            ("file_write", '{"path": "a", ', "not valid JSON"), id="r02_dangerous_bad_json_admin"
        ),
    ],
)
async def test_r02_malformed_calls_become_readable_results(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy, case: tuple[str, Any, str]
) -> None:
    name, args, fragment = case
    fake.call(name, args, id="bad")
    fake.reply("sorry")
    outcome = await turn(llm, toolbox, ctx("admin"))
    assert outcome == Reply("sorry", rounds=2, tools_used=())
    (result,) = tool_messages(fake.requests[1])
    assert fragment in result["content"]
    assert spy.runs == []
    assert_every_call_answered(fake.requests[1])


async def test_r02_broken_arguments_are_not_echoed_into_history(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.call("note", '{"text": ', id="bad")
    await turn(llm, toolbox, ctx())
    assistant = fake.requests[1].messages[-2]
    assert assistant["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(([("note", {}, "dup"), ("other", {}, "dup")], True), id="r02_duplicate_ids"),
        pytest.param(([("note", {}, None), ("other", {}, None)], False), id="r02_missing_ids"),
    ],
)
async def test_r02_ids_are_made_unique(
    fake: FakeLLM,
    llm: LLM,
    toolbox: Toolbox,
    spy: Spy,
    case: tuple[list[tuple[str, Any, str | None]], bool],
) -> None:
    calls, auto_ids = case
    fake.calls(calls, auto_ids=auto_ids)
    fake.reply("done")
    await turn(llm, toolbox, ctx())
    assert len(spy.runs) == 2
    assert_every_call_answered(fake.requests[1])


async def test_r02_reused_id_from_an_earlier_round_is_replaced(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.call("note", {}, id="same")
    fake.call("other", {}, id="same")
    fake.reply("done")
    await turn(llm, toolbox, ctx())
    assert_every_call_answered(fake.requests[2])


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param(
            lambda f: f.raw(200, {"choices": []}),
            GaveUp("llm_error", llm_error_kind="bad_response"),
            id="r02_empty_choices",
        ),
        pytest.param(
            lambda f: f.raw(200, "<html><body>Sign in</body></html>"),
            GaveUp("llm_error", llm_error_kind="bad_response"),
            id="r02_html_200",
        ),
        pytest.param(
            lambda f: f.raw(401, {"error": "bad key"}),
            GaveUp("llm_error", llm_error_kind="auth"),
            id="r01_auth",
        ),
        pytest.param(
            lambda f: f.reply("A long story", finish_reason="length"),
            Reply(f"A long story\n\n{prompts.TRUNCATED_NOTE}", rounds=1, tools_used=()),
            id="r02_length_with_text",
        ),
        pytest.param(
            lambda f: f.reply(None, finish_reason="length"),
            GaveUp("length", rounds=1),
            id="r02_length_without_text",
        ),
        pytest.param(lambda f: f.reply(""), GaveUp("empty", rounds=1), id="r02_empty_answer"),
        pytest.param(lambda f: f.reply("  \n "), GaveUp("empty", rounds=1), id="r02_blank"),
        pytest.param(lambda f: f.reply(None), GaveUp("empty", rounds=1), id="r02_null_content"),
    ],
)
async def test_r02_unusable_answers_end_the_turn_cleanly(
    fake: FakeLLM,
    llm: LLM,
    toolbox: Toolbox,
    script: Callable[[FakeLLM], None],
    expected: TurnOutcome,
) -> None:
    script(fake)
    assert await turn(llm, toolbox, ctx()) == expected


async def test_a01_user_is_not_offered_admin_tools_and_the_call_is_refused(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    fake.calls([("bot_restart", {}, "r"), ("file_write", {"path": "x"}, "w")])
    fake.reply("I can't do that.")
    outcome = await turn(llm, toolbox, ctx("user"))
    offered = fake.requests[0].tool_names
    assert "bot_restart" not in offered
    assert "file_write" not in offered
    assert "current_time" in offered
    assert spy.runs == []
    assert outcome == Reply("I can't do that.", rounds=2, tools_used=())
    assert [m["content"] for m in tool_messages(fake.requests[1])] == [
        "error: not allowed: this tool is not available to you"
    ] * 2


async def test_a01_guest_is_offered_no_tools_at_all(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    await turn(llm, toolbox, ctx("guest"))
    assert fake.requests[0].tools is None


@pytest.mark.parametrize(
    "args",
    [
        pytest.param({"path": "notes.txt", "confirmed": True}, id="a04_confirmed_arg"),
        pytest.param({"path": "notes.txt", "user_confirmed": "yes"}, id="a04_consent_claim"),
    ],
)
async def test_a04_model_claimed_consent_still_needs_confirmation(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy, args: dict[str, Any]
) -> None:
    fake.call("file_write", args, id="w1")
    outcome = await turn(llm, toolbox, ctx("admin"))
    assert isinstance(outcome, NeedsConfirmation)
    assert outcome.calls == (PendingCall("w1", "file_write", '{"path":"notes.txt"}', "requester"),)
    assert spy.runs == []


async def test_a16_unattended_turn_refuses_instead_of_asking(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    fake.calls([("file_write", {"path": "a"}, "w"), ("send", {"text": "elsewhere"}, "s")])
    fake.reply("Could not do it unattended.")
    outcome = await turn(llm, toolbox, ctx("admin", unattended=True))
    assert isinstance(outcome, Reply)
    assert "file_write" not in fake.requests[0].tool_names
    assert spy.runs == []
    assert [m["content"] for m in tool_messages(fake.requests[1])] == [
        prompts.UNATTENDED_REFUSED
    ] * 2


async def test_a03_untrusted_content_makes_egress_need_confirmation(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    fake.call("send", {"text": "room1"}, id="s0")  # own room, untainted: runs
    fake.call("fetch", {"text": "http://example.test"}, id="f1")
    fake.call("send", {"text": "room1"}, id="s1")  # same call, now after untrusted content
    outcome = await turn(llm, toolbox, ctx("admin"))
    assert spy.runs == ['send:{"text":"room1"}', 'fetch:{"text":"http://example.test"}']
    assert isinstance(outcome, NeedsConfirmation)
    assert [call.call_id for call in outcome.calls] == ["s1"]
    assert outcome.state.tainted


async def test_argument_dependent_confirmation(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    fake.call("send", {"text": "room2"}, id="s")
    outcome = await turn(llm, toolbox, ctx("user"))
    assert isinstance(outcome, NeedsConfirmation)
    assert spy.runs == []


async def run_until_confirmation(fake: FakeLLM, llm: LLM, toolbox: Toolbox) -> NeedsConfirmation:
    fake.calls(
        [("file_write", {"path": "a.txt"}, "w1"), ("note", {"text": "hi"}, "n1")], text="On it."
    )
    outcome = await turn(llm, toolbox, ctx("admin"), rounds=3)
    assert isinstance(outcome, NeedsConfirmation)
    return outcome


async def test_confirmation_pauses_after_running_the_safe_calls(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    paused = await run_until_confirmation(fake, llm, toolbox)
    assert paused.text == "On it."
    assert spy.runs == ['note:{"text":"hi"}']
    assert paused.state.rounds == 1
    assert paused.state.messages[-1] == {
        "role": "tool",
        "tool_call_id": "n1",
        "content": "note ran",
    }
    assert paused.state.messages[-2]["role"] == "assistant"


async def test_turn_state_round_trips_through_json(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    paused = await run_until_confirmation(fake, llm, toolbox)
    assert TurnState.from_json(paused.state.to_json()) == paused.state


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"v": 99, "messages": []}', '{"v": 1}', '{"v": 1, "messages": [1]}'],
    ids=["empty", "array", "future_version", "missing_fields", "bad_messages"],
)
def test_turn_state_rejects_what_it_did_not_write(text: str) -> None:
    with pytest.raises(ValueError, match="turn state"):
        TurnState.from_json(text)


async def test_resume_after_confirmation_reaches_a_reply(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    paused = await run_until_confirmation(fake, llm, toolbox)
    state = TurnState.from_json(paused.state.to_json())  # as after a restart
    (call,) = state.pending
    args = toolbox.validate(call.tool_name, call.args_json)
    result = await toolbox.execute(call.tool_name, args, ctx("admin"), confirmed=True)
    fake.reply("Written a.txt.")
    outcome = await resume_turn(
        llm,
        toolbox,
        ctx("admin"),
        state,
        {call.call_id: prompts.confirmed_result(result.text, ok=result.ok)},
        max_rounds=3,
    )
    assert outcome == Reply("Written a.txt.", rounds=2, tools_used=("note", "file_write"))
    assert spy.runs == ['note:{"text":"hi"}', 'file_write:{"path":"a.txt"}']
    last = fake.requests[-1]
    assert tool_messages(last)[-1] == {
        "role": "tool",
        "tool_call_id": "w1",
        "content": "done: file_write ran",
    }
    assert_every_call_answered(last)


async def test_resume_without_a_result_tells_the_model_it_was_not_confirmed(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    paused = await run_until_confirmation(fake, llm, toolbox)
    fake.reply("OK, I left it.")
    outcome = await resume_turn(llm, toolbox, ctx("admin"), paused.state, {}, max_rounds=1)
    assert outcome == Reply("OK, I left it.", rounds=2, tools_used=("note",))
    assert tool_messages(fake.requests[-1])[-1]["content"] == prompts.NOT_CONFIRMED
    assert spy.runs == ['note:{"text":"hi"}']


async def test_a14_endless_tool_calls_stop_at_max_rounds(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox, spy: Spy
) -> None:
    for index in range(10):
        fake.call("note", {"text": str(index)})
    outcome = await turn(llm, toolbox, ctx(), rounds=3)
    assert isinstance(outcome, GaveUp)
    assert (outcome.reason, outcome.rounds) == ("max_rounds", 3)
    assert outcome.text == prompts.max_rounds_summary(3, ["note"])
    assert "note" in outcome.text
    assert len(fake.requests) == 3
    assert len(spy.runs) == 3


async def test_tool_timeout_and_crash_become_readable_results(fake: FakeLLM, llm: LLM) -> None:
    async def stuck(args: NoteArgs, context: ToolContext) -> str:
        await asyncio.Event().wait()
        return "never"

    async def crash(args: NoteArgs, context: ToolContext) -> str:
        raise RuntimeError("internal detail /srv/secret")

    async def expected(args: NoteArgs, context: ToolContext) -> str:
        raise ToolError("no results for that query")

    users = roles_from("user")
    box = Toolbox(
        [
            Tool("stuck", "d", NoteArgs, stuck, users, timeout_s=0.05),
            Tool("crash", "d", NoteArgs, crash, users),
            Tool("search", "d", NoteArgs, expected, users),
        ]
    )
    fake.calls([("stuck", {}, "a"), ("crash", {}, "b"), ("search", {}, "c")])
    fake.reply("Tools failed, sorry.")
    outcome = await turn(llm, box, ctx())
    assert outcome == Reply(
        "Tools failed, sorry.", rounds=2, tools_used=("stuck", "crash", "search")
    )
    assert [m["content"] for m in tool_messages(fake.requests[1])] == [
        "error: the tool timed out after 0.05 s",
        "error: the tool failed",
        "error: no results for that query",
    ]
    assert "internal detail" not in fake.all_sent_text()


async def test_model_down_gives_up_with_the_error_kind(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.call("note", {}, id="n")
    fake.raw(400, {"error": "context too long"})
    outcome = await turn(llm, toolbox, ctx())
    assert outcome == GaveUp(
        "llm_error", llm_error_kind="bad_response", rounds=1, tools_used=("note",)
    )


async def test_one_summary_line_per_turn_without_message_text(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.call("note", {"text": "private words"})
    fake.reply("private answer")
    with capture_logs() as logs:
        await turn(llm, toolbox, ctx())
    (done,) = [entry for entry in logs if entry["event"] == "turn.done"]
    assert (done["outcome"], done["rounds"], done["tools"]) == ("Reply", 2, "note")
    assert isinstance(done["ms"], int)
    assert "private" not in repr(logs)


# -- provenance and the lethal combination (#13) -------------------------------------------


@pytest.fixture
def gated(spy: Spy) -> Toolbox:
    """A private read, a fetch that is egress quoted by its text, and a plain note."""
    return Toolbox(
        [
            spy.tool("note"),
            spy.tool("read", reads_private=True),
            spy.tool(
                "fetch", brings_untrusted=True, egress=True, quoted_arg=lambda args: args.text
            ),
        ]
    )


async def test_i02_after_a_private_read_even_a_quoted_fetch_needs_a_yes(
    fake: FakeLLM, llm: LLM, gated: Toolbox, spy: Spy
) -> None:
    fake.call("fetch", {"text": "http://a.test/x"}, id="f0")  # quoted: runs
    fake.call("read", {"text": "secret.txt"}, id="r1")
    fake.call("fetch", {"text": "http://a.test/x"}, id="f1")  # same call, now private
    outcome = await turn(llm, gated, ctx("admin", request="please read http://a.test/x"))
    assert spy.runs == ['fetch:{"text":"http://a.test/x"}', 'read:{"text":"secret.txt"}']
    assert isinstance(outcome, NeedsConfirmation)
    assert [call.call_id for call in outcome.calls] == ["f1"]
    assert outcome.state.private
    assert TurnState.from_json(outcome.state.to_json()).private  # survives the pause


async def test_i03_in_an_untrusted_turn_only_what_the_requester_quoted_runs(
    fake: FakeLLM, llm: LLM, gated: Toolbox, spy: Spy
) -> None:
    request = "Search   FOR Cats please"
    fake.calls(
        [("fetch", {"text": "search for cats"}, "quoted"), ("fetch", {"text": "cats d=x"}, "new")]
    )
    outcome = await turn(llm, gated, ctx(tainted=True, request=request))
    assert spy.runs == ['fetch:{"text":"search for cats"}']
    assert isinstance(outcome, NeedsConfirmation)
    assert [call.call_id for call in outcome.calls] == ["new"]


async def test_i04_a_confirmed_fetch_taints_the_rest_of_the_turn(
    fake: FakeLLM, llm: LLM, gated: Toolbox, spy: Spy
) -> None:
    fake.call("fetch", {"text": "http://b.test"}, id="f1")
    paused = await turn(llm, gated, ctx("admin", private=True))
    assert isinstance(paused, NeedsConfirmation)
    assert not paused.state.tainted
    fake.reply("done")
    outcome = await resume_turn(
        llm, gated, ctx("admin"), paused.state, {"f1": "done: the page"}, max_rounds=3
    )
    assert isinstance(outcome, Reply)
    assert outcome.untrusted  # the answer carries the page's taint into the history
    assert [(out.tool, out.untrusted) for out in outcome.tool_results] == [("fetch", True)]


async def test_i04_the_answer_knows_which_results_were_private_or_untrusted(
    fake: FakeLLM, llm: LLM, gated: Toolbox
) -> None:
    history = [{"role": "tool", "tool_call_id": "old", "content": "[fetch returned: x]"}]
    fake.call("read", {"text": "a"}, id="r")
    fake.reply("It says a.")
    messages = [START[0], *history, START[1]]
    outcome = await run_turn(llm, gated, ctx("admin"), messages, max_rounds=3)
    assert isinstance(outcome, Reply)
    # Only this turn's own results: the one from the history is not recorded again.
    assert [(o.tool, o.private, o.untrusted) for o in outcome.tool_results] == [
        ("read", True, False)
    ]
    assert (outcome.private, outcome.untrusted) == (True, False)


async def test_i07_calls_over_the_caps_are_not_run_and_the_answer_says_so(
    fake: FakeLLM, llm: LLM, gated: Toolbox, spy: Spy
) -> None:
    limits = LimitsSettings(tool_calls_per_round=3, tool_calls_per_turn=3, fetches_per_turn=1)
    fake.calls([("fetch", {"text": "u"}, None)] * 2 + [("note", {"text": "n"}, None)] * 3)
    fake.calls([("note", {"text": "m"}, None)] * 2)
    fake.reply("Here is what I have.")
    with capture_logs() as logs:
        outcome = await run_turn(
            llm, gated, ctx(request="u"), list(START), max_rounds=5, limits=limits
        )
    assert spy.runs == ['fetch:{"text":"u"}', 'note:{"text":"n"}', 'note:{"text":"m"}']
    results = [m["content"] for m in tool_messages(fake.requests[2])]
    assert results[1] == prompts.capped_result("1 fetches and searches per turn")
    assert results[3:5] == [prompts.capped_result("3 tool calls per round")] * 2
    assert results[6] == prompts.capped_result("3 tool calls per turn")
    assert_every_call_answered(fake.requests[2])
    assert isinstance(outcome, Reply)
    assert outcome.text == "Here is what I have.\n\n" + prompts.capped_note(4)
    (capped,) = [entry for entry in logs if entry["event"] == "turn.capped"]
    assert capped["capped"] == 3  # logged once, when the turn first hit a cap


async def test_i02_a_scheduled_turn_cannot_ask_so_its_way_out_is_refused(
    fake: FakeLLM, llm: LLM, gated: Toolbox, spy: Spy
) -> None:
    fake.calls([("read", {"text": "a"}, "r"), ("fetch", {"text": "http://c.test/?d=a"}, "f")])
    fake.reply("Posted the digest.")
    outcome = await turn(llm, gated, ctx("admin", unattended=True, request="post a digest"))
    assert isinstance(outcome, Reply)
    assert spy.runs == ['read:{"text":"a"}']
    assert tool_messages(fake.requests[1])[-1]["content"] == prompts.UNATTENDED_REFUSED


# -- usage (#16) ---------------------------------------------------------------------


def used(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


async def test_a_turns_usage_is_the_sum_of_its_rounds(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.call("current_time", {"timezone": "UTC"})
    fake.calls([("note", {"text": "x"}, None)], usage=used(150, 8))
    fake.reply("Done.", usage=None)  # this server forgot its usage once: estimated
    outcome = await turn(llm, toolbox, ctx())
    assert isinstance(outcome, Reply)
    last = fake.requests[-1].body
    estimate = -(-(len(json.dumps(last["messages"])) + len(json.dumps(last["tools"]))) // 4)
    assert outcome.usage == Usage(1 + 150 + estimate, 1 + 8 + 2, estimated=True)


async def test_a_failed_round_ends_the_turn_with_the_usage_of_those_before(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.calls([("note", {}, "n")], usage=used(40, 4))
    fake.raw(400, {"error": "context too long"})
    outcome = await turn(llm, toolbox, ctx())
    assert isinstance(outcome, GaveUp)
    assert outcome.usage == Usage(40, 4)


async def test_a_paused_turn_and_its_resumed_run_each_carry_their_own_usage(
    fake: FakeLLM, llm: LLM, toolbox: Toolbox
) -> None:
    fake.calls([("file_write", {"path": "a.txt"}, "w1")], usage=used(200, 20))
    paused = await turn(llm, toolbox, ctx("admin"), rounds=3)
    assert isinstance(paused, NeedsConfirmation)
    assert paused.usage == Usage(200, 20)
    state = TurnState.from_json(paused.state.to_json())  # as after a restart
    fake.reply("Left it.", usage=used(260, 6))
    resumed = await resume_turn(llm, toolbox, ctx("admin"), state, {}, max_rounds=3)
    assert resumed.usage == Usage(260, 6)  # the pause's tokens are not counted twice
