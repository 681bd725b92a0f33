"""The texts of usage and quotas (#16): ``!usage`` and the answer when a quota is used up."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bot.i18n import _, ngettext
from bot.replies.visible import plain_text


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
