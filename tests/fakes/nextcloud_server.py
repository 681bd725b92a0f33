"""A fake of Nextcloud's provisioning API on 127.0.0.1 that answers with the responses
captured from a real Nextcloud 31 (tests/fixtures/nextcloud/ocs): their statuses,
content types and bodies byte for byte.

The set-up behind them (tests/fixtures/nextcloud/README.md): the account ``talkbot-svc``
is group admin of ``staff`` and ``talkbot-admins``; alice is in both (and in unmanaged
``finance``), bob in ``staff``, carol in none.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiohttp import web

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nextcloud" / "ocs"
ACCOUNT = "talkbot-svc"
APP_PASSWORD = "Xk2pQ-7fWmz-LrT4e-9cBvN-hY3sA"


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


class FakeNextcloud:
    """``/ocs/v2.php/cloud/user`` and ``/ocs/v2.php/cloud/users/<uid>/groups``."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.down = False  # True: every request gets 503, as behind a proxy with no backend
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeNextcloud:
        app = web.Application()
        app.router.add_get("/ocs/v2.php/cloud/user", self._account)
        app.router.add_get("/ocs/v2.php/cloud/users/{uid}/groups", self._groups)
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

    def _refused(self, request: web.Request) -> web.Response | None:
        """What the server answers before looking at the path, as captured."""
        self.requests.append(request)
        if self.down:
            return web.Response(status=503, text="Service Unavailable")
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{APP_PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return _answer(captured("07"))  # 401, XML even when JSON was asked for
        if request.headers.get("OCS-APIRequest") != "true":
            return _answer(captured("08"))  # 412 CSRF check failed
        if "application/json" not in request.headers.get("Accept", ""):
            return _answer(captured("09"))  # XML by default
        return None

    async def _account(self, request: web.Request) -> web.Response:
        return self._refused(request) or _answer(captured("10"))

    async def _groups(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        uid = request.match_info["uid"]
        if uid == "alice":
            return _answer(captured("13"))  # staff, talkbot-admins: finance is not managed
        if uid == "carol":
            return _answer(captured("04"))  # 404 / 998: in no managed group
        return _answer(captured("06"))  # 404 / 998: no such user


def _answer(response: Captured) -> web.Response:
    return web.Response(
        status=response.status,
        body=response.body,
        headers={"Content-Type": response.content_type},
    )
