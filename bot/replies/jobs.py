"""The texts of scheduled jobs: ``!jobs`` listings, removals, paused jobs."""

from __future__ import annotations

from collections.abc import Sequence

from bot.i18n import N_, _

_JOB_KINDS = {"prompt": N_("prompt"), "message": N_("message")}


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


def jobs_paused_for_departure(actor_id: str, job_ids: Sequence[str], prefix: str) -> str:
    who = actor_id.split("/", 1)[-1]
    ids = ", ".join(f"`{job_id}`" for job_id in job_ids)
    return _(
        "{who} left this room, so their scheduled job(s) here are paused: {ids}. "
        "A moderator can remove them with `{prefix}jobs remove ID`; an admin can resume one."
    ).format(who=who, ids=ids, prefix=prefix)
