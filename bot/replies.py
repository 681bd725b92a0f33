"""Every text the bot itself says to people (as opposed to what the model writes)."""

from __future__ import annotations

import re

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
