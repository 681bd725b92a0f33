"""Toolbox: role filtering, config policy, validation and fail-closed execution."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError
from structlog.testing import capture_logs

from bot.config import Role, ToolsSettings
from bot.errors import ToolError
from bot.tools import (
    MAX_RESULT_CHARS,
    Tool,
    Toolbox,
    ToolContext,
    ToolRefusedError,
    canonical_json,
    roles_from,
)
from tests.tools import context


class NoteArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    urgent: bool = False


class NoArgs(BaseModel):
    pass


class Spy:
    """Records every run of the tools it makes."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, BaseModel]] = []

    def tool(self, name: str, minimum: Role = "user", **policy: Any) -> Tool[Any]:
        async def run(args: BaseModel, ctx: ToolContext) -> str:
            self.runs.append((name, args))
            return f"{name} ran"

        args = policy.pop("args", NoteArgs)
        return Tool(
            name=name,
            description=f"the {name} tool",
            args=args,
            run=run,
            roles=roles_from(minimum),
            **policy,
        )


ctx = partial(context.ctx, now=1_780_000_000.0)


def toolbox(spy: Spy, settings: ToolsSettings | None = None) -> Toolbox:
    return Toolbox(
        [
            spy.tool("note"),
            spy.tool("bot_restart", "admin", args=NoArgs, confirm=True),
            spy.tool("file_read", "admin"),
        ],
        settings,
    )


@pytest.mark.parametrize(
    ("role", "offered"),
    [
        pytest.param("none", [], id="none_gets_nothing"),
        pytest.param("guest", [], id="guest_chats_without_tools"),
        pytest.param("user", ["note"], id="user_gets_user_tools"),
        pytest.param("admin", ["note", "bot_restart", "file_read"], id="admin_gets_all"),
    ],
)
def test_a01_tools_offered_by_role(role: Role, offered: list[str]) -> None:
    specs = toolbox(Spy()).specs_for(role)
    assert [spec["function"]["name"] for spec in specs] == offered


def test_unattended_turns_are_not_offered_confirm_tools() -> None:
    specs = toolbox(Spy()).specs_for("admin", unattended=True)
    assert [spec["function"]["name"] for spec in specs] == ["note", "file_read"]


def test_spec_is_an_openai_function_without_titles() -> None:
    (spec,) = toolbox(Spy()).specs_for("user")
    assert spec["type"] == "function"
    params = spec["function"]["parameters"]
    assert params["type"] == "object"
    assert params["additionalProperties"] is False
    assert params["required"] == ["text"]
    assert set(params["properties"]) == {"text", "urgent"}
    assert '"title"' not in json.dumps(spec)


def test_tool_without_arguments_still_has_properties() -> None:
    specs = toolbox(Spy()).specs_for("admin")
    restart = next(s for s in specs if s["function"]["name"] == "bot_restart")
    assert restart["function"]["parameters"]["properties"] == {}


@pytest.mark.parametrize(
    ("overrides", "role", "offered"),
    [
        pytest.param({"note": {"enabled": False}}, "user", [], id="enabled_false_removes"),
        pytest.param({"note": {"roles": ["admin"]}}, "user", [], id="roles_narrowed"),
        pytest.param(
            {"file_read": {"roles": ["user", "admin"]}}, "user", ["note", "file_read"], id="widened"
        ),
        pytest.param({"other": {"enabled": False}}, "user", ["note"], id="unrelated_table"),
    ],
)
def test_config_policy_changes_what_is_offered(
    overrides: dict[str, Any], role: Role, offered: list[str]
) -> None:
    box = toolbox(Spy(), ToolsSettings.model_validate(overrides))
    assert [spec["function"]["name"] for spec in box.specs_for(role)] == offered


def test_config_can_require_confirmation_and_choose_the_approver() -> None:
    settings = ToolsSettings.model_validate({"note": {"confirm": True, "approver": "admin"}})
    box = toolbox(Spy(), settings)
    note = box.get("note")
    assert note is not None
    assert note.approver == "admin"
    assert box.needs_confirmation(note, NoteArgs(text="x"), ctx())


def test_config_can_drop_confirmation() -> None:
    box = toolbox(Spy(), ToolsSettings.model_validate({"bot_restart": {"confirm": False}}))
    restart = box.get("bot_restart")
    assert restart is not None
    assert not box.needs_confirmation(restart, NoArgs(), ctx("admin"))


async def test_disabled_tool_is_refused_at_execution() -> None:
    spy = Spy()
    box = toolbox(spy, ToolsSettings.model_validate({"note": {"enabled": False}}))
    result = await box.execute("note", NoteArgs(text="x"), ctx())
    assert not result.ok
    assert spy.runs == []


async def test_a01_execute_rechecks_the_role_and_audits_the_refusal() -> None:
    spy = Spy()
    with capture_logs() as logs:
        result = await toolbox(spy).execute("file_read", NoteArgs(text="/etc"), ctx("user"))
    assert not result.ok
    assert "not allowed" in result.text
    assert spy.runs == []
    refusals = [entry for entry in logs if entry["event"] == "tool.refused"]
    assert refusals == [
        {
            "event": "tool.refused",
            "log_level": "warning",
            "tool": "file_read",
            "reason": "role",
            "actor": "users/alice",
            "role": "user",
            "room": "room1",
        }
    ]


async def test_unknown_tool_is_refused() -> None:
    result = await toolbox(Spy()).execute("format_disk", NoArgs(), ctx("admin"))
    assert result == type(result)("unknown tool 'format_disk'", ok=False)


def test_authorize_raises_a_readable_refusal() -> None:
    with pytest.raises(ToolRefusedError, match="not allowed"):
        toolbox(Spy()).authorize("bot_restart", ctx("user"))


async def test_confirm_tool_does_not_run_without_confirmation() -> None:
    spy = Spy()
    box = toolbox(spy)
    refused = await box.execute("bot_restart", NoArgs(), ctx("admin"))
    ran = await box.execute("bot_restart", NoArgs(), ctx("admin"), confirmed=True)
    assert (refused.ok, ran.ok) == (False, True)
    assert [name for name, _ in spy.runs] == ["bot_restart"]


async def test_arguments_of_another_tool_are_refused() -> None:
    spy = Spy()
    result = await toolbox(spy).execute("note", NoArgs(), ctx())
    assert not result.ok
    assert spy.runs == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param('{"text": ', "arguments are not valid JSON", id="r02_bad_json"),
        pytest.param("[1, 2]", "arguments must be a JSON object", id="r02_non_object"),
        pytest.param('"text"', "arguments must be a JSON object", id="r02_string"),
        pytest.param('{"text": NaN}', "NaN is not allowed", id="r02_nan"),
        pytest.param('{"text": "a", "urgent": Infinity}', "Infinity is not allowed", id="r02_inf"),
        pytest.param("{}", "invalid arguments: text: Field required", id="missing_field"),
        pytest.param('{"text": 5}', "text: Input should be a valid string", id="wrong_type"),
        pytest.param("x" * 100_001, "arguments are too long", id="huge"),
    ],
)
def test_validate_explains_bad_arguments(raw: str, reason: str) -> None:
    with pytest.raises(ToolError, match=reason):
        toolbox(Spy()).validate("note", raw)


def test_validate_unknown_tool() -> None:
    with pytest.raises(ToolError, match="unknown tool 'nope'"):
        toolbox(Spy()).validate("nope", "{}")


@pytest.mark.parametrize("raw", ["", "  "], ids=["empty", "blank"])
def test_empty_arguments_mean_no_arguments(raw: str) -> None:
    assert toolbox(Spy()).validate("bot_restart", raw) == NoArgs()


def test_a04_extra_arguments_are_dropped_from_the_canonical_form() -> None:
    args = toolbox(Spy()).validate("note", '{"urgent": true, "text": "x", "confirmed": true}')
    assert canonical_json(args) == '{"text":"x","urgent":true}'


def test_tainted_turn_needs_confirmation_for_egress() -> None:
    box = Toolbox([Spy().tool("send", egress=True)])
    send = box.get("send")
    assert send is not None
    args = NoteArgs(text="x")
    assert not box.needs_confirmation(send, args, ctx())
    assert box.needs_confirmation(send, args, ctx(tainted=True))


def test_confirm_rule_that_crashes_fails_closed() -> None:
    def broken(args: NoteArgs, context: ToolContext) -> bool:
        raise KeyError("bug")

    box = Toolbox([Spy().tool("send", confirm_when=broken)])
    send = box.get("send")
    assert send is not None
    assert box.needs_confirmation(send, NoteArgs(text="x"), ctx())


def test_confirm_rule_sees_the_arguments() -> None:
    def other_room(args: NoteArgs, context: ToolContext) -> bool:
        return args.text != context.room

    box = Toolbox([Spy().tool("send", confirm_when=other_room)])
    send = box.get("send")
    assert send is not None
    assert not box.needs_confirmation(send, NoteArgs(text="room1"), ctx())
    assert box.needs_confirmation(send, NoteArgs(text="room2"), ctx())


def _tool(name: str, run: Any, timeout_s: float = 30) -> Tool[NoteArgs]:
    return Tool(name, "d", NoteArgs, run, roles_from("user"), timeout_s=timeout_s)


async def test_tool_bug_becomes_a_generic_result_without_internals() -> None:
    async def crash(args: NoteArgs, context: ToolContext) -> str:
        raise RuntimeError("password=hunter2 in /etc/secret")

    with capture_logs() as logs:
        result = await Toolbox([_tool("crash", crash)]).execute("crash", NoteArgs(text="x"), ctx())
    assert result.text == "the tool failed"
    assert not result.ok
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["tool.crashed"]


async def test_expected_tool_error_text_reaches_the_model() -> None:
    async def fails(args: NoteArgs, context: ToolContext) -> str:
        raise ToolError("no such file 'a.txt'")

    result = await Toolbox([_tool("fails", fails)]).execute("fails", NoteArgs(text="x"), ctx())
    assert (result.text, result.ok) == ("no such file 'a.txt'", False)


async def test_slow_tool_times_out_with_a_readable_result() -> None:
    async def stuck(args: NoteArgs, context: ToolContext) -> str:
        await asyncio.Event().wait()
        return "never"

    box = Toolbox([_tool("stuck", stuck, timeout_s=0.05)])
    result = await box.execute("stuck", NoteArgs(text="x"), ctx())
    assert (result.text, result.ok) == ("the tool timed out after 0.05 s", False)


async def test_long_results_are_capped() -> None:
    async def chatty(args: NoteArgs, context: ToolContext) -> str:
        return "a" * 20_000

    result = await Toolbox([_tool("chatty", chatty)]).execute("chatty", NoteArgs(text="x"), ctx())
    assert result.ok
    assert result.text.startswith("a" * MAX_RESULT_CHARS + "\n[truncated: 12000 more characters]")
    assert len(result.text) < MAX_RESULT_CHARS + 100


@pytest.mark.parametrize("name", ["", "has space", "a" * 65, "dotted.name"])
def test_bad_tool_names_are_rejected_at_wiring(name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        Toolbox([Spy().tool(name)])


def test_duplicate_tool_names_are_rejected_at_wiring() -> None:
    spy = Spy()
    with pytest.raises(ValueError, match="declared twice"):
        Toolbox([spy.tool("note"), spy.tool("note")])


# -- kinds and the lethal combination (#13) ---------------------------------------------


def test_i02_config_adds_a_kind_and_cannot_take_one_away() -> None:
    settings = ToolsSettings.model_validate({"note": {"egress": True, "reads_private": True}})
    note = toolbox(Spy(), settings).get("note")
    assert note is not None
    assert (note.egress, note.reads_private, note.brings_untrusted) == (True, True, False)
    with pytest.raises(ValidationError, match="can be added"):
        ToolsSettings.model_validate({"http_fetch": {"egress": False}})


def test_i02_a_private_turn_needs_a_yes_for_every_way_out() -> None:
    box = Toolbox([Spy().tool("send", egress=True, quoted_arg=lambda args: args.text)])
    send = box.get("send")
    assert send is not None
    quoted = NoteArgs(text="http://x.test/a")
    assert not box.needs_confirmation(send, quoted, ctx(tainted=True, request=quoted.text))
    assert box.needs_confirmation(send, quoted, ctx(private=True, request=quoted.text))
    assert not box.needs_confirmation(send, quoted, ctx())  # a clean turn asks nothing


def test_i01_egress_for_some_arguments_only() -> None:
    def elsewhere(args: NoteArgs, context: ToolContext) -> bool:
        return args.text != context.room

    box = Toolbox([Spy().tool("job", egress_when=elsewhere, changes_state=True)])
    job = box.get("job")
    assert job is not None
    assert not box.needs_confirmation(job, NoteArgs(text="room1"), ctx(tainted=True))
    assert box.needs_confirmation(job, NoteArgs(text="room2"), ctx(tainted=True))
    assert not box.needs_confirmation(job, NoteArgs(text="room2"), ctx())


@pytest.mark.parametrize(
    ("request_text", "quoted"),
    [
        pytest.param("search for  Cats\nplease", True, id="whitespace_and_case"),
        pytest.param("search for dogs", False, id="not_in_the_message"),
        pytest.param("", False, id="no_message"),
    ],
)
def test_i03_only_what_the_requester_wrote_is_quoted(request_text: str, quoted: bool) -> None:
    box = Toolbox([Spy().tool("search", egress=True, quoted_arg=lambda args: args.text)])
    search = box.get("search")
    assert search is not None
    args = NoteArgs(text="cats please")
    context = ctx(tainted=True, request=request_text)
    assert box.needs_confirmation(search, args, context) is not quoted
