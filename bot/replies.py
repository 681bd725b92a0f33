"""Every text the bot itself says to people (as opposed to what the model writes)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

ZERO_WIDTH_SPACE = "\u200b"
# Where Talk sees a mention: an "@" at the start or after a space, then an id or a quoted
# id ("@bob", '@"group/dev team"', "@all"); "alice@example.com" is no mention.
_MENTION = re.compile(r'(?:(?<=\s)|^)@(?=[\w"\'.-])', re.MULTILINE)

LLM_NOTICES = {
    "timeout": "The model took too long to answer. Please try again in a moment.",
    "rate_limited": "The model is busy right now (rate limited). Please try again in a minute.",
    "unavailable": "I can't reach the model right now. Please try again later.",
    "auth": "The model endpoint refused my credentials. An admin needs to check the config.",
    "bad_response": "The model sent an answer I couldn't read. Please try again.",
}


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
    ]
    if moderator:
        lines += [
            f"- `{prefix}jobs` — every scheduled job of this room, and yours elsewhere",
            f"- `{prefix}jobs remove ID` — remove a job of this room, or one of yours",
            f"- `{prefix}forget` — wipe what I remember of this room",
            f"- `{prefix}mode all|mention` — answer every message, or only when named",
        ]
    else:
        lines += [
            f"- `{prefix}jobs` — your scheduled messages and reminders",
            f"- `{prefix}jobs remove ID` — remove one of them (this room's moderators can"
            " remove any job of the room)",
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
    made_in: str | None = None,
) -> str:
    """One job in ``!jobs`` and ``schedule_list``; ``made_in`` when not the room it posts in."""
    state = "paused" if paused else f"next: {next_run}" if next_run else "no further runs"
    by = f", by {owner}" if owner else ""
    origin = f" (made in room {made_in})" if made_in else ""
    return f"- `{job_id}` — {when}, {what} in room {room}{origin}{by}; {state}"


def jobs_list(lines: list[str], *, everyone: bool) -> str:
    if not lines:
        return "There are no scheduled jobs." if everyone else "You have no scheduled jobs."
    title = "**Scheduled jobs**" if everyone else "**Your scheduled jobs**"
    return "\n".join([title, *lines])


def room_jobs_list(room: str, here: list[str], elsewhere: list[str]) -> str:
    """``!jobs`` for a room's moderators: every job of the room, then the asker's others."""
    out = [f"**Scheduled jobs in this room** (`{room}`)", *here] if here else []
    out = out or [f"There are no scheduled jobs in this room (`{room}`)."]
    if elsewhere:
        out += ["**Your scheduled jobs in other rooms**", *elsewhere]
    return "\n".join(out)


def jobs_usage(prefix: str) -> str:
    return f"Usage: `{prefix}jobs` or `{prefix}jobs remove ID`"


def job_removed(job_id: str, owner: str, *, own: bool) -> str:
    return f"Removed job `{job_id}`." if own else f"Removed job `{job_id}` of {owner}."


def job_not_removable(job_id: str) -> str:
    """Also for a job that exists but is not the asker's to remove: its existence stays private."""
    return (
        f"There is no job `{job_id[:64]}` that you can remove here: your own jobs, and as a"
        " moderator the jobs of this room."
    )


def job_from_config(job_id: str) -> str:
    return f"Job `{job_id}` comes from the config file; an admin changes it there."


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
LEGEND = (
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


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


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
        size = f"{_plural(len(value), 'character')}, {_plural(lines, 'line')}"
        return [f"{label} ({size}):", *_code_block(value)]
    compact = json.dumps(value, ensure_ascii=False)
    if len(visible(compact)) <= INLINE_MAX and "  " not in compact:
        return [f"{label}: {_code_span(visible(compact))}"]
    return [f"{label} (JSON):", *_code_block(json.dumps(value, ensure_ascii=False, indent=2))]


def _arguments(args: Mapping[str, object]) -> list[str]:
    lines = [line for name, value in args.items() for line in _argument(name, value)]
    return lines or ["- (no arguments)"]


def _with_legend(lines: list[str]) -> list[str]:
    return [*lines, LEGEND] if any(MARK in line for line in lines) else lines


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
    lines = [f"**Confirm before I run {_code_span(visible(tool))}** — code **{code}**"]
    lines += _with_legend([*_arguments(args), f"Arguments sha256: `{args_hash[:12]}`"])
    lines.append(
        f"Only {plain_text(requester)} can answer, until {expires}. Reply **yes** or **no** — "
        f"or **yes {code}** when several are waiting. From Talk 23 on, 👍 or 👎 on this "
        "message works too."
    )
    return "\n".join(lines)


def confirmation_too_large(tool: str, size: int) -> str:
    """One line: the call was refused, because its prompt would not fit in one message."""
    return (
        f"I did not run `{tool}`: the call is too large to show in full for confirmation "
        f"(its prompt would be {size} characters; one message holds {MESSAGE_LIMIT})."
    )


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


def _preview(value: object) -> str:
    """An argument abbreviated for a listing: visible, on one line, its length when cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text:
        return "(empty)"
    shown: list[str] = []
    for token in visible_tokens(text):
        if sum(map(len, shown)) + len(token) > PREVIEW_CHARS:
            return f"{_code_span(''.join(shown))}… ({_plural(len(text), 'character')})"
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
    line = (
        f"- **{code}** — {_code_span(visible(tool))} for {plain_text(requester)} in room "
        f"{plain_text(room)}; {status}, until {expires}"
    )
    shown = [
        f"{_code_span(visible(name))}: {_preview(value)}" for name, value in (args or {}).items()
    ]
    return f"{line} — {', '.join(shown)}" if shown else line


def pending_list(lines: Sequence[str], *, prefix: str = "!") -> str:
    if not lines:
        return "Nothing is waiting for a confirmation."
    footer = f"`{prefix}pending CODE` shows one call with every argument in full."
    return "\n".join(_with_legend(["**Waiting for confirmation**", *lines, footer]))


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
        f"**{code}** — {_code_span(visible(tool))} for {plain_text(requester)} in room "
        f"{plain_text(room)}; {status}, until {expires}",
        *_arguments(args),
        f"Arguments sha256: `{args_hash[:12]}`",
    ]
    return "\n".join(_with_legend(lines))


def pending_call_too_large(code: str, size: int) -> str:
    return f"{code} is too large to show in one message ({size} characters)."


def command_outcome(tool: str, status: str, result: str) -> str:
    if status == "done":
        return f"Done: {tool}. {result}".strip()
    if status == "failed":
        return f"{tool} failed: {result}".strip()
    return f"{tool} was not run ({status})."


def jobs_paused_for_departure(actor_id: str, job_ids: Sequence[str], prefix: str) -> str:
    who = actor_id.split("/", 1)[-1]
    ids = ", ".join(f"`{job_id}`" for job_id in job_ids)
    return (
        f"{who} left this room, so their scheduled job(s) here are paused: {ids}. "
        f"A moderator can remove them with `{prefix}jobs remove ID`; an admin can resume one."
    )


def store_down(since: float, reason: str) -> str:
    """The admin room's one notice when the store stops saving (H04)."""
    when = datetime.fromtimestamp(since, UTC)
    return (
        f"⚠️ The store cannot save anything since {when:%Y-%m-%d %H:%M:%S} UTC"
        f" ({reason}). New messages from Talk are refused until it can again;"
        " what was accepted before is kept and will be answered. /readyz says not ready."
    )


def store_recovered(down_s: float) -> str:
    return (
        f"✅ The store can save again (it could not for {down_s:.0f} s). Messages Talk"
        " sent meanwhile were refused and are not answered."
    )
