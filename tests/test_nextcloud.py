"""Nextcloud's provisioning API as the service account sees it (#16), against a fake that
answers with the responses captured from a real Nextcloud 31 (tests/fakes/nextcloud_server.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.config import settings_from_mapping
from bot.errors import ConfigError, NextcloudAuthError, NextcloudError
from bot.nextcloud import Provisioning
from tests.fakes.llm_server import FakeLLM
from tests.fakes.nextcloud_server import ACCOUNT, APP_PASSWORD, FakeNextcloud, captured
from tests.fakes.talk_server import FakeTalk
from tests.harness import SECRET
from tests.test_cli import config_data, run_cli
from tests.test_ops_e2e import write_config


@pytest.fixture
async def nextcloud() -> AsyncIterator[FakeNextcloud]:
    async with FakeNextcloud() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def api(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud, password: str = APP_PASSWORD
) -> Provisioning:
    return Provisioning(session, nextcloud.url, ACCOUNT, password, timeout_s=5)


async def test_the_account_sees_only_the_groups_it_manages(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud
) -> None:
    account = await api(session, nextcloud).account()
    assert (account.id, account.subadmin_of) == (ACCOUNT, ("staff", "talkbot-admins"))
    # alice is in finance too; the account does not manage it, so it is not shown.
    assert await api(session, nextcloud).groups_of("alice") == ("staff", "talkbot-admins")
    sent = nextcloud.requests[-1]
    assert sent.headers["OCS-APIRequest"] == "true"  # without it: 412
    assert "application/json" in sent.headers["Accept"]  # without it: XML


async def test_a_person_outside_the_managed_groups_is_the_same_as_nobody(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud
) -> None:
    assert await api(session, nextcloud).groups_of("carol") is None  # 404 / OCS 998
    assert await api(session, nextcloud).groups_of("nobody-here") is None  # the same answer


async def test_a_wrong_app_password_is_refused_once_and_never_retried(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud
) -> None:
    with pytest.raises(NextcloudAuthError, match="refused the account"):
        await api(session, nextcloud, password="wrong").groups_of("alice")
    assert len(nextcloud.requests) == 1  # repeated 401s feed the brute-force throttle


@pytest.mark.parametrize(
    ("dropped", "status"), [("OCS-APIRequest", "412"), ("Accept", "200 (OCS status ?)")]
)
async def test_a_proxy_that_drops_the_ocs_headers_is_an_error_not_an_answer(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud, dropped: str, status: str
) -> None:
    """Without OCS-APIRequest Nextcloud answers 412 (no OCS body); without Accept, XML: both
    are errors to report, never "no groups" (which would quietly lower roles)."""
    nextcloud.dropped_headers = {dropped}
    with pytest.raises(NextcloudError, match=f"answered {re.escape(status)}"):
        await api(session, nextcloud).groups_of("alice")


async def test_nextcloud_down_is_an_error_not_an_answer(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud
) -> None:
    nextcloud.down = True
    with pytest.raises(NextcloudError, match="answered 503"):
        await api(session, nextcloud).groups_of("alice")
    unreachable = Provisioning(session, "http://127.0.0.1:1", ACCOUNT, APP_PASSWORD)
    with pytest.raises(NextcloudError, match="cannot be reached"):
        await unreachable.account()


def test_the_app_password_is_a_secret_and_its_file_out_of_the_tools_reach(
    tmp_path: Path,
) -> None:
    (tmp_path / "app_password").write_text(APP_PASSWORD + "\n")
    nextcloud = {
        "url": "https://c.example",
        "bot_secret": SECRET,
        "user": ACCOUNT,
        "app_password_file": str(tmp_path / "app_password"),
    }
    settings = settings_from_mapping({"nextcloud": nextcloud}, {})
    assert settings.nextcloud.app_password.get_secret_value() == APP_PASSWORD
    assert APP_PASSWORD in settings.secret_values()  # the log redactor's
    assert tmp_path / "app_password" in settings.source_files
    assert APP_PASSWORD not in repr(settings)


def test_the_account_needs_both_user_and_app_password() -> None:
    with pytest.raises(ConfigError, match="user and app_password"):
        settings_from_mapping(
            {"nextcloud": {"url": "https://c.example", "bot_secret": SECRET, "user": ACCOUNT}},
            {},
        )


async def test_check_tests_the_account_and_names_the_groups_it_sees(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    (tmp_path / "app_password").write_text(APP_PASSWORD + "\n")
    data = config_data(tmp_path, talk, llm)
    data["nextcloud"].update(
        url=nextcloud.url, user=ACCOUNT, app_password_file=str(tmp_path / "app_password")
    )
    code, out, err = await run_cli("check", "--config", str(write_config(tmp_path, data)))
    assert code == 0
    assert (
        f"nextcloud account: {ACCOUNT}: accepted; sees the groups it manages: staff, talkbot-admins"
    ) in out
    assert APP_PASSWORD not in out + err
    (tmp_path / "app_password").write_text("wrong-app-password\n")
    code, out, err = await run_cli("check", "--config", str(write_config(tmp_path, data)))
    assert code == 0  # reported, like an unreachable model: Nextcloud may be fixed later
    assert f"nextcloud account: {ACCOUNT}: Nextcloud refused the account" in out
    assert "wrong-app-password" not in out + err


async def test_the_fake_renders_the_captured_states_byte_for_byte(
    session: aiohttp.ClientSession, nextcloud: FakeNextcloud
) -> None:
    """The fake's answers for states tests change are rendered, not replayed: in the
    states that were captured they are the captured bytes (13: alice's groups as a group
    admin sees them; 02 and 11: details; 15: alice after choosing German and joining
    unmanaged finance, which the details show)."""
    headers = {
        "OCS-APIRequest": "true",
        "Accept": "application/json",
        "Authorization": api(session, nextcloud)._authorization,
    }

    async def body(path: str) -> tuple[int, bytes]:
        async with session.get(f"{nextcloud.url}/ocs/v2.php/cloud{path}", headers=headers) as r:
            return r.status, await r.read()

    nextcloud.members["alice"] = ["talkbot-admins", "staff"]
    assert await body("/users/alice") == (200, captured("02").body)
    assert await body("/users/bob") == (200, captured("11").body)
    nextcloud.members["alice"] = ["talkbot-admins", "staff", "finance"]
    assert await body("/users/alice/groups") == (200, captured("13").body)
    nextcloud.languages["alice"] = "de"
    assert await body("/users/alice") == (200, captured("15").body)
    assert await body("/users/carol/groups") == (404, captured("04").body)
    assert await api(session, nextcloud).language_of("alice") == "de"


async def test_check_names_mapped_groups_the_account_cannot_see(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, nextcloud: FakeNextcloud
) -> None:
    """N02: finance is mapped, but the account is not its group admin: check says so."""
    data = config_data(tmp_path, talk, llm)
    data["nextcloud"].update(url=nextcloud.url, user=ACCOUNT, app_password=APP_PASSWORD)
    data["access"]["groups"] = {"admin": ["talkbot-admins", "finance"], "user": ["staff"]}
    code, out, _err = await run_cli("check", "--config", str(write_config(tmp_path, data)))
    assert code == 0
    assert (
        "mapped in [access.groups] but not visible, so they grant nothing: finance"
        " (make talkbot-svc their group admin)"
    ) in out


def test_n01_mapping_groups_needs_the_account() -> None:
    with pytest.raises(ConfigError, match=r"access\.groups: maps Nextcloud groups, but no account"):
        settings_from_mapping(
            {
                "nextcloud": {"url": "https://c.example", "bot_secret": SECRET},
                "access": {"groups": {"user": ["staff"]}},
            },
            {},
        )
