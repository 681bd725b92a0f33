"""Every text the bot itself says to people (as opposed to what the model writes).

Each is an English msgid translated into the current event's language (``bot.i18n``);
placeholders are named (``{code}``), so a translation may put them in any order.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from bot.i18n import N_, _, ngettext

ZERO_WIDTH_SPACE = "\u200b"
# Where Talk sees a mention: an "@" at the start or after a space, then an id or a quoted
# id ("@bob", '@"group/dev team"', "@all"); "alice@example.com" is no mention.
_MENTION = re.compile(r'(?:(?<=\s)|^)@(?=[\w"\'.-])', re.MULTILINE)

# English msgids; llm_notice translates them.
LLM_NOTICES = {
    "timeout": N_("The model took too long to answer. Please try again in a moment."),
    "rate_limited": N_("The model is busy right now (rate limited). Please try again in a minute."),
    "unavailable": N_("I can't reach the model right now. Please try again later."),
    "auth": N_("The model endpoint refused my credentials. An admin needs to check the config."),
    "bad_response": N_("The model sent an answer I couldn't read. Please try again."),
}
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
_JOB_KINDS = {"prompt": N_("prompt"), "message": N_("message")}


def defuse_mentions(text: str) -> str:
    """What the model or a job wrote notifies nobody: every mention ("@all", "@here",
    "@bob") keeps its text but loses its power (A12, #13.8). A zero-width space after the
    "@" is invisible to people and no mention to Talk."""
    return _MENTION.sub(f"@{ZERO_WIDTH_SPACE}", text)


_LINK = re.compile(r"(?i)\b(https?)://([^\s<>()\[\]`\"']+)")


def defuse_unseen_links(text: str, seen: str) -> str:
    """Links the model made up in a turn that read untrusted or private content lose their
    power: Nextcloud previews a link by fetching it, so a URL built from a file's content
    would carry it out with no tool call (review of #13). A link that appears verbatim in
    what the turn read (the page, the search result, the requester's message) stays."""

    def defuse(match: re.Match[str]) -> str:
        if match.group(0) in seen:
            return match.group(0)
        return f"{match.group(1)}://{ZERO_WIDTH_SPACE}{match.group(2)}"

    return _LINK.sub(defuse, text)


def status_text(status: str) -> str:
    """A pending action's status (or "already decided") in the current language."""
    return _(_STATUSES[status]) if status in _STATUSES else status


def apology() -> str:
    return _("Sorry, something went wrong on my side while answering that. Please try again.")


def llm_notice(kind: str | None) -> str:
    return _(LLM_NOTICES.get(kind or "", LLM_NOTICES["unavailable"]))


def empty_answer() -> str:
    return _("The model returned an empty answer. Please rephrase or try again.")


def cut_off() -> str:
    return _("The model's answer was too long and got cut off before it said anything.")


def gave_up_rounds(tools_used: tuple[str, ...]) -> str:
    used = ", ".join(dict.fromkeys(tools_used)) or _("none")
    return _(
        "I stopped after using tools too many times without reaching an answer "
        "(tools used: {used}). Please narrow the question or try again."
    ).format(used=used)


def busy() -> str:
    return _("I'm getting more messages in this room than I can keep up with; I skipped some.")


def command_refused(command: str, reason: str) -> str:
    if reason == "moderators only":
        return _("Only moderators of this room and admins can use {command}.").format(
            command=command
        )
    return _("{command} is an admin command; it only works for admins in the admin room.").format(
        command=command
    )


def forgot(count: int) -> str:
    return _("Done: I forgot this room's conversation ({count} entries).").format(count=count)


def mode_set(mode: str) -> str:
    if mode == "all":
        return _("From now on I answer every message in this room.")
    return _("From now on I answer in this room only when I'm mentioned or replied to.")


def mode_usage(prefix: str) -> str:
    return _("Usage: {prefix}mode all | {prefix}mode mention").format(prefix=prefix)


def room_help(prefix: str, *, moderator: bool) -> str:
    lines = [
        _("**talkbot commands in this room**"),
        _("- `{prefix}help` — this list"),
        _("- `{prefix}usage` — the model tokens you used today, and your daily limit"),
    ]
    if moderator:
        lines += [
            _("- `{prefix}jobs` — every scheduled job of this room, and yours elsewhere"),
            _("- `{prefix}jobs remove ID` — remove a job of this room, or one of yours"),
            _("- `{prefix}forget` — wipe what I remember of this room"),
            _("- `{prefix}mode all|mention` — answer every message, or only when named"),
        ]
    else:
        lines += [
            _("- `{prefix}jobs` — your scheduled messages and reminders"),
            _(
                "- `{prefix}jobs remove ID` — remove one of them (this room's moderators can"
                " remove any job of the room)"
            ),
        ]
    return "\n".join(line.format(prefix=prefix) for line in lines)


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
    made_in: str | None = None,
) -> str:
    """One job in ``!jobs`` and ``schedule_list``; ``made_in`` when not the room it posts in.
    ``what``: "prompt" or "message"."""
    if paused:
        state = _("paused")
    elif next_run:
        state = _("next: {time}").format(time=next_run)
    else:
        state = _("no further runs")
    by = _(", by {owner}").format(owner=owner) if owner else ""
    origin = _(" (made in room {room})").format(room=made_in) if made_in else ""
    kind = _(_JOB_KINDS[what]) if what in _JOB_KINDS else what
    return _("- `{id}` — {when}, {what} in room {room}{origin}{by}; {state}").format(
        id=job_id, when=when, what=kind, room=room, origin=origin, by=by, state=state
    )


def jobs_list(lines: list[str], *, everyone: bool) -> str:
    if not lines:
        return _("There are no scheduled jobs.") if everyone else _("You have no scheduled jobs.")
    title = _("**Scheduled jobs**") if everyone else _("**Your scheduled jobs**")
    return "\n".join([title, *lines])


def room_jobs_list(room: str, here: list[str], elsewhere: list[str]) -> str:
    """``!jobs`` for a room's moderators: every job of the room, then the asker's others."""
    heading = _("**Scheduled jobs in this room** (`{room}`)").format(room=room)
    out = [heading, *here] if here else []
    out = out or [_("There are no scheduled jobs in this room (`{room}`).").format(room=room)]
    if elsewhere:
        out += [_("**Your scheduled jobs in other rooms**"), *elsewhere]
    return "\n".join(out)


def jobs_usage(prefix: str) -> str:
    return _("Usage: `{prefix}jobs` or `{prefix}jobs remove ID`").format(prefix=prefix)


def job_removed(job_id: str, owner: str, *, own: bool) -> str:
    if own:
        return _("Removed job `{id}`.").format(id=job_id)
    return _("Removed job `{id}` of {owner}.").format(id=job_id, owner=owner)


def job_not_removable(job_id: str) -> str:
    """Also for a job that exists but is not the asker's to remove: its existence stays private."""
    return _(
        "There is no job `{id}` that you can remove here: your own jobs, and as a"
        " moderator the jobs of this room."
    ).format(id=job_id[:64])


def job_from_config(job_id: str) -> str:
    return _("Job `{id}` comes from the config file; an admin changes it there.").format(id=job_id)


# -- confirmations -------------------------------------------------------------------
#
# A prompt shows every argument in full (DESIGN.md §5): nothing is cut, and nothing the
# reader cannot see is sent raw. Each character that would be invisible, or would make the
# visible text differ from what runs, is shown as a marker: ⟨TAB⟩ for a tab, ⟨U+XXXX⟩ for
# the rest. Markers stand for: controls (Cc: C0, DEL, C1, CR, and a newline where no line
# break can be shown), format characters (Cf: bidi controls, zero-width characters, the
# BOM, soft hyphens, tag characters), surrogates (Cs), private-use (Co) and unassigned
# (Cn, as this Python's Unicode knows it: so also emoji newer than it) characters, line
# and paragraph separators (Zl, Zp), every space but U+0020 (Zs), letters and marks that
# draw nothing (_BLANK_GLYPHS), variation selectors except one text/emoji selector right
# after a visible character (so ❤️ stays an emoji), combining marks past MAX_MARKS on one
# character (a pile of them draws over other lines), and "⟨" itself, so a marker cannot
# be faked. Values with several lines, or long ones, go in a fenced code block whose fence
# is longer than any backtick run inside (nothing inside can close it, so no Markdown,
# HTML or link inside takes effect); lines longer than FOLD_AT are folded with ⟨wrap⟩.

MESSAGE_LIMIT = 32000  # Talk's chat max-length; a longer prompt is refused, never split
INLINE_MAX = 60  # characters of a value shown inline; longer ones get a block
FOLD_AT = 80  # characters per line of a block, ⟨wrap⟩ included
PREVIEW_CHARS = 40  # per argument in !pending, which abbreviates
MAX_MARKS = 4  # combining marks kept on one character (Vietnamese uses two, Hebrew three)
MARK = "⟨"
TAB = "⟨TAB⟩"
WRAP = "⟨wrap⟩"
LEGEND = N_(  # translated where it is shown
    "⟨U+…⟩ stands for a character that would not show (a control, bidi or zero-width "
    "character...), ⟨TAB⟩ for a tab; ⟨wrap⟩ folds a long line (no line break there)."
)

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
# Hangul fillers, Khmer inherent vowels, the combining grapheme joiner, the braille blank.
_BLANK_GLYPHS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
_PRESENTATION_SELECTORS = frozenset("\ufe0e\ufe0f")
_COMBINING = frozenset({"Mn", "Me"})
_MARKDOWN_INLINE = re.compile(r"[\\`*_\[\]<>&~|]")


def _marker(char: str) -> str:
    return f"⟨U+{ord(char):04X}⟩"


def _always_hidden(char: str) -> bool:
    if char == " ":
        return False
    return (
        char == MARK or char in _BLANK_GLYPHS or unicodedata.category(char) in _ESCAPED_CATEGORIES
    )


def _is_variation_selector(char: str) -> bool:
    return "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef"


def _hidden(char: str, previous: str, marks: int) -> bool:
    """Whether ``char`` is shown as a marker; ``marks``: combining marks so far, itself too."""
    if _always_hidden(char):
        return True
    if _is_variation_selector(char):
        lone_after_visible = marks == 1 and bool(previous) and not _always_hidden(previous)
        return not (char in _PRESENTATION_SELECTORS and lone_after_visible)
    return marks > MAX_MARKS


def visible_tokens(text: str) -> list[str]:
    """Each character as the prompt shows it: itself, ⟨TAB⟩, or its ⟨U+XXXX⟩ marker."""
    tokens = []
    marks = 0
    previous = ""
    for char in text:
        marks = marks + 1 if unicodedata.category(char) in _COMBINING else 0
        if char == "\t":
            tokens.append(TAB)
        else:
            tokens.append(_marker(char) if _hidden(char, previous, marks) else char)
        previous = char
    return tokens


def visible(text: str) -> str:
    """``text`` with every invisible or misleading character made visible, on one line."""
    return "".join(visible_tokens(text))


def plain_text(text: str) -> str:
    """A name shown in running Markdown text: visible, and unable to start formatting."""
    return _MARKDOWN_INLINE.sub(lambda m: "\\" + m.group(0), visible(text))


def _code_span(text: str) -> str:
    """Inline code that Markdown shows verbatim, whatever backticks the text holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"`{text}`"


def _folded(line: str) -> str:
    """One line of a value, folded into rows of at most FOLD_AT characters."""
    rows: list[str] = []
    row: list[str] = []
    width = 0
    for token in visible_tokens(line):
        if row and width + len(token) > FOLD_AT - len(WRAP):
            rows.append("".join(row) + WRAP)
            row, width = [], 0
        row.append(token)
        width += len(token)
    rows.append("".join(row))
    return "\n".join(rows)


def _code_block(text: str) -> list[str]:
    """A fenced block of ``text``; the fence is longer than any backtick run inside."""
    body = "\n".join(_folded(line) for line in text.split("\n"))
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, body, fence]


def _fits_inline(text: str) -> bool:
    """Short, one line, no space that inline code could hide, nothing JSON would escape."""
    return (
        len(visible(text)) <= INLINE_MAX
        and text == text.strip()
        and "  " not in text
        and json.dumps(text, ensure_ascii=False) == f'"{text}"'
    )


def _characters(count: int) -> str:
    return ngettext("{count} character", "{count} characters", count).format(count=count)


def _lines(count: int) -> str:
    return ngettext("{count} line", "{count} lines", count).format(count=count)


def _name(name: str) -> str:
    """An argument's name: as it is when an identifier (every tool's are), else as code."""
    return name if name.isascii() and name.isidentifier() else _code_span(visible(name))


def _argument(name: str, value: object) -> list[str]:
    """One argument, in full: inline when short and simple, else in a code block.

    Inline, a text is quoted (JSON, which then escapes nothing); in a block it is shown as
    it is, line by line.
    """
    label = f"- {_name(name)}"
    if isinstance(value, str):
        if _fits_inline(value):
            return [f"{label}: {_code_span(visible(json.dumps(value, ensure_ascii=False)))}"]
        lines = value.count("\n") + 1
        size = f"{_characters(len(value))}, {_lines(lines)}"
        return [f"{label} ({size}):", *_code_block(value)]
    compact = json.dumps(value, ensure_ascii=False)
    if len(visible(compact)) <= INLINE_MAX and "  " not in compact:
        return [f"{label}: {_code_span(visible(compact))}"]
    return [f"{label} (JSON):", *_code_block(json.dumps(value, ensure_ascii=False, indent=2))]


def _arguments(args: Mapping[str, object]) -> list[str]:
    lines = [line for name, value in args.items() for line in _argument(name, value)]
    return lines or ["- " + _("(no arguments)")]


def _with_legend(lines: list[str]) -> list[str]:
    return [*lines, _(LEGEND)] if any(MARK in line for line in lines) else lines


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
    lines = [title.format(tool=_code_span(visible(tool)), code=code)]
    lines += _with_legend([*_arguments(args), _hash_line(args_hash)])
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
            return f"{_code_span(''.join(shown))}… ({_characters(len(text))})"
        shown.append(token)
    return _code_span("".join(shown))


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
        f"{_code_span(visible(name))}: {_preview(value)}" for name, value in (args or {}).items()
    ]
    return f"{line} — {', '.join(shown)}" if shown else line


def _action_head(
    code: str, *, tool: str, requester: str, room: str, status: str, expires: str
) -> str:
    return _(
        "**{code}** — {tool} for {requester} in room {room}; {status}, until {expires}"
    ).format(
        code=code,
        tool=_code_span(visible(tool)),
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
    return "\n".join(_with_legend([_("**Waiting for confirmation**"), *lines, footer]))


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
        *_arguments(args),
        _hash_line(args_hash),
    ]
    return "\n".join(_with_legend(lines))


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


def jobs_paused_for_departure(actor_id: str, job_ids: Sequence[str], prefix: str) -> str:
    who = actor_id.split("/", 1)[-1]
    ids = ", ".join(f"`{job_id}`" for job_id in job_ids)
    return _(
        "{who} left this room, so their scheduled job(s) here are paused: {ids}. "
        "A moderator can remove them with `{prefix}jobs remove ID`; an admin can resume one."
    ).format(who=who, ids=ids, prefix=prefix)


def store_down(since: float, reason: str) -> str:
    """The admin room's one notice when the store stops saving (H04)."""
    when = datetime.fromtimestamp(since, UTC)
    return _(
        "⚠️ The store cannot save anything since {when} UTC"
        " ({reason}). New messages from Talk are refused until it can again;"
        " what was accepted before is kept and will be answered. /readyz says not ready."
    ).format(when=f"{when:%Y-%m-%d %H:%M:%S}", reason=reason)


def store_recovered(down_s: float) -> str:
    return _(
        "✅ The store can save again (it could not for {seconds} s). Messages Talk"
        " sent meanwhile were refused and are not answered."
    ).format(seconds=f"{down_s:.0f}")


# -- usage and quotas (#16) ----------------------------------------------------------


def _wait(until: datetime, now: datetime) -> str:
    """How long until ``until``, in hours and minutes (rounded up, at least a minute)."""
    minutes = max(1, -(-int((until - now).total_seconds()) // 60))
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return _("{minutes} min").format(minutes=minutes)
    return _("{hours} h {minutes} min").format(hours=hours, minutes=minutes)


def _reset(resets_at: datetime, now: datetime) -> dict[str, str]:
    return {
        "time": f"{resets_at:%H:%M}",
        "zone": str(resets_at.tzinfo),
        "wait": _wait(resets_at, now),
    }


def over_quota(scope: str, limit: int, resets_at: datetime, *, now: datetime) -> str:
    """The answer instead of a turn when a daily token quota is used up."""
    if scope == "room":
        text = _(
            "Sorry, this room has used its {limit} tokens for today, so I can't answer here"
            " until the quota resets at {time} ({zone}), in {wait}."
        )
    else:
        text = _(
            "Sorry, you have used your {limit} tokens for today, so I can't answer until"
            " your quota resets at {time} ({zone}), in {wait}."
        )
    return text.format(limit=limit, **_reset(resets_at, now))


def job_over_quota(
    job_id: str, scope: str, limit: int, resets_at: datetime, *, now: datetime
) -> str:
    """Posted instead of a prompt job's answer when a daily token quota is used up."""
    if scope == "room":
        text = _(
            "Scheduled job `{job}` did not run: this room's daily quota of {limit} tokens is"
            " used up. It resets at {time} ({zone}), in {wait}."
        )
    else:
        text = _(
            "Scheduled job `{job}` did not run: its owner's daily quota of {limit} tokens is"
            " used up. It resets at {time} ({zone}), in {wait}."
        )
    return text.format(job=job_id, limit=limit, **_reset(resets_at, now))


def usage_heading(person: str | None, day: str, zone: str) -> str:
    """``person`` None: the asker's own usage."""
    if person is None:
        return _("**Your usage today** ({day}, {zone})").format(day=day, zone=zone)
    return _("**Usage of {person} today** ({day}, {zone})").format(
        person=plain_text(person), day=day, zone=zone
    )


def usage_tokens(total: int, prompt: int, completion: int, turns: int) -> str:
    return ngettext(
        "- tokens: {total} (prompt {prompt}, completion {completion}) in {turns} turn",
        "- tokens: {total} (prompt {prompt}, completion {completion}) in {turns} turns",
        turns,
    ).format(total=total, prompt=prompt, completion=completion, turns=turns)


def usage_estimated() -> str:
    return _("- some of these figures are estimated: the model server did not report them")


def usage_limit(limit: int, used: int, resets_at: datetime, *, now: datetime) -> str:
    return _(
        "- limit: {limit} tokens a day, {left} left; it resets at {time} ({zone}), in {wait}"
    ).format(limit=limit, left=max(0, limit - used), **_reset(resets_at, now))


def usage_unlimited(*, exempt: bool) -> str:
    return _("- limit: none (admins are exempt)") if exempt else _("- limit: none")


def usage_room(used: int, limit: int) -> str:
    return _("- this room today: {used} of its {limit} tokens").format(used=used, limit=limit)


def usage_cost(cost: float, currency: str) -> str:
    amount = f"{cost:.2f}" if cost >= 1 else f"{cost:.4f}"
    return _("- cost: about {amount} {currency}").format(amount=amount, currency=currency).rstrip()


def usage_only_own(prefix: str) -> str:
    return _(
        "You can see only your own usage here; admins see anyone's with `{prefix}usage UID`"
        " in the admin room."
    ).format(prefix=prefix)


def usage_nothing_yet() -> str:
    return _("No model tokens used today yet.")


def usage_summary_heading(day: str, zone: str) -> str:
    return _("**Usage today** ({day}, {zone})").format(day=day, zone=zone)


def usage_limits(person: int, room: int) -> str:
    """The day's default limits for the admin summary; 0 is none."""
    none = _("none")
    return _("- limits: {person} tokens per person, {room} per room").format(
        person=person or none, room=room or none
    )


def usage_top(kind: str, rows: Sequence[tuple[str, int, int, bool]]) -> list[str]:
    """``kind`` "people" or "rooms": a title and one line per (name, tokens, turns,
    estimated), most first."""
    lines = [_("**People**") if kind == "people" else _("**Rooms**")]
    for name, total, turns, estimated in rows:
        line = ngettext(
            "- {name}: {total} tokens in {turns} turn",
            "- {name}: {total} tokens in {turns} turns",
            turns,
        ).format(name=plain_text(name), total=total, turns=turns)
        lines.append(_("{line} (estimated)").format(line=line) if estimated else line)
    return lines
