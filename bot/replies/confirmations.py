"""The texts of confirmations: the prompt, its answers, the admin's approvals, ``!pending``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from bot.i18n import N_, _
from bot.replies.visible import (
    arguments,
    characters,
    code_span,
    plain_text,
    visible,
    visible_tokens,
    with_legend,
)

MESSAGE_LIMIT = 32000  # Talk's chat max-length; a longer prompt is refused, never split
PREVIEW_CHARS = 40  # per argument in !pending, which abbreviates
# A pending action's status as people read it (the store keeps the English word).
_STATUSES = {
    "pending": N_("pending"),
    "approved": N_("approved"),
    "running": N_("running"),
    "done": N_("done"),
    "failed": N_("failed"),
    "denied": N_("denied"),
    "cancelled": N_("cancelled"),
    "expired": N_("expired"),
    "already decided": N_("already decided"),
}


def status_text(status: str) -> str:
    """A pending action's status (or "already decided") in the current language."""
    return _(_STATUSES[status]) if status in _STATUSES else status


def _hash_line(args_hash: str) -> str:
    return _("Arguments sha256: `{hash}`").format(hash=args_hash[:12])


def confirmation_prompt(
    *,
    tool: str,
    args: Mapping[str, object],
    args_hash: str,
    code: str,
    requester: str,
    expires: str,
) -> str:
    """What will run, exactly, and how to answer (DESIGN.md §5).

    The caller refuses the call when the text is longer than MESSAGE_LIMIT.
    """
    title = _("**Confirm before I run {tool}** — code **{code}**")
    lines = [title.format(tool=code_span(visible(tool)), code=code)]
    lines += with_legend([*arguments(args), _hash_line(args_hash)])
    # Translators: keep **yes** and **no**: they are the words [confirm] yes_words/no_words take.
    how = _(
        "Only {requester} can answer, until {expires}. Reply **yes** or **no** — "
        "or **yes {code}** when several are waiting. From Talk 23 on, 👍 or 👎 on this "
        "message works too."
    )
    lines.append(how.format(requester=plain_text(requester), expires=expires, code=code))
    return "\n".join(lines)


def confirmation_too_large(tool: str, size: int) -> str:
    """One line: the call was refused, because its prompt would not fit in one message."""
    return _(
        "I did not run `{tool}`: the call is too large to show in full for confirmation "
        "(its prompt would be {size} characters; one message holds {limit})."
    ).format(tool=tool, size=size, limit=MESSAGE_LIMIT)


def confirmation_expired(code: str) -> str:
    return _(
        "That request (code {code}) expired before it was confirmed, so I did not run it. "
        "Ask me again if you still want it."
    ).format(code=code)


def only_requester_can_confirm(names: Sequence[str]) -> str:
    named = dict.fromkeys(name for name in names if name)
    who = _(" or ").join(named) or _("the person who asked")
    return _("Only {who} can confirm or cancel this.").format(who=who)


def confirmation_ambiguous(codes: Sequence[str]) -> str:
    return _(
        "Several actions are waiting for your answer ({codes}). Answer **yes CODE** or "
        "**no CODE**, or reply to the prompt you mean."
    ).format(codes=", ".join(codes))


def confirmation_too_early(code: str) -> str:
    return _(
        "That answer was written before I asked, so it does not confirm {code}. "
        "Reply yes now if you want it to run."
    ).format(code=code)


def confirmation_needs_admin(code: str, prefix: str) -> str:
    return _(
        "This action needs an admin's approval: an admin can answer `{prefix}approve {code}` "
        "in the admin room."
    ).format(prefix=prefix, code=code)


def confirmation_denied(tool: str, code: str) -> str:
    return _("Cancelled: I will not run `{tool}` (code {code}).").format(tool=tool, code=code)


def confirmation_step(tool: str, code: str, outcome: str, waiting: Sequence[str]) -> str:
    """After one of several calls of a turn was decided ("done", "failed" or "denied")."""
    if outcome == "done":
        done = _("Done: `{tool}` (code {code}) ran.").format(tool=tool, code=code)
    elif outcome == "failed":
        done = _("`{tool}` (code {code}) failed.").format(tool=tool, code=code)
    else:
        done = confirmation_denied(tool, code)
    return _("{done} Still waiting for your answer on {codes}.").format(
        done=done, codes=", ".join(waiting)
    )


def confirmation_interrupted(tool: str, code: str, requester: str) -> str:
    return _(
        "{requester}: I was restarted while `{tool}` (code {code}) was running. I don't know "
        "whether it finished, and I will not run it again by myself. Please check, and ask "
        "again if it is still needed."
    ).format(requester=requester, tool=tool, code=code)


def admin_no_action(code: str) -> str:
    return _("There is no confirmation with code {code}.").format(code=code)


def admin_action_not_waiting(code: str, status: str) -> str:
    return _("{code} is not waiting for an answer any more (it is {status}).").format(
        code=code, status=status_text(status)
    )


def admin_requester_only(code: str) -> str:
    return _(
        "Only the person who asked can confirm {code} (the tool's approver is the requester)."
    ).format(code=code)


def admin_approved(code: str, tool: str, room: str, *, ok: bool) -> str:
    if ok:
        text = _("Approved {code}: `{tool}` ran in room {room}.")
    else:
        text = _("Approved {code}: `{tool}` failed in room {room}.")
    return text.format(code=code, tool=tool, room=room)


def admin_cancelled(code: str) -> str:
    return _("Cancelled {code}.").format(code=code)


def _preview(value: object) -> str:
    """An argument abbreviated for a listing: visible, on one line, its length when cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text:
        return _("(empty)")
    shown: list[str] = []
    for token in visible_tokens(text):
        if sum(map(len, shown)) + len(token) > PREVIEW_CHARS:
            return f"{code_span(''.join(shown))}… ({characters(len(text))})"
        shown.append(token)
    return code_span("".join(shown))


def pending_line(
    code: str,
    *,
    tool: str,
    room: str,
    requester: str,
    status: str,
    expires: str,
    args: Mapping[str, object] | None = None,
) -> str:
    """One open action in ``!pending``; its arguments abbreviated (``!pending CODE``: all)."""
    head = _action_head(
        code, tool=tool, requester=requester, room=room, status=status, expires=expires
    )
    line = f"- {head}"
    shown = [
        f"{code_span(visible(name))}: {_preview(value)}" for name, value in (args or {}).items()
    ]
    return f"{line} — {', '.join(shown)}" if shown else line


def _action_head(
    code: str, *, tool: str, requester: str, room: str, status: str, expires: str
) -> str:
    return _(
        "**{code}** — {tool} for {requester} in room {room}; {status}, until {expires}"
    ).format(
        code=code,
        tool=code_span(visible(tool)),
        requester=plain_text(requester),
        room=plain_text(room),
        status=status_text(status),
        expires=expires,
    )


def pending_list(lines: Sequence[str], *, prefix: str = "!") -> str:
    if not lines:
        return _("Nothing is waiting for a confirmation.")
    footer = _("`{prefix}pending CODE` shows one call with every argument in full.").format(
        prefix=prefix
    )
    return "\n".join(with_legend([_("**Waiting for confirmation**"), *lines, footer]))


def pending_call(
    code: str,
    *,
    tool: str,
    room: str,
    requester: str,
    status: str,
    expires: str,
    args: Mapping[str, object],
    args_hash: str,
) -> str:
    """``!pending CODE``: one action with every argument in full, as its prompt shows them."""
    lines = [
        _action_head(
            code, tool=tool, requester=requester, room=room, status=status, expires=expires
        ),
        *arguments(args),
        _hash_line(args_hash),
    ]
    return "\n".join(with_legend(lines))


def pending_call_too_large(code: str, size: int) -> str:
    return _("{code} is too large to show in one message ({size} characters).").format(
        code=code, size=size
    )


def command_outcome(tool: str, status: str, result: str) -> str:
    if status == "done":
        return _("Done: {tool}. {result}").format(tool=tool, result=result).strip()
    if status == "failed":
        return _("{tool} failed: {result}").format(tool=tool, result=result).strip()
    return _("{tool} was not run ({status}).").format(tool=tool, status=status_text(status))
