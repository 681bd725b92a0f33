"""The webhook endpoint: verify, parse, store durably, answer 200; never waits for a turn."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

import structlog
from aiohttp import web

from bot.clock import Clock
from bot.config import ServerSettings
from bot.crashpoints import crash_point
from bot.dispatch import ROOM_FULL, Dispatcher
from bot.errors import StoreError
from bot.handlers.router import Settled
from bot.metrics import Metrics
from bot.routing import Triage
from bot.store import InboxItem, Store
from bot.talk.events import Event, EventParseError, parse_event
from bot.talk.signature import RANDOM_HEADER, SIGNATURE_HEADER, verify_webhook

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = 408
STORE_UNAVAILABLE = 503  # the store cannot commit: refused, never a 500 (H04)
# Join and Leave name the bot itself as actor; they update the room registry.
MEMBERSHIP_EVENTS = frozenset({"Join", "Leave"})
MAX_COUNTED_PAIRS = 256
# How long a webhook waits for an earlier event of its room to be judged, to be settled on
# arrival after it; past that it goes the usual way (stored pending, then triaged).
ORDER_WAIT_S = 0.25


class BodyTooLargeError(Exception):
    pass


class _Gate:
    """The webhooks of one room waiting for its earlier events, in arrival order."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0


# Store.accept_event, or Store.accept_settled with its settled arguments bound.
Accept = Callable[..., Awaitable[int | None]]


class Settler(Protocol):
    """Decides on arrival what needs nothing but its history row (the router)."""

    def settle_now(self, event: Event) -> Settled | None: ...

    def settled(self, event: Event, settled: Settled) -> None: ...


class WebhookReceiver:
    """Turns one signed POST from Talk into one inbox row, or a precise error status."""

    def __init__(
        self,
        *,
        settings: ServerSettings,
        secret: Callable[[], str],
        store: Store,
        dispatcher: Dispatcher,
        metrics: Metrics,
        clock: Clock,
        room_enabled: Callable[[str], None] = lambda _token: None,
        settler: Settler | None = None,
    ) -> None:
        self._settings = settings
        self._room_enabled = room_enabled
        self._settler = settler
        # Rooms with a webhook being stored the usual way: until it reaches the dispatcher
        # no later event of the room is settled (it would overtake a `!mode`, say).
        self._unsettled: dict[str, int] = {}
        self._stored_waiters: dict[str, asyncio.Future[None]] = {}
        # Rooms with webhooks waiting for an earlier event to be judged (_judge).
        self._gates: dict[str, _Gate] = {}
        self._secret = secret
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._clock = clock
        self._sources = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_sources]
        self.last_webhook_at: float | None = None
        # The counter's child per (type, status): labels() looks it up under a lock each
        # time, a cost on every webhook (#19); the handful of pairs is kept here.
        self._counted: dict[tuple[str, int], Callable[[], None]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        status, kind = await self._receive(request)
        self._count(kind, status)
        if status == REQUEST_TIMEOUT:
            return await _answer_and_close(request, status)
        return web.Response(status=status)

    def _count(self, kind: str, status: int) -> None:
        count = self._counted.get((kind, status))
        if count is None:
            count = self._metrics.webhooks.labels(type=kind, status=str(status)).inc
            if len(self._counted) < MAX_COUNTED_PAIRS:  # kinds come from signed bodies
                self._counted[kind, status] = count
        count()

    async def _receive(self, request: web.Request) -> tuple[int, str]:
        admitted = await self._admit(request)
        if isinstance(admitted, int):
            return admitted, "unknown"
        body, random = admitted
        try:
            event = parse_event(body)
        except EventParseError as exc:
            log.warning("webhook.unparseable", reason=str(exc))
            return 400, "unknown"
        self.last_webhook_at = self._clock.now()
        self._room_enabled(event.room.token)
        if event.actor.is_bot and event.type not in MEMBERSHIP_EVENTS:
            # Talk never webhooks bot messages, but system messages bots cause (W12).
            return 200, event.type
        settled, plain_turn = await self._judge(event)
        if settled is not None:
            accept: Accept = partial(
                self._store.accept_settled,
                history=settled.history,
                trim_to=settled.trim_to,
                dropped=ROOM_FULL if settled.turn else "",
            )
            return await self._store_event(event, body, random, accept, settled=settled)
        if plain_turn is not None:  # queued, triaged already; changes nothing for later ones
            return await self._store_event(
                event, body, random, self._store.accept_event, triaged=plain_turn
            )
        try:  # the usual way: _judge counted it in the room's unsettled events
            return await self._store_event(event, body, random, self._store.accept_event)
        finally:
            self._stored_usual_way(event.room.token)

    async def _store_event(
        self,
        event: Event,
        body: bytes,
        random: str,
        accept: Accept,
        *,
        settled: Settled | None = None,
        triaged: Triage | None = None,
    ) -> tuple[int, str]:
        """Store the event (acknowledged only once committed), then hand it on: to the
        dispatcher, or, settled on arrival, nowhere (stored done with its history row,
        or dropped with the busy notice)."""
        try:
            item_id = await accept(
                room=event.room.token,
                kind=event.type,
                body=body,
                random=random,
                dedupe_key=event.dedupe_key,
                message_id=event.talk_message_number,
            )
        except StoreError as exc:
            # Not acknowledged, so not ours to lose: Talk's sender sees the failure (H04).
            log.warning(
                "webhook.not_stored", room=event.room.token, type=event.type, reason=str(exc)
            )
            return STORE_UNAVAILABLE, event.type
        crash_point("after_accept")
        if item_id is None:  # a replay, or one delivery reaching us twice: nothing to do
            log.debug("webhook.duplicate", room=event.room.token, type=event.type)
            return 200, event.type
        item = InboxItem(
            id=item_id,
            room=event.room.token,
            kind=event.type,
            body=body,
            received_at=self.last_webhook_at or self._clock.now(),
            attempts=0,
        )
        if settled is None:
            self._dispatcher.submit(item, triaged or event)
        elif settled.turn:
            self._dispatcher.dropped_on_arrival(item)
        elif self._settler is not None:
            self._settler.settled(event, settled)
        return 200, event.type

    async def _judge(self, event: Event) -> tuple[Settled | None, Triage | None]:
        """``_settle``'s verdict, once no earlier event of the room is still to be judged:
        an event that arrives while one is (being stored the usual way, or not triaged
        yet) waits for it, up to ORDER_WAIT_S, in arrival order. Sent the usual way at
        once instead, it would hold up the room's next event in turn, and at a busy
        room's pace that never ends: each costs a second commit and the store's reads.
        An event sent the usual way is counted in ``_unsettled`` before this returns."""
        room = event.room.token
        if room not in self._gates:
            if self._settler is None or not self._dispatcher.settles_on_arrival:
                return self._usual_way(room)
            if self._in_order(room):
                return self._decide(event)
        # Behind the room's waiting webhooks even once stopping: stored after them.
        # From arrival: the ones ahead wait until their own (earlier) deadlines at most.
        deadline = asyncio.get_running_loop().time() + ORDER_WAIT_S
        gate = self._gates.get(room)
        if gate is None:
            gate = self._gates[room] = _Gate()
        gate.waiting += 1
        try:
            async with gate.lock:
                if await self._wait_in_order(room, deadline):
                    return self._decide(event)
                return self._usual_way(room)
        finally:
            gate.waiting -= 1
            if not gate.waiting:
                del self._gates[room]

    def _in_order(self, room: str) -> bool:
        return room not in self._unsettled and self._dispatcher.may_settle_at_once(room)

    async def _wait_in_order(self, room: str, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while not self._in_order(room):
            if not self._dispatcher.settles_on_arrival:
                return False  # stopping: the usual way, in turn
            wake = (
                self._stored(room) if room in self._unsettled else self._dispatcher.when_sure(room)
            )
            left = deadline - loop.time()
            if wake is None or left <= 0:
                return False
            done, _ = await asyncio.wait((wake,), timeout=left)
            if not done:
                return False
        return True

    def _decide(self, event: Event) -> tuple[Settled | None, Triage | None]:
        settled, plain_turn = self._settle(event)
        if settled is None and plain_turn is None:
            return self._usual_way(event.room.token)
        return settled, plain_turn

    def _usual_way(self, room: str) -> tuple[None, None]:
        self._unsettled[room] = self._unsettled.get(room, 0) + 1
        return None, None

    def _stored(self, room: str) -> asyncio.Future[None]:
        """Resolved once no event of ``room`` is being stored the usual way."""
        stored = self._stored_waiters.get(room)
        if stored is None:
            stored = self._stored_waiters[room] = asyncio.get_running_loop().create_future()
        return stored

    def _stored_usual_way(self, room: str) -> None:
        self._unsettled[room] -= 1
        if self._unsettled[room]:
            return
        del self._unsettled[room]
        stored = self._stored_waiters.pop(room, None)
        if stored is not None and not stored.done():
            stored.set_result(None)

    def _settle(self, event: Event) -> tuple[Settled | None, Triage | None]:
        """Most messages in a busy room are nothing for the bot: decided on arrival when
        the router can be sure, they cost one commit and no queue (#19). Also whether an
        event that is not settled is a plain chat turn, sure to be judged so: one that
        cannot change how the room's later messages are judged (a command could, or an
        event the router could not be sure of), so those may still be settled meanwhile."""
        room = event.room.token
        if self._settler is None:
            return None, None
        try:
            settled = self._settler.settle_now(event)
        except Exception:  # the usual way decides instead: a bug here is never a 500
            log.exception("webhook.settle_failed", room=room, type=event.type)
            return None, None
        if settled is None or not settled.turn:
            return settled, None
        # A chat turn is settled only where the room has no place for it (flooded): stored
        # dropped at once instead of stored, triaged, then marked dropped.
        if self._dispatcher.refuses_turn(room, event.actor.id):
            return settled, None
        return None, settled.triage

    async def _admit(self, request: web.Request) -> tuple[bytes, str] | int:
        """The verified raw body and its random, or the status that refuses it."""
        if not self._source_allowed(request.remote):
            log.warning("webhook.source_refused", remote=request.remote)
            return 403
        try:
            body = await self._read_body(request)
        except BodyTooLargeError:
            log.warning("webhook.too_large", length=request.content_length)
            return 413
        except TimeoutError:
            log.warning("webhook.body_timeout")
            return 408
        random = request.headers.get(RANDOM_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)
        if random is None or not verify_webhook(self._secret(), random, body, signature):
            log.warning("webhook.bad_signature", remote=request.remote)
            return 401
        return body, random

    def _source_allowed(self, remote: str | None) -> bool:
        if not self._sources:
            return True
        try:
            address = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        return any(address in network for network in self._sources)

    async def _read_body(self, request: web.Request) -> bytes:
        """Read at most max_body_bytes, refusing early on Content-Length (W08, W09)."""
        limit = self._settings.max_body_bytes
        if request.content_length is not None:
            if request.content_length > limit:
                raise BodyTooLargeError
            if request.content.is_eof():  # all of it arrived with the headers: no wait
                return await request.read()
            async with asyncio.timeout(self._settings.body_timeout_s):
                return await request.read()  # framed by Content-Length, under the limit
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self._settings.body_timeout_s):
            while chunk := await request.content.read(65536):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLargeError
                chunks.append(chunk)
        return b"".join(chunks)


async def _answer_and_close(request: web.Request, status: int) -> web.Response:
    """Answer, then drop the connection (W09): left open, aiohttp would go on reading a
    dripping body for its lingering time (10 s) after the handler gave up on it."""
    response = web.Response(status=status)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response
