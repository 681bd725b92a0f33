"""The bot's notices about itself: the model's failures, refusals, room commands, the store."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.i18n import N_, _

# English msgids; llm_notice translates them.
LLM_NOTICES = {
    "timeout": N_("The model took too long to answer. Please try again in a moment."),
    "rate_limited": N_("The model is busy right now (rate limited). Please try again in a minute."),
    "unavailable": N_("I can't reach the model right now. Please try again later."),
    "auth": N_("The model endpoint refused my credentials. An admin needs to check the config."),
    "bad_response": N_("The model sent an answer I couldn't read. Please try again."),
}


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
