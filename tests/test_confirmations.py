"""Pending actions and the rules of who may decide them (DESIGN.md §5, A04-A10)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.config import ConfirmSettings
from bot.confirmations import (
    CODE_ALPHABET,
    CODE_LENGTH,
    INTERRUPTED,
    Confirmations,
    PendingCall,
    Requester,
    Verdict,
    args_hash,
    is_later,
)
from bot.store import PendingAction, Store

TTL = 600
ROOM = "grouproom1"
ALICE = Requester(actor_id="users/alice", name="Alice", room=ROOM, message_id="100")
WRITE = PendingCall("call_1", "file_write", '{"content":"hi","path":"a.txt"}', "requester")
RESTART = PendingCall("call_2", "bot_restart", "{}", "either")


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    opened = Store.open(tmp_path / "talkbot.sqlite3", clock)
    yield opened
    await opened.close()


@pytest.fixture
def confirmations(store: Store, clock: ManualClock) -> Confirmations:
    return Confirmations(store, clock, ConfirmSettings(ttl_s=TTL))


async def _one(confirmations: Confirmations, call: PendingCall = WRITE) -> PendingAction:
    (action,) = await confirmations.request(ALICE, [call], '{"v":1}')
    return action


async def test_each_dangerous_call_gets_its_own_readable_code(
    confirmations: Confirmations, clock: ManualClock
) -> None:
    actions = await confirmations.request(ALICE, [WRITE, RESTART], '{"v":1}')
    assert len({action.code for action in actions}) == 2
    assert len({action.turn_id for action in actions}) == 1
    for action in actions:
        assert len(action.code) == CODE_LENGTH
        assert set(action.code) <= set(CODE_ALPHABET)
        assert not set(action.code) & set("O0I1")
        assert action.status == "pending"
        assert action.expires_at == clock.now() + TTL
        assert action.after_message_id == "100"
    assert actions[0].args_json == WRITE.args_json
    assert actions[0].args_hash == args_hash(WRITE.args_json)


async def test_a05_only_the_requester_may_answer(confirmations: Confirmations) -> None:
    action = await _one(confirmations)
    waiting = await confirmations.open_in_room(ROOM)
    by_bob = confirmations.match_answer(waiting, actor_id="users/bob", message_id="101")
    by_alice = confirmations.match_answer(waiting, actor_id="users/alice", message_id="101")
    assert by_bob.verdict is Verdict.NOT_REQUESTER
    assert by_alice.verdict is Verdict.OK
    assert by_alice.action is not None
    assert by_alice.action.id == action.id


async def test_a05_the_room_is_part_of_the_key(confirmations: Confirmations) -> None:
    await _one(confirmations)
    assert await confirmations.open_in_room("otherroom1") == []


@pytest.mark.parametrize(
    ("message_id", "after", "later"),
    [("101", "100", True), ("100", "100", False), ("99", "100", False), ("1000", "999", True)],
)
def test_a07_an_answer_must_be_newer_than_the_request(
    message_id: str, after: str, later: bool
) -> None:
    assert is_later(message_id, after) is later


async def test_a07_a_yes_older_than_the_request_does_not_count(
    confirmations: Confirmations,
) -> None:
    await _one(confirmations)
    waiting = await confirmations.open_in_room(ROOM)
    for message_id in ("99", "100"):
        match = confirmations.match_answer(waiting, actor_id="users/alice", message_id=message_id)
        assert match.verdict is Verdict.TOO_EARLY


async def test_several_waiting_need_a_code_or_a_reply(confirmations: Confirmations) -> None:
    write, restart = await confirmations.request(ALICE, [WRITE, RESTART], '{"v":1}')
    waiting = await confirmations.open_in_room(ROOM)
    bare = confirmations.match_answer(waiting, actor_id="users/alice", message_id="101")
    coded = confirmations.match_answer(
        waiting, actor_id="users/alice", message_id="101", code=restart.code.lower()
    )
    replied = confirmations.match_answer(
        waiting, actor_id="users/alice", message_id="101", replied_text=f"code **{write.code}**"
    )
    assert bare.verdict is Verdict.AMBIGUOUS
    assert coded.action == restart
    assert replied.action == write


async def test_a09_expired_is_refused_and_marked(
    confirmations: Confirmations, store: Store, clock: ManualClock
) -> None:
    action = await _one(confirmations)
    clock.advance(TTL + 1)
    waiting = await confirmations.open_in_room(ROOM)
    match = confirmations.match_answer(waiting, actor_id="users/alice", message_id="101")
    assert match.verdict is Verdict.EXPIRED
    assert await confirmations.approve(action, by="users/alice") is Verdict.EXPIRED
    stored = await store.get_pending(action.id)
    assert stored is not None
    assert stored.status == "expired"


async def test_a09_long_expired_actions_leave_the_room_lazily(
    confirmations: Confirmations, store: Store, clock: ManualClock
) -> None:
    action = await _one(confirmations)
    clock.advance(TTL + 1)
    assert [a.id for a in await confirmations.open_in_room(ROOM)] == [action.id]
    clock.advance(TTL)
    assert await confirmations.open_in_room(ROOM) == []
    stored = await store.get_pending(action.id)
    assert stored is not None
    assert stored.status == "expired"


async def test_a08_two_concurrent_approvals_run_once(confirmations: Confirmations) -> None:
    action = await _one(confirmations)
    first, second = await asyncio.gather(
        confirmations.approve(action, by="users/alice"),
        confirmations.approve(action, by="users/alice"),
    )
    assert sorted([first, second]) == sorted([Verdict.OK, Verdict.ALREADY_DECIDED])
    starts = await asyncio.gather(confirmations.start(action), confirmations.start(action))
    assert sorted(starts) == [False, True]


async def test_a08_a_replayed_yes_after_the_run_does_nothing(
    confirmations: Confirmations,
) -> None:
    action = await _one(confirmations)
    assert await confirmations.approve(action, by="users/alice") is Verdict.OK
    assert await confirmations.start(action)
    await confirmations.finish(action, ok=True, result_text="written")
    assert await confirmations.approve(action, by="users/alice") is Verdict.ALREADY_DECIDED
    assert not await confirmations.start(action)
    assert await confirmations.open_in_room(ROOM) == []


async def test_no_denies_and_a_later_yes_does_nothing(confirmations: Confirmations) -> None:
    action = await _one(confirmations)
    assert await confirmations.deny(action, by="users/alice")
    assert await confirmations.approve(action, by="users/alice") is Verdict.ALREADY_DECIDED


async def test_a_new_message_cancels_only_that_requesters_actions(
    confirmations: Confirmations,
) -> None:
    mine = await _one(confirmations)
    bob = Requester(actor_id="users/bob", name="Bob", room=ROOM, message_id="102")
    (theirs,) = await confirmations.request(bob, [RESTART], '{"v":1}')
    cancelled = await confirmations.cancel_for_requester(ROOM, "users/alice")
    assert [a.id for a in cancelled] == [mine.id]
    assert [a.id for a in await confirmations.open_in_room(ROOM)] == [theirs.id]


async def test_the_turn_resumes_once_when_nothing_of_it_waits(
    confirmations: Confirmations,
) -> None:
    write, restart = await confirmations.request(ALICE, [WRITE, RESTART], '{"v":1}')
    assert await confirmations.deny(write, by="users/alice")
    assert await confirmations.claim_resume(write.turn_id) is None
    assert await confirmations.deny(restart, by="users/alice")
    decided = await confirmations.claim_resume(write.turn_id)
    assert decided is not None
    assert [a.status for a in decided] == ["denied", "denied"]
    assert await confirmations.claim_resume(write.turn_id) is None


async def test_a10_interrupted_actions_fail_and_are_never_rerun(
    confirmations: Confirmations, store: Store
) -> None:
    running = await _one(confirmations)
    approved = await _one(confirmations, RESTART)
    waiting = await _one(confirmations)
    await confirmations.approve(running, by="users/alice")
    await confirmations.start(running)
    await confirmations.approve(approved, by="users/alice")
    failed = await confirmations.recover_interrupted()
    assert sorted(a.id for a in failed) == sorted([running.id, approved.id])
    for action in (running, approved):
        stored = await store.get_pending(action.id)
        assert stored is not None
        assert (stored.status, stored.result_text) == ("failed", INTERRUPTED)
        assert not await confirmations.start(action)
    assert [a.id for a in await confirmations.open_in_room(ROOM)] == [waiting.id]


async def test_pending_actions_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    store = Store.open(tmp_path / "db.sqlite3", clock)
    action = await _one(Confirmations(store, clock, ConfirmSettings(ttl_s=TTL)))
    await store.close()
    reopened = Store.open(tmp_path / "db.sqlite3", clock)
    try:
        again = Confirmations(reopened, clock, ConfirmSettings(ttl_s=TTL))
        assert await again.open_in_room(ROOM) == [action]
        assert await again.approve(action, by="users/alice") is Verdict.OK
    finally:
        await reopened.close()


async def test_every_step_is_audited_by_hash_never_by_args(
    confirmations: Confirmations, store: Store
) -> None:
    action = await _one(confirmations)
    await confirmations.set_prompt(action, "prompt")
    await confirmations.approve(action, by="users/alice")
    await confirmations.start(action)
    await confirmations.finish(action, ok=True, result_text="written")
    entries = await store.recent_audit()
    assert [e.action for e in entries] == [
        "confirm.requested",
        "confirm.prompted",
        "confirm.approved",
        "confirm.started",
        "confirm.finished",
    ]
    assert {e.args_hash for e in entries} == {action.args_hash}
    assert entries[-1].outcome == "done"
    assert all("a.txt" not in e.detail for e in entries)


async def test_approver_policy(confirmations: Confirmations) -> None:
    write = await _one(confirmations)
    either = await _one(confirmations, RESTART)
    admin_only = await _one(confirmations, PendingCall("call_3", "x", "{}", "admin"))
    assert confirmations.requester_may_approve(write, "user")
    assert not confirmations.requester_may_approve(admin_only, "user")
    assert confirmations.requester_may_approve(admin_only, "admin")
    assert not confirmations.admin_may_approve(write)
    assert confirmations.admin_may_approve(either)
    assert confirmations.admin_may_approve(admin_only)


async def test_list_open_and_by_code_for_admins(
    confirmations: Confirmations, clock: ManualClock
) -> None:
    action = await _one(confirmations)
    assert await confirmations.list_open() == [action]
    assert await confirmations.by_code(action.code.lower()) == action
    clock.advance(TTL + 1)
    assert await confirmations.list_open() == []


async def test_a09_listing_pending_actions_keeps_the_grace_for_a_late_yes(
    confirmations: Confirmations, store: Store, clock: ManualClock
) -> None:
    """An admin's `!pending` just after an action expired leaves it out, but does not
    mark it expired before its grace is over: a late yes is still told it expired."""
    action = await _one(confirmations)
    clock.advance(TTL + 1)
    assert await confirmations.list_open() == []
    assert [a.id for a in await confirmations.open_in_room(ROOM)] == [action.id]
    clock.advance(TTL)
    assert await confirmations.list_open() == []
    found = await store.get_pending(action.id)
    assert found is not None
    assert found.status == "expired"


async def test_i06_a_withdrawn_action_no_longer_waits_and_is_audited(
    confirmations: Confirmations, store: Store
) -> None:
    """#13.5: a call too large to show is withdrawn before anyone can answer it."""
    action = await _one(confirmations)
    assert await confirmations.withdraw(action, reason="too large to show")
    assert await confirmations.open_in_room(ROOM) == []
    waiting = await confirmations.open_in_room(ROOM)
    assert confirmations.match_answer(
        waiting, actor_id="users/alice", message_id="101"
    ).verdict is (Verdict.NONE_OPEN)
    assert await confirmations.approve(action, by="users/alice") is Verdict.ALREADY_DECIDED
    audit = await store.recent_audit()
    assert audit[-1].action == "confirm.refused"
    assert "too large to show" in audit[-1].detail
    assert not await confirmations.withdraw(action, reason="again")


async def test_h09_a_prompt_nobody_answers_is_expired_by_housekeeping(
    confirmations: Confirmations, store: Store, clock: ManualClock
) -> None:
    """A prompt left unanswered in a room that fell silent: nothing ever looks at the room
    again, so housekeeping marks it expired once its grace is over (as a look would), and
    from then on the purge of decided actions takes its paused turn in due time."""
    waiting = await _one(confirmations)
    answered = await _one(confirmations, RESTART)
    assert await confirmations.deny(answered, by="users/alice")
    clock.advance(2 * TTL - 1)  # expired, but a late yes is still told so (A09)
    assert await confirmations.expire_stale() == 0
    clock.advance(1)
    assert await confirmations.expire_stale() == 1
    found = await store.get_pending(waiting.id)
    assert found is not None
    assert found.status == "expired"
    assert (await store.recent_audit())[-1].action == "confirm.expired"
    assert await confirmations.expire_stale() == 0  # once
    clock.advance(15 * 24 * 3600)
    await store.purge_pending()
    purged = await store.get_pending(waiting.id)
    assert purged is not None
    assert purged.state_json == ""


async def test_a09_a_decision_that_lands_after_the_expiry_marks_it_expired_once(
    confirmations: Confirmations, store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A no, or the requester moving on, looked at the action just before its expiry and
    decides just after: refused by the store's compare-and-set, marked expired, audited
    once; nothing is denied or cancelled."""
    denied, moved_on = await _one(confirmations), await _one(confirmations, RESTART)
    clock.advance(TTL + 1)
    assert not await confirmations.deny(denied, by="users/alice")
    found = await store.get_pending(denied.id)
    assert found is not None
    assert found.status == "expired"  # by the refused deny itself
    monkeypatch.setattr(confirmations, "is_expired", lambda _action: False)  # looked before
    assert await confirmations.cancel_for_requester(ROOM, ALICE.actor_id) == []
    for action in (denied, moved_on):
        found = await store.get_pending(action.id)
        assert found is not None
        assert found.status == "expired"
    expired = [e for e in await store.recent_audit() if e.action == "confirm.expired"]
    assert len(expired) == 2
