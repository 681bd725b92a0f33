"""Roles from Nextcloud groups, through the running app and a fake Nextcloud that answers
like the captured Nextcloud 31 (N01-N05; tests/fakes/nextcloud_server.py).

The account ``talkbot-svc`` is group admin of ``staff`` and ``talkbot-admins``; alice is
in both (and in unmanaged ``finance``), bob in ``staff``, carol in none. The config maps
``talkbot-admins`` to admin and ``staff`` to user, so only they (and the config admin
``root``) get a role.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot import directory, i18n
from bot.clock import ManualClock
from tests.fakes.llm_server import FakeLLM
from tests.fakes.nextcloud_server import ACCOUNT, APP_PASSWORD, FakeNextcloud
from tests.fakes.talk_server import FakeTalk
from tests.harness import ADMIN_ROOM, SECRET, Daemon, create_event, merge, running_daemon

TTL_S = 60
STALE_S = 600
GROUPS = {"admin": ["talkbot-admins"], "user": ["staff"]}


def identity_config(**nextcloud: Any) -> dict[str, Any]:
    account = {
        "user": ACCOUNT,
        "app_password": APP_PASSWORD,
        "groups_ttl_s": TTL_S,
        "groups_stale_s": STALE_S,
    }
    return {
        "nextcloud": {**account, **nextcloud},
        "access": {"admins": ["root"], "groups": GROUPS},
    }


@pytest.fixture
def nextcloud() -> FakeNextcloud:
    return FakeNextcloud()


@pytest.fixture
async def nc_talk(nextcloud: FakeNextcloud) -> AsyncIterator[FakeTalk]:
    """Talk and the provisioning API at one URL, as on a real Nextcloud."""
    async with FakeTalk(SECRET, nextcloud=nextcloud) as server:
        yield server


@asynccontextmanager
async def daemon(
    tmp_path: Path,
    talk: FakeTalk,
    llm: FakeLLM,
    clock: ManualClock,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[Daemon]:
    config = merge(identity_config(), extra or {})
    async with running_daemon(tmp_path, talk, llm, config, clock=clock) as running:
        yield running


async def command(bot: Daemon, sender: str, text: str = "!status") -> str:
    """What the bot answers ``sender`` in the admin room ("" when nothing)."""
    said = await bot.say(create_event(text, sender=sender, room=ADMIN_ROOM, room_name="Admins"))
    return "\n".join(said)


def is_admin_answer(text: str) -> bool:
    return text.startswith("**talkbot ")  # !status's heading


def refused(text: str) -> bool:
    return "is an admin command" in text


async def offered_tools(bot: Daemon, llm: FakeLLM, sender: str) -> list[str] | None:
    """The tools the model is offered for ``sender``'s turn; None when no model request."""
    before = len(llm.requests)
    await bot.say(create_event("talkbot, what time is it?", sender=sender))
    if len(llm.requests) == before:
        return None
    return llm.requests[-1].tool_names


async def test_n01_roles_come_from_mapped_groups_and_the_highest_wins(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    clock = ManualClock()
    async with daemon(tmp_path, nc_talk, llm, clock) as bot:
        # alice: staff (user) and talkbot-admins (admin): the highest wins.
        assert is_admin_answer(await command(bot, "alice"))
        # bob: staff only: a user, offered the user's tools and not the admin's.
        assert refused(await command(bot, "bob"))
        tools = await offered_tools(bot, llm, "bob")
        assert tools is not None
        assert "current_time" in tools
        assert "file_read" not in tools
        # carol: in no managed group (Nextcloud answers 404 / 998): no role, no model turn.
        assert await offered_tools(bot, llm, "carol") is None
        assert nextcloud.asked_about("carol") == 1
        # root: an admin in the config file, whom Nextcloud does not know at all.
        assert is_admin_answer(await command(bot, "root"))


async def test_n01_config_admins_and_role_overrides_apply_on_top_of_groups(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM
) -> None:
    async with daemon(tmp_path, nc_talk, llm, ManualClock()) as bot:
        assert "now has the role **admin**" in await command(bot, "root", "!role bob admin")
        assert is_admin_answer(await command(bot, "bob"))
        assert "now has the role **none**" in await command(bot, "root", "!role alice none")
        assert await command(bot, "alice") == ""  # banned in chat, whatever her groups
        roles = await command(bot, "root", "!roles")
        assert "alice: none (set in chat" in roles


async def test_n02_groups_the_account_does_not_manage_grant_nothing(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    """finance is mapped to admin, but talkbot-svc is not its group admin: Nextcloud does
    not show it, so nobody becomes admin through it (least privilege holds both ways)."""
    nextcloud.members["dave"] = ["finance"]
    extra = {"access": {"groups": {"admin": ["talkbot-admins", "finance"]}}}
    async with daemon(tmp_path, nc_talk, llm, ManualClock(), extra) as bot:
        assert await command(bot, "dave") == ""  # 404 / 998: the config's role, none
        nextcloud.members["alice"] = ["staff", "finance"]  # alice leaves talkbot-admins
        bot.runtime.running.directory.refresh_all()
        assert refused(await command(bot, "alice"))  # staff shows; finance does not
        details = [r for r in nextcloud.requests if r.path.endswith("/users/dave")]
        assert details == []  # the details of someone outside the managed groups: not asked


async def test_n03_a_wrong_app_password_falls_back_to_config_roles_without_a_throttle_storm(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    clock = ManualClock()
    extra = identity_config(app_password="not-the-app-password")
    async with daemon(tmp_path, nc_talk, llm, clock, extra) as bot:
        for sender in ("alice", "bob", "alice", "carol", "bob"):
            assert await command(bot, sender) == ""  # no group known: config roles, none
        assert is_admin_answer(await command(bot, "root"))
        assert nextcloud.refusals == 1  # one 401, then a pause: no brute-force storm
        assert "refused since" in await command(bot, "root")
        clock.advance(directory.REFUSED_PAUSE_S[0] + 1)
        await command(bot, "alice")
        assert nextcloud.refusals == 2  # tried again after the pause, once
        await command(bot, "bob")
        clock.advance(directory.REFUSED_PAUSE_S[0] + 1)  # the pause doubled: not yet
        await command(bot, "bob")
        assert nextcloud.refusals == 2


async def test_n04_nextcloud_down_keeps_known_groups_for_a_while_then_config_roles(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    clock = ManualClock()
    async with daemon(tmp_path, nc_talk, llm, clock) as bot:
        assert is_admin_answer(await command(bot, "alice"))
        nextcloud.down = True
        clock.advance(TTL_S + 1)
        asked = len(nextcloud.requests)
        assert is_admin_answer(await command(bot, "alice"))  # the last answer, kept
        assert len(nextcloud.requests) == asked + 1
        for _ in range(5):
            assert is_admin_answer(await command(bot, "alice"))
        assert len(nextcloud.requests) == asked + 1  # paused after the failure
        status = await command(bot, "alice")
        assert "unreachable since" in status
        clock.advance(STALE_S)
        # Past groups_stale_s: forgotten. The config gives alice nothing: not even user.
        assert await command(bot, "alice") == ""
        nextcloud.down = False
        clock.advance(directory.UNREACHABLE_PAUSE_S[1])
        assert is_admin_answer(await command(bot, "alice"))


async def test_n04_a_slow_nextcloud_delays_an_event_a_moment_and_answers_later(
    tmp_path: Path,
    nc_talk: FakeTalk,
    llm: FakeLLM,
    nextcloud: FakeNextcloud,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(directory, "WAIT_S", 0.1)
    nextcloud.delay_s = 0.4  # per request: groups, then details
    async with daemon(tmp_path, nc_talk, llm, ManualClock()) as bot:
        assert await command(bot, "alice") == ""  # not known in time: config role, none
        await asyncio.sleep(1.5)  # the answer comes in the background
        asked = len(nextcloud.requests)
        assert is_admin_answer(await command(bot, "alice"))
        assert len(nextcloud.requests) == asked  # it landed in the cache: no new request


async def test_n05_a_group_change_is_picked_up_after_the_ttl_and_at_once_on_reload(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    clock = ManualClock()
    async with daemon(tmp_path, nc_talk, llm, clock) as bot:
        assert refused(await command(bot, "bob"))
        nextcloud.members["bob"] = ["staff", "talkbot-admins"]
        clock.advance(TTL_S - 5)
        assert refused(await command(bot, "bob"))  # within the TTL: the cached answer
        clock.advance(10)
        assert is_admin_answer(await command(bot, "bob"))  # asked again after the TTL
        nextcloud.members["bob"] = ["staff"]
        bot.runtime.running.directory.refresh_all()  # what !reload does
        assert refused(await command(bot, "bob"))
        nextcloud.members["bob"] = []
        clock.advance(TTL_S + 1)
        assert await command(bot, "bob") == ""  # left every mapped group: no role


async def test_n06_a_person_whose_nextcloud_language_is_german_is_asked_in_german(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    """alice chose German in Nextcloud: the confirmation prompt for her call is German, and
    the model is told her language; root, whom Nextcloud does not know, gets English."""
    english = "**Confirm before I run {tool}** — code **{code}**"
    with i18n.language("de"):
        german = i18n._(english)
    assert german != english
    nextcloud.languages["alice"] = "de"
    async with daemon(tmp_path, nc_talk, llm, ManualClock()) as bot:
        llm.call("file_write", {"path": "notes.txt", "content": "hello"})
        [prompt] = await bot.say(create_event("talkbot, save a note", sender="alice"))
        assert prompt.startswith(german.split("{tool}", maxsplit=1)[0])
        system = llm.requests[-1].messages[0]["content"]
        assert "German (de)" in system
        await bot.say(create_event("no", sender="alice"))
        llm.call("file_write", {"path": "notes.txt", "content": "hello"})
        [prompt] = await bot.say(create_event("talkbot, save a note", sender="root"))
        assert prompt.startswith(english.split("{tool}", maxsplit=1)[0])
        assert "German" not in llm.requests[-1].messages[0]["content"]


async def test_n07_a_groups_quota_applies_to_its_members_as_nextcloud_reports_them(
    tmp_path: Path, nc_talk: FakeTalk, llm: FakeLLM
) -> None:
    """[limits.groups.staff]: bob (staff, per Nextcloud) has 1000 tokens a day; carol is
    given the user role in chat and has the default, unlimited."""
    extra = {"limits": {"groups": {"staff": {"tokens_per_day": 1000}}}}
    async with daemon(tmp_path, nc_talk, llm, ManualClock(), extra) as bot:
        await command(bot, "root", "!role carol user")
        usage = {"prompt_tokens": 900, "completion_tokens": 200}
        llm.reply("A long answer.", usage=usage)
        assert await bot.say(create_event("talkbot, tell me", sender="bob")) == ["A long answer."]
        [over] = await bot.say(create_event("talkbot, and more?", sender="bob"))
        assert over.startswith("Sorry, you have used your 1000 tokens for today")
        asked = len(llm.requests)
        llm.reply("Another long answer.", usage=usage)
        said = await bot.say(create_event("talkbot, tell me", sender="carol"))
        assert said == ["Another long answer."]
        assert await bot.say(create_event("talkbot, more", sender="carol")) == ["ok"]
        assert len(llm.requests) == asked + 2
