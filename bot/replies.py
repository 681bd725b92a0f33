"""Every text the bot itself says to people (as opposed to what the model writes)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

ZERO_WIDTH_SPACE = "\u200b"
_MASS_MENTION = re.compile(r"@(all|here)\b", re.IGNORECASE)
_QUOTED_MASS_MENTION = re.compile(r'@"(all|here)"', re.IGNORECASE)

LLM_NOTICES = {
    "timeout": "The model took too long to answer. Please try again in a moment.",
    "rate_limited": "The model is busy right now (rate limited). Please try again in a minute.",
    "unavailable": "I can't reach the model right now. Please try again later.",
    "auth": "The model endpoint refused my credentials. An admin needs to check the config.",
    "bad_response": "The model sent an answer I couldn't read. Please try again.",
}


def defuse_mentions(text: str) -> str:
    """Model output must not notify a whole room: @all and @here lose their power (A12)."""
    text = _QUOTED_MASS_MENTION.sub(lambda m: f'@{ZERO_WIDTH_SPACE}"{m.group(1)}"', text)
    return _MASS_MENTION.sub(lambda m: f"@{ZERO_WIDTH_SPACE}{m.group(1)}", text)


def apology() -> str:
    return "Sorry, something went wrong on my side while answering that. Please try again."


def llm_notice(kind: str | None) -> str:
    return LLM_NOTICES.get(kind or "", LLM_NOTICES["unavailable"])


def empty_answer() -> str:
    return "The model returned an empty answer. Please rephrase or try again."


def cut_off() -> str:
    return "The model's answer was too long and got cut off before it said anything."


def gave_up_rounds(tools_used: tuple[str, ...]) -> str:
    used = ", ".join(dict.fromkeys(tools_used)) or "none"
    return (
        "I stopped after using tools too many times without reaching an answer "
        f"(tools used: {used}). Please narrow the question or try again."
    )


def busy() -> str:
    return "I'm getting more messages in this room than I can keep up with; I skipped some."


def command_refused(command: str, reason: str) -> str:
    if reason == "moderators only":
        return f"Only moderators of this room and admins can use {command}."
    return f"{command} is an admin command; it only works for admins in the admin room."


def forgot(count: int) -> str:
    return f"Done: I forgot this room's conversation ({count} entries)."


def mode_set(mode: str) -> str:
    if mode == "all":
        return "From now on I answer every message in this room."
    return "From now on I answer in this room only when I'm mentioned or replied to."


def mode_usage(prefix: str) -> str:
    return f"Usage: {prefix}mode all | {prefix}mode mention"


def room_help(prefix: str, *, moderator: bool) -> str:
    lines = [
        "**talkbot commands in this room**",
        f"- `{prefix}help` — this list",
        f"- `{prefix}jobs` — your scheduled messages and reminders",
    ]
    if moderator:
        lines += [
            f"- `{prefix}forget` — wipe what I remember of this room",
            f"- `{prefix}mode all|mention` — answer every message, or only when named",
        ]
    return "\n".join(lines)


# -- schedules -----------------------------------------------------------------------


def job_line(
    job_id: str,
    *,
    when: str,
    room: str,
    what: str,
    next_run: str | None,
    paused: bool,
    owner: str | None = None,
) -> str:
    """One job in ``!jobs`` and ``schedule_list``."""
    state = "paused" if paused else f"next: {next_run}" if next_run else "no further runs"
    by = f", by {owner}" if owner else ""
    return f"- `{job_id}` — {when}, {what} in room {room}{by}; {state}"


def jobs_list(lines: list[str], *, everyone: bool) -> str:
    if not lines:
        return "There are no scheduled jobs." if everyone else "You have no scheduled jobs."
    title = "**Scheduled jobs**" if everyone else "**Your scheduled jobs**"
    return "\n".join([title, *lines])


# -- confirmations -------------------------------------------------------------------

ARG_PREVIEW_CHARS = 200


def _code_span(text: str) -> str:
    """Inline code that Markdown shows verbatim, whatever backticks the text holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"`{text}`"


def _arg_value(value: object) -> str:
    """One argument as it will run: JSON, so quotes and newlines are unambiguous."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= ARG_PREVIEW_CHARS:
        shown = json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text
        return _code_span(shown)
    head = text[:ARG_PREVIEW_CHARS]
    shown = json.dumps(head, ensure_ascii=False) if isinstance(value, str) else head
    return f"{_code_span(shown)}… ({len(text)} characters in all)"


def confirmation_prompt(
    *,
    tool: str,
    args: Mapping[str, object],
    args_hash: str,
    code: str,
    requester: str,
    expires: str,
) -> str:
    """What will run, exactly, and how to answer (DESIGN.md §5)."""
    lines = [f"**Confirm before I run `{tool}`** — code **{code}**"]
    lines += [f"- {name}: {_arg_value(value)}" for name, value in args.items()]
    if not args:
        lines.append("- (no arguments)")
    lines += [
        f"Arguments sha256: `{args_hash[:12]}`",
        f"Only {requester} can answer, until {expires}. Reply **yes** or **no** — or "
        f"**yes {code}** when several are waiting. From Talk 23 on, 👍 or 👎 on this message "
        "works too.",
    ]
    return "\n".join(lines)


def confirmation_expired(code: str) -> str:
    return (
        f"That request (code {code}) expired before it was confirmed, so I did not run it. "
        "Ask me again if you still want it."
    )


def only_requester_can_confirm(names: Sequence[str]) -> str:
    who = " or ".join(dict.fromkeys(name for name in names if name)) or "the person who asked"
    return f"Only {who} can confirm or cancel this."


def confirmation_ambiguous(codes: Sequence[str]) -> str:
    listed = ", ".join(codes)
    return (
        f"Several actions are waiting for your answer ({listed}). Answer **yes CODE** or "
        "**no CODE**, or reply to the prompt you mean."
    )


def confirmation_too_early(code: str) -> str:
    return (
        f"That answer was written before I asked, so it does not confirm {code}. "
        "Reply yes now if you want it to run."
    )


def confirmation_needs_admin(code: str, prefix: str) -> str:
    return (
        f"This action needs an admin's approval: an admin can answer `{prefix}approve {code}` "
        "in the admin room."
    )


def confirmation_denied(tool: str, code: str) -> str:
    return f"Cancelled: I will not run `{tool}` (code {code})."


def confirmation_step(tool: str, code: str, outcome: str, waiting: Sequence[str]) -> str:
    """After one of several calls of a turn was decided ("done", "failed" or "denied")."""
    if outcome == "done":
        done = f"Done: `{tool}` (code {code}) ran."
    elif outcome == "failed":
        done = f"`{tool}` (code {code}) failed."
    else:
        done = confirmation_denied(tool, code)
    return f"{done} Still waiting for your answer on {', '.join(waiting)}."


def confirmation_interrupted(tool: str, code: str, requester: str) -> str:
    return (
        f"{requester}: I was restarted while `{tool}` (code {code}) was running. I don't know "
        "whether it finished, and I will not run it again by myself. Please check, and ask "
        "again if it is still needed."
    )


def admin_no_action(code: str) -> str:
    return f"There is no confirmation with code {code}."


def admin_action_not_waiting(code: str, status: str) -> str:
    return f"{code} is not waiting for an answer any more (it is {status})."


def admin_requester_only(code: str) -> str:
    return f"Only the person who asked can confirm {code} (the tool's approver is the requester)."


def admin_approved(code: str, tool: str, room: str, *, ok: bool) -> str:
    outcome = "ran" if ok else "failed"
    return f"Approved {code}: `{tool}` {outcome} in room {room}."


def admin_cancelled(code: str) -> str:
    return f"Cancelled {code}."


def pending_line(
    code: str, *, tool: str, room: str, requester: str, status: str, expires: str
) -> str:
    """One open action in ``!pending``."""
    return f"- **{code}** — `{tool}` for {requester} in room {room}; {status}, until {expires}"


def pending_list(lines: Sequence[str]) -> str:
    if not lines:
        return "Nothing is waiting for a confirmation."
    return "\n".join(["**Waiting for confirmation**", *lines])


def command_outcome(tool: str, status: str, result: str) -> str:
    if status == "done":
        return f"Done: {tool}. {result}".strip()
    if status == "failed":
        return f"{tool} failed: {result}".strip()
    return f"{tool} was not run ({status})."
