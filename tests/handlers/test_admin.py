"""The admin room end to end: commands answer without the model; others are refused (A11)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import BaseModel

from bot.agent import llm as llm_module
from bot.clock import ManualClock
from bot.config import load_settings
from bot.tools import Tool, ToolContext
from bot.tools.toolbox import roles_from
from tests.fakes.llm_server import DEFAULT_REPLY, FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import (
    ADMIN_ROOM,
    API_KEY,
    ONE2ONE,
    Daemon,
    create_event,
    dm_event,
    running_daemon,
)
from tests.test_process import write_toml

log = structlog.get_logger(__name__)


def admin_says(text: str, sender: str = "root") -> dict[str, object]:
    return create_event(text, sender=sender, room=ADMIN_ROOM, room_name="Admins")


async def ask(daemon: Daemon, text: str, sender: str = "root") -> str:
    texts = await daemon.say(admin_says(text, sender))
    assert len(texts) == 1, texts
    return texts[0]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("!help", "!role UID"),
        ("!help logs", "log lines"),
        ("!status", "inbox backlog"),
        ("!status", "pending confirmations: 0"),
        ("!status", "next scheduled runs: none"),
        ("!roles", "admins (config): root"),
        ("!rooms", "adminroom1"),
        ("!logs 5", "log lines"),
        ("!stauts", "Did you mean `!status`?"),
    ],
)
async def test_admin_commands_answer_without_the_model(
    daemon: Daemon, command: str, expected: str
) -> None:
    log.info("something.happened", room="x")
    assert expected in await ask(daemon, command)
    assert daemon.llm.requests == []


async def test_status_does_not_count_its_own_message_in_the_backlog(daemon: Daemon) -> None:
    """#12.6: with nothing else waiting, !status says the backlog is 0, not 1."""
    answer = await ask(daemon, "!status")
    assert "- inbox backlog: 0\n" in answer


async def test_a11_non_admin_in_the_admin_room_is_refused(daemon: Daemon) -> None:
    answer = await ask(daemon, "!role bob admin", sender="bob")
    assert "admin command" in answer
    assert daemon.llm.requests == []
    assert await daemon.runtime.running.store.role_overrides() == {}


async def test_a11_admin_command_outside_the_admin_room_is_refused(daemon: Daemon) -> None:
    texts = await daemon.say(create_event("!role bob admin", sender="root"))
    assert len(texts) == 1
    assert "admin room" in texts[0]
    assert await daemon.runtime.running.store.role_overrides() == {}
    assert daemon.llm.requests == []


async def test_role_change_takes_effect_and_survives_a_restart(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    async with running_daemon(tmp_path, talk, llm) as daemon:
        assert "now has the role **admin**" in await ask(daemon, "!role bob admin")
        llm.reply("hi bob")
        await daemon.say(dm_event("hello", sender="bob", other="root"))
        assert "bot_logs" in llm.requests[-1].tool_names
    # A model fake of its own: its only request is the one made after the restart.
    async with FakeLLM(api_key=API_KEY) as after, running_daemon(tmp_path, talk, after) as daemon:
        after.reply("hi again")
        assert await daemon.say(dm_event("hello again", sender="bob", other="root")) == ["hi again"]
        [request] = after.requests
        assert "bot_logs" in request.tool_names
        assert "back to the config's role (user)" in await ask(daemon, "!role bob default")


async def test_config_admins_cannot_be_demoted_from_chat(daemon: Daemon) -> None:
    assert "in the config file" in await ask(daemon, "!role root none")
    assert daemon.runtime.running.access.role_of("users/root") == "admin"


async def test_role_with_a_bad_role_name_is_explained(daemon: Daemon) -> None:
    assert "Unknown role" in await ask(daemon, "!role bob superuser")


async def test_reload_with_a_broken_file_keeps_the_running_config(
    tmp_path: Path, daemon: Daemon
) -> None:
    config = tmp_path / "reload.toml"
    config.write_text("[chat]\npersona = 'new persona'\n[nextcloud]\nurl = 'nope'\n")
    daemon.runtime.load_settings = lambda: load_settings(config, {})
    answer = await ask(daemon, "!reload")
    assert "not reloaded" in answer
    assert "nextcloud" in answer
    assert daemon.runtime.settings.chat.persona == "You are a helpful assistant for our team."


def reload_from(tmp_path: Path, daemon: Daemon) -> None:
    """The daemon's next `!reload` reads a file with another model and persona."""
    data = {
        "nextcloud": {
            "url": daemon.settings.nextcloud.url,
            "bot_secret": daemon.settings.nextcloud.bot_secret.get_secret_value(),
        },
        "llm": {"base_url": daemon.settings.llm.base_url, "model": "other-model"},
        "access": {"admins": ["root"], "admin_room": ADMIN_ROOM},
        "chat": {"persona": "You are terse."},
        "storage": {"path": str(daemon.settings.storage.path)},
    }
    config = tmp_path / "reload.toml"
    write_toml(config, data)
    daemon.runtime.load_settings = lambda: load_settings(config, {})


async def test_reload_applies_a_good_file(tmp_path: Path, daemon: Daemon) -> None:
    reload_from(tmp_path, daemon)
    assert "Config reloaded." in await ask(daemon, "!reload")
    daemon.llm.reply("ok")
    await daemon.say(dm_event("hi"))
    request = daemon.llm.requests[-1]
    assert request.body["model"] == "other-model"
    assert "You are terse." in request.messages[0]["content"]


async def test_reload_lets_a_turn_waiting_on_the_model_finish_on_the_old_client(
    tmp_path: Path, daemon: Daemon
) -> None:
    """`!reload` with a new [llm] swaps the model client while a turn waits on the old
    one: that turn still gets its answer (its connection is not cut), the next one goes
    through the new client."""
    reload_from(tmp_path, daemon)
    daemon.llm.hang(1.0)  # the model takes a second over the first answer
    assert await daemon.post(dm_event("a long question")) == 200
    await daemon.llm.wait_for_requests(1)  # the question is with the model
    assert await daemon.post(admin_says("!reload")) == 200
    await daemon.idle()
    [reloaded] = daemon.talk.texts(ADMIN_ROOM)
    assert reloaded.startswith("Config reloaded.")
    assert daemon.talk.texts(ONE2ONE) == [DEFAULT_REPLY]
    assert len(daemon.llm.requests) == 1  # asked once: its connection was not cut
    daemon.llm.reply("from the new client")
    await daemon.say(dm_event("and now?"))
    assert daemon.talk.texts(ONE2ONE)[-1] == "from the new client"
    assert daemon.llm.requests[-1].body["model"] == "other-model"


async def test_reload_amid_a_turn_with_a_tool_round_asks_the_new_client_next(
    tmp_path: Path, daemon: Daemon
) -> None:
    """`!reload` while the model works on a turn's first round: that round's answer (a
    tool call) arrives on the old client, the tool runs, and the next round goes to the
    new client; the person gets the answer, not "can't reach the model"."""
    reload_from(tmp_path, daemon)
    daemon.llm.call("current_time", {"timezone": "Europe/Berlin"}, delay_s=1.0)
    daemon.llm.reply("It is noon.")
    assert await daemon.post(dm_event("what time is it?")) == 200
    await daemon.llm.wait_for_requests(1)
    assert await daemon.post(admin_says("!reload")) == 200
    await daemon.idle()
    assert daemon.talk.texts(ONE2ONE) == ["It is noon."]
    first, second = daemon.llm.requests
    assert (first.body["model"], second.body["model"]) == ("test-model", "other-model")


class NoArgs(BaseModel):
    pass


async def test_reload_while_a_tools_runs_hands_the_next_round_the_new_client(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`!reload` while a turn's tool runs, with no model call under way, and closing the
    old client takes a while: the turn's next round, asked while the old client closes,
    goes to the new client, never to the one being closed."""
    old: list[llm_module.LLM] = []

    async def slow(_args: NoArgs, _ctx: ToolContext) -> str:
        async with asyncio.timeout(5):
            while not old[0]._closed:  # noqa: ASYNC110 - the client has no event for it
                await asyncio.sleep(0.01)
        return "done"

    tool = Tool(
        name="slow_tool", description="slow", args=NoArgs, run=slow, roles=roles_from("user")
    )
    real_close = llm_module.LLM._close_session

    async def slow_close(self: llm_module.LLM) -> None:
        await asyncio.sleep(1.0)
        await real_close(self)

    monkeypatch.setattr(llm_module.LLM, "_close_session", slow_close)
    async with running_daemon(tmp_path, talk, llm, extra_tools=[tool]) as daemon:
        old.append(daemon.runtime.running.llm)
        reload_from(tmp_path, daemon)
        llm.call("slow_tool", {})
        llm.reply("It is noon.")
        assert await daemon.post(dm_event("go")) == 200
        await llm.wait_for_requests(1)
        assert await daemon.post(admin_says("!reload")) == 200
        await daemon.idle()
        assert talk.texts(ONE2ONE) == ["It is noon."]
        assert llm.requests[-1].body["model"] == "other-model"


async def test_restart_without_a_yes_does_nothing_and_with_one_stops_with_75(
    daemon: Daemon,
) -> None:
    prompt = await ask(daemon, "!restart")
    assert "bot_restart" in prompt
    assert not daemon.runtime.stop_requested.is_set()
    assert "Only" in await ask(daemon, "yes", sender="bob")  # A05: bob has no say here
    assert not daemon.runtime.stop_requested.is_set()
    answer = await ask(daemon, "yes")
    assert "Done: bot_restart" in answer
    assert daemon.runtime.stop_requested.is_set()
    assert daemon.runtime.exit_code == 75
    assert daemon.llm.requests == []


async def test_restart_answered_no_does_nothing(daemon: Daemon) -> None:
    await ask(daemon, "!restart")
    assert "not run" in await ask(daemon, "no")
    assert not daemon.runtime.stop_requested.is_set()


async def test_pending_approve_and_cancel(daemon: Daemon, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    daemon.llm.calls(
        [
            ("file_write", {"path": "a.txt", "content": "one"}, None),
            ("file_write", {"path": "b.txt", "content": "two"}, None),
        ]
    )
    # root asks in a one-to-one room; the two prompts wait there
    prompts = await daemon.say(dm_event("write two files", sender="root", other="bob"))
    assert len(prompts) == 2
    assert all("file_write" in prompt for prompt in prompts)
    listing = await ask(daemon, "!pending")
    assert "file_write" in listing
    codes = re.findall(r"\*\*([A-Z2-9]{5})\*\*", listing)
    assert len(codes) == 2
    assert "Usage" in await ask(daemon, "!cancel")
    texts = await daemon.say(admin_says(f"!cancel {codes[0]}"))
    assert f"Cancelled {codes[0]}." in texts  # in the admin room
    assert any("will not run" in text for text in texts)  # and the requester is told
    assert not (files / "a.txt").exists()
    assert "no confirmation with code ZZZZZ" in await ask(daemon, "!approve ZZZZZ")
    still = await ask(daemon, "!pending")
    assert codes[1] in still
    assert codes[0] not in still


async def test_a09_an_expired_action_is_neither_listed_counted_nor_cancelled_into_its_room(
    daemon: Daemon, clock: ManualClock
) -> None:
    """Past its expiry, within the grace (a late yes is still told it expired): `!pending`
    leaves it out, `!status` does not count it, `!pending CODE` says expired, and `!cancel`
    marks it expired without resuming its turn, so nothing is posted into its room."""
    daemon.llm.calls([("file_write", {"path": "a.txt", "content": "one"}, None)])
    await daemon.say(dm_event("write a file", sender="root", other="bob"))
    [code] = re.findall(r"\*\*([A-Z2-9]{5})\*\*", await ask(daemon, "!pending"))
    assert "pending confirmations: 1" in await ask(daemon, "!status")
    clock.advance(daemon.settings.confirm.ttl_s + 1)
    assert code not in await ask(daemon, "!pending")
    assert "pending confirmations: 0" in await ask(daemon, "!status")
    assert "expired" in await ask(daemon, f"!pending {code}")
    before = len(daemon.talk.texts("dmroom01"))
    daemon.llm.reply("resumed after expiry")
    assert "expired" in await ask(daemon, f"!cancel {code}")
    assert daemon.talk.texts("dmroom01")[before:] == []
    stored = await daemon.runtime.running.store.pending_by_code(code)
    assert stored is not None
    assert stored.status == "expired"


async def requested_write(daemon: Daemon) -> str:
    """root asks for a file write in a one-to-one room; the code of its waiting action."""
    daemon.llm.calls([("file_write", {"path": "a.txt", "content": "one"}, None)])
    await daemon.say(dm_event("write a file", sender="root", other="bob"))
    [code] = re.findall(r"\*\*([A-Z2-9]{5})\*\*", await ask(daemon, "!pending"))
    return code


async def test_a_cancel_racing_an_approval_says_what_became_of_the_action(
    daemon: Daemon, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`!cancel` read the action while it waited; the requester's yes approved it just
    before its expiry. The admin is told it is no longer waiting, as what, not that it
    expired unrun."""
    code = await requested_write(daemon)
    confirmations = daemon.runtime.running.approvals._confirmations
    stale = await confirmations.by_code(code)
    assert stale is not None
    store = daemon.runtime.running.store
    assert await store.transition_pending(stale.id, "pending", "approved", unexpired_at=clock.now())
    clock.advance(daemon.settings.confirm.ttl_s + 1)

    async def read_before_the_yes(_code: str) -> Any:
        return stale

    monkeypatch.setattr(confirmations, "by_code", read_before_the_yes)
    answer = await ask(daemon, f"!cancel {code}")
    assert "expired" not in answer
    assert "approved" in answer


async def test_job_add_list_pause_run_remove(daemon: Daemon) -> None:
    added = await ask(
        daemon,
        "!job add standup room=grouproom1 tz=Europe/Berlin cron 0 9 * * 1-5"
        " -- Stand-up in 5 minutes",
    )
    assert added.startswith("Added:")
    assert "standup" in await ask(daemon, "!jobs")
    assert "next scheduled runs: standup 20" in await ask(daemon, "!status")
    assert "paused" in await ask(daemon, "!job pause standup")
    ran = await daemon.say(admin_says("!job run standup"))
    assert "Stand-up in 5 minutes" in daemon.talk.texts("grouproom1")
    assert any("ran: done" in text for text in ran)
    assert "removed" in await ask(daemon, "!job remove standup")
    assert "No job" in await ask(daemon, "!job remove standup")


async def test_i05_admin_jobs_lists_every_job_and_removes_any_but_the_configs(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra = {
        "schedules": [{"id": "lunch", "every": "1h", "room": "grouproom1", "message": "Lunch"}]
    }
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        llm.call("schedule_add", {"every": "1h", "message": "water"})
        llm.reply("Done.")
        await daemon.say(create_event("talkbot remind me hourly", sender="bob"))
        [job] = await daemon.runtime.running.scheduler.jobs("users/bob")
        listing = await ask(daemon, "!jobs")
        assert f"`{job.id}`" in listing
        assert "by users/bob" in listing
        assert "`lunch`" in listing
        assert "config file" in await ask(daemon, "!jobs remove lunch")
        assert f"Removed job `{job.id}` of users/bob" in await ask(daemon, f"!jobs remove {job.id}")
        assert await daemon.runtime.running.scheduler.get(job.id) is None
        assert "Usage" in await ask(daemon, "!jobs frobnicate")


async def test_i07_job_add_stops_at_the_configured_jobs_per_person(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra = {"limits": {"jobs_per_person": 1}}
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        assert (await ask(daemon, "!job add one every 1h -- first")).startswith("Added:")
        refused = await ask(daemon, "!job add two every 1h -- second")
        assert "Job not added" in refused
        assert "[limits] jobs_per_person = 1" in refused
        assert (await ask(daemon, "!job add one every 2h -- changed")).startswith("Added:")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("!job add x cron 61 9 * * * -- hi", "Job not added"),
        ("!job add x sometimes 5 -- hi", "must be cron, every or at"),
        ("!job add x every 30m", "Usage"),
        ("!job add x at 2001-01-01T09:00 -- too late", "Job not added"),
        ("!job frobnicate", "Usage"),
    ],
)
async def test_job_add_mistakes_are_explained(daemon: Daemon, command: str, expected: str) -> None:
    assert expected in await ask(daemon, command)
