"""The deliver path: re-check a job's creator and room at fire time, then post or run a turn."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot import i18n, replies
from bot.access import at_least
from bot.config import Role
from bot.quotas import Quotas
from bot.scheduler.jobs import ScheduledJob, Skipped
from bot.store import Store
from bot.talk.poster import Poster

# (room, requester, role, prompt, timezone) -> the answer to post
RunTurn = Callable[[str, str, Role, str, str], Awaitable[str]]
RoleOf = Callable[[str], Role]
# Learn what Nextcloud says of an actor (groups, language) before their role is read.
Learn = Callable[[str], Awaitable[None]]


async def _nothing_to_learn(_actor: str) -> None:
    return None


class JobDelivery:
    """``deliver`` for the scheduler: re-check creator and room, then post or run a turn."""

    def __init__(
        self,
        *,
        store: Store,
        poster: Poster,
        role_of: RoleOf,
        run_turn: RunTurn,
        learn: Learn = _nothing_to_learn,
        language_of: Callable[[str], str | None] = lambda _actor: None,
        quotas: Quotas | None = None,
    ) -> None:
        self._store = store
        self._poster = poster
        self._role_of = role_of
        self._quotas = quotas
        self._learn = learn
        self._language_of = language_of
        self._run_turn = run_turn

    async def __call__(self, job: ScheduledJob, fire_time: int) -> Skipped | None:
        refusal = await self.refusal(job)
        # A prompt job's turn speaks its creator's language (told to the model, too).
        with i18n.language(self._language_of(job.owner)):
            return await self._deliver(job, fire_time, refusal)

    async def _deliver(
        self, job: ScheduledJob, fire_time: int, refusal: str | None
    ) -> Skipped | None:
        if refusal is not None:
            return Skipped(refusal)
        if job.prompt is not None:
            if (over_quota := await self._over_quota(job, fire_time)) is not None:
                return over_quota
            text = await self._run_turn(
                job.room, job.owner, job.created_by_role, job.prompt, job.timezone
            )
        else:
            text = job.message or ""
        # Whoever made the job (config, admin, chat) and whatever the model answered: a job
        # never notifies the whole room (#13.8, I09).
        await self._poster.send_message(
            job.room,
            replies.defuse_mentions(text),
            reference_id=f"talkbot-job-{job.id}-{fire_time}",
        )
        return None

    async def _over_quota(self, job: ScheduledJob, fire_time: int) -> Skipped | None:
        """A prompt job whose owner (or room) used up today's tokens does not ask the
        model: the room is told, and the run is skipped. The config's jobs count as an
        admin's, under the name "config"."""
        if self._quotas is None:
            return None
        role = "admin" if job.source == "config" else self._role_of(job.owner)
        over = await self._quotas.check(job.owner, job.room, role)
        if over is None:
            return None
        notice = replies.job_over_quota(
            job.id, over.scope, over.limit, over.resets_at, now=self._quotas.now()
        )
        await self._poster.send_message(
            job.room, notice, reference_id=f"talkbot-job-{job.id}-{fire_time}"
        )
        return Skipped(f"the {over.scope}'s daily quota of {over.limit} tokens is used up")

    async def refusal(self, job: ScheduledJob) -> str | None:
        """Why this job may not run now (A16), or None."""
        room = await self._store.get_room(job.room)
        if room is not None and not room.joined:
            return "the bot is no longer in the room"
        if job.prompt is not None and job.room != job.origin_room and not job.may_prompt_elsewhere:
            return f"a prompt job runs only in the room it was made in ({job.origin_room or '?'})"
        if job.source == "config":
            return None
        await self._learn(job.owner)  # a role from Nextcloud groups, as current as a chat's
        role = self._role_of(job.owner)
        if not at_least(role, job.created_by_role) or not at_least(role, "user"):
            return f"the creator's role is now {role}, the job needs {job.created_by_role}"
        return None
