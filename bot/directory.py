"""Who people are in Nextcloud: their groups (for roles) and their language, cached.

Asked through the service account of ``[nextcloud] user`` (bot/nextcloud.py). A person's
answer is kept ``groups_ttl_s``; after that the next event asks again and waits at most
``wait_s`` for the answer; a slower answer lands in the cache when it comes, and the
event goes on with what was known. When Nextcloud is unreachable, a known answer is
kept ``groups_stale_s`` after it was last confirmed; older than that it is forgotten and
the person has the config's role only, never a higher one (docs/threat-model.md).

Failures are not retried per person and per message: the first failure pauses every
request for a while, doubling up to a ceiling. A refused password (401) pauses longest:
each 401 feeds Nextcloud's brute-force throttle, which then slows every request from
this address, Talk's included. The readers (``groups``, ``language``) are synchronous
reads of the cache, so the role checks at offer and at execution agree.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import structlog

from bot.clock import Clock
from bot.errors import NextcloudAuthError, NextcloudError

log = structlog.get_logger(__name__)

WAIT_S = 3.0  # what one event waits for Nextcloud before going on with what is known
UNREACHABLE_PAUSE_S = (5.0, 300.0)  # first pause after a failure, and the ceiling
REFUSED_PAUSE_S = (60.0, 3600.0)  # after a 401


class PeopleSource(Protocol):
    """What the directory asks Nextcloud (bot.nextcloud.Provisioning)."""

    async def groups_of(self, uid: str) -> tuple[str, ...] | None: ...

    async def language_of(self, uid: str) -> str | None: ...


@dataclass(frozen=True)
class Person:
    """What Nextcloud said about one person, and when it last said so."""

    groups: tuple[str, ...]  # of the groups the account manages; () for none
    language: str | None
    confirmed_at: float  # clock.now() of the last answer
    known: bool = True  # False: Nextcloud shows the account nobody by that id (404)


@dataclass(frozen=True)
class DirectoryHealth:
    state: str  # "ok", "unreachable", "refused", "unused"
    since: float | None
    reason: str
    people: int


class Directory:
    """A per-person cache of Nextcloud's answers, with bounded staleness."""

    def __init__(
        self,
        source: PeopleSource | None,
        clock: Clock,
        *,
        ttl_s: float,
        stale_s: float,
        wait_s: float | None = None,
    ) -> None:
        self._source = source
        self._clock = clock
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._wait_s = WAIT_S if wait_s is None else wait_s
        self._people: dict[str, Person] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._paused_until = 0.0  # monotonic
        self._pause_s = 0.0
        self._failure: tuple[str, float, str] | None = None  # state, since, reason
        self._due_now: set[str] = set()  # refresh_all: asked again at their next event

    @property
    def enabled(self) -> bool:
        return self._source is not None

    # -- reading (synchronous: the role checks) ---------------------------------------

    def person(self, uid: str) -> Person | None:
        """What is known of ``uid`` and still usable; None past ``groups_stale_s``."""
        person = self._people.get(uid)
        if person is None:
            return None
        if self._clock.now() - person.confirmed_at > self._stale_s:
            return None
        return person

    def groups(self, uid: str) -> tuple[str, ...] | None:
        """``uid``'s managed groups; None when not known (config roles only)."""
        person = self.person(uid)
        return person.groups if person is not None else None

    def language(self, uid: str) -> str | None:
        person = self.person(uid)
        return person.language if person is not None else None

    def known_people(self) -> dict[str, Person]:
        return {uid: p for uid in sorted(self._people) if (p := self.person(uid)) is not None}

    def health(self) -> DirectoryHealth:
        people = len(self.known_people())
        if self._source is None:
            return DirectoryHealth("unused", None, "", 0)
        if self._failure is None:
            return DirectoryHealth("ok", None, "", people)
        state, since, reason = self._failure
        return DirectoryHealth(state, since, reason, people)

    # -- asking -----------------------------------------------------------------------

    async def ensure(self, uid: str) -> None:
        """Make ``uid``'s entry current if it is due, waiting at most ``wait_s``.

        Never raises: what could not be learnt now is simply not known (the config's
        role applies) or still the last answer (within ``groups_stale_s``).
        """
        if self._source is None or not uid or not self._due(uid):
            return
        if self._clock.monotonic() < self._paused_until:
            return
        task = self._asking.get(uid)
        if task is None:
            task = asyncio.create_task(self._ask(uid), name=f"directory:{uid}")
            self._asking[uid] = task
            task.add_done_callback(partial(self._asked, uid))
        with contextlib.suppress(TimeoutError):
            # shield: the answer still lands in the cache when this event stops waiting
            await asyncio.wait_for(asyncio.shield(task), self._wait_s)

    async def ensure_actor(self, actor_id: str) -> None:
        """``ensure`` for a signed actor id: only ``users/<uid>`` are Nextcloud accounts."""
        kind, _, uid = actor_id.partition("/")
        if kind == "users":
            await self.ensure(uid)

    def answers_at_once(self, actor_id: str) -> bool:
        """Whether ``ensure_actor`` would return without asking Nextcloud (nothing to
        ask, an answer not yet due, or asking paused after a failure)."""
        kind, _, uid = actor_id.partition("/")
        if self._source is None or kind != "users" or not uid or not self._due(uid):
            return True
        return self._clock.monotonic() < self._paused_until

    def language_of_actor(self, actor_id: str) -> str | None:
        kind, _, uid = actor_id.partition("/")
        return self.language(uid) if kind == "users" else None

    def refresh_all(self) -> None:
        """``!reload``: every known answer is due at the next event (and kept till then)."""
        self._due_now = set(self._people)
        self._paused_until = 0.0

    async def aclose(self) -> None:
        tasks = list(self._asking.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _asked(self, uid: str, _task: asyncio.Task[None]) -> None:
        self._asking.pop(uid, None)

    def _due(self, uid: str) -> bool:
        person = self._people.get(uid)
        if person is None or uid in self._due_now:
            return True
        return self._clock.now() - person.confirmed_at >= self._ttl_s

    async def _ask(self, uid: str) -> None:
        assert self._source is not None  # noqa: S101 - ensure() checked
        try:
            groups = await self._source.groups_of(uid)
            # The details of a person outside the managed groups are not the account's
            # to read (and may answer 401, which would look like a wrong password).
            language = await self._source.language_of(uid) if groups is not None else None
        except NextcloudAuthError as exc:
            self._failed("refused", str(exc), REFUSED_PAUSE_S)
            return
        except NextcloudError as exc:
            self._failed("unreachable", str(exc), UNREACHABLE_PAUSE_S)
            return
        if self._failure is not None:
            log.info("directory.recovered", was=self._failure[0])
        self._failure, self._pause_s, self._paused_until = None, 0.0, 0.0
        before = self._people.get(uid)
        person = Person(groups or (), language, self._clock.now(), known=groups is not None)
        self._people[uid] = person
        self._due_now.discard(uid)
        if before is None or (before.groups, before.known) != (person.groups, person.known):
            log.info("directory.groups", uid=uid, groups=list(person.groups), known=person.known)

    def _failed(self, state: str, reason: str, pauses: tuple[float, float]) -> None:
        first, ceiling = pauses
        self._pause_s = min(ceiling, self._pause_s * 2) if self._pause_s else first
        self._paused_until = self._clock.monotonic() + self._pause_s
        if self._failure is None or self._failure[0] != state:
            self._failure = (state, self._clock.now(), reason)
        log.warning("directory.failed", state=state, reason=reason, pause_s=self._pause_s)
