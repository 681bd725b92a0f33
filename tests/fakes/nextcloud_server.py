"""A fake of Nextcloud's provisioning API on 127.0.0.1 that answers like the real Nextcloud
31 whose responses are captured in tests/fixtures/nextcloud/ocs: the same statuses,
content types and bodies.

The set-up behind the captures (tests/fixtures/nextcloud/README.md): the account
``talkbot-svc`` is group admin of ``staff`` and ``talkbot-admins``; alice is in both and
in unmanaged ``finance``, bob in ``staff``, carol in none. Tests may change who is in
which group and people's languages; the answers are then rendered the way the captured
ones are (PHP's JSON encoding, the captured details as the template), and
tests/test_nextcloud.py checks that the captured states render byte for byte.

It runs on its own (``async with FakeNextcloud()``) or inside the fake Talk server
(``FakeTalk(secret, nextcloud=FakeNextcloud())``): a real Nextcloud serves the bot API and
the provisioning API at the same URL, ``[nextcloud] url``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.harness import php_json

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nextcloud" / "ocs"
ACCOUNT = "talkbot-svc"
APP_PASSWORD = "Xk2pQ-7fWmz-LrT4e-9cBvN-hY3sA"
OCS = "/ocs/v2.php/cloud"


@dataclass(frozen=True)
class Captured:
    status: int
    content_type: str
    body: bytes


def captured(stem: str) -> Captured:
    """One captured response: ``NN-name.headers`` (status line, headers) and its body."""
    [headers] = FIXTURES.glob(f"{stem}*.headers")
    lines = headers.read_text().splitlines()
    status = int(lines[0].split()[1])
    content_type = next(
        line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type")
    )
    return Captured(status, content_type, headers.with_suffix(".body").read_bytes())


def ocs_ok(data: Any) -> bytes:
    """An OCS v2 success body, encoded as Nextcloud encodes it."""
    return php_json(
        {"ocs": {"meta": {"status": "ok", "statuscode": 200, "message": "OK"}, "data": data}}
    )


def _details_template(uid: str) -> dict[str, Any]:
    stem = "11" if uid == "bob" else "02"  # the captured details of bob, or of alice
    data: dict[str, Any] = json.loads(captured(stem).body)["ocs"]["data"]
    if uid not in ("alice", "bob"):
        data = {**data, "id": uid, "displayname": uid.title(), "display-name": uid.title()}
        data["email"] = None
    return data


class FakeNextcloud:
    """``cloud/user``, ``cloud/users/<uid>/groups`` and ``cloud/users/<uid>``."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        # Requests answered 401 (each one counts for Nextcloud's brute-force throttle).
        self.refusals = 0
        self.members: dict[str, list[str]] = {
            "alice": ["talkbot-admins", "staff", "finance"],
            "bob": ["staff"],
            "carol": [],
        }
        self.languages: dict[str, str] = {"alice": "en", "bob": "en", "carol": "en"}
        self.managed = ["staff", "talkbot-admins"]  # what talkbot-svc is group admin of
        self.down = False  # True: every request gets 503, as behind a proxy with no backend
        self.delay_s = 0.0  # a slow server: every answer waits this long
        # Request headers a misconfigured proxy in front drops ("OCS-APIRequest", "Accept").
        self.dropped_headers: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def install(self, app: web.Application) -> None:
        app.router.add_get(OCS + "/user", self._account)
        app.router.add_get(OCS + "/users/{uid}/groups", self._groups)
        app.router.add_get(OCS + "/users/{uid}", self._details)

    def asked_about(self, uid: str) -> int:
        return sum(1 for r in self.requests if r.match_info.get("uid") == uid)

    async def __aenter__(self) -> FakeNextcloud:
        app = web.Application()
        self.install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _refused(self, request: web.Request) -> web.Response | None:
        """What the server answers before looking at the path, as captured."""
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{APP_PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            self.refusals += 1
            return _answer(captured("07"))  # 401, XML even when JSON was asked for
        headers = {k: v for k, v in request.headers.items() if k not in self.dropped_headers}
        if headers.get("OCS-APIRequest") != "true":
            return _answer(captured("08"))  # 412 CSRF check failed
        if "application/json" not in headers.get("Accept", ""):
            return _answer(captured("09"))  # XML by default
        return None

    def _visible(self, uid: str) -> list[str]:
        """The groups of ``uid`` a group admin of ``managed`` sees (sorted, as captured)."""
        return sorted(g for g in self.members.get(uid, []) if g in self.managed)

    async def _account(self, request: web.Request) -> web.Response:
        return await self._refused(request) or _answer(captured("10"))

    async def _groups(self, request: web.Request) -> web.Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        uid = request.match_info["uid"]
        if uid not in self.members:
            return _answer(captured("06"))  # 404 / 998: no such user
        if not self._visible(uid):
            return _answer(captured("04"))  # 404 / 998: in no managed group, the same answer
        return _json(ocs_ok({"groups": self._visible(uid)}))

    async def _details(self, request: web.Request) -> web.Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        uid = request.match_info["uid"]
        if not self._visible(uid):
            # Not captured for a person outside the managed groups; the bot never asks
            # (bot/directory.py), so the fake answers as for an unknown user.
            return _answer(captured("06"))
        # The details list every group of the person, managed or not (capture 15).
        data = {
            **_details_template(uid),
            "groups": self.members[uid],
            "language": self.languages.get(uid, "en"),
        }
        return _json(ocs_ok(data))


def _json(body: bytes) -> web.Response:
    return web.Response(
        status=200, body=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )


def _answer(response: Captured) -> web.Response:
    return web.Response(
        status=response.status,
        body=response.body,
        headers={"Content-Type": response.content_type},
    )
