"""Nextcloud's provisioning API (OCS), as the service account of ``[nextcloud] user`` sees it.

The account is an ordinary user made group admin (subadmin) of only the groups talkbot
needs: the least privilege that can read membership. What the server answers is
captured in tests/fixtures/nextcloud/ocs (Nextcloud 31): a subadmin sees only the groups
it manages; a person in none of them gets 404 with OCS status 998, exactly as an unknown
user does; a wrong app password gets 401 with an XML body even when JSON was asked for;
a request without ``OCS-APIRequest: true`` gets 412. Repeated 401s feed Nextcloud's
brute-force throttle, so a 401 is never retried here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.errors import NextcloudAuthError, NextcloudError

TIMEOUT_S = 10.0
# OCS status of "no such user", also for a user outside the account's groups.
OCS_NOT_FOUND = 998


@dataclass(frozen=True)
class ServiceAccount:
    """The account itself: its id and the groups it is group admin of."""

    id: str
    display_name: str
    subadmin_of: tuple[str, ...]


class Provisioning:
    """GETs of the provisioning API with the service account's app password."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        user: str,
        app_password: str,
        *,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._session = session
        self._base = f"{base_url.rstrip('/')}/ocs/v2.php/cloud"
        token = base64.b64encode(f"{user}:{app_password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def account(self) -> ServiceAccount:
        """Who the account is and which groups it manages (what it can see)."""
        data = await self._get("/user")
        if data is None or not isinstance(data.get("id"), str):
            raise NextcloudError("Nextcloud did not say who the account is")
        managed = data.get("subadmin")
        return ServiceAccount(
            id=data["id"],
            display_name=str(data.get("displayname") or data["id"]),
            subadmin_of=tuple(str(g) for g in managed) if isinstance(managed, list) else (),
        )

    async def groups_of(self, uid: str) -> tuple[str, ...] | None:
        """The groups of ``uid`` that the account manages; None when Nextcloud shows it
        none of them (a person outside the managed groups, or no such person)."""
        data = await self._get(f"/users/{quote(uid, safe='')}/groups")
        if data is None:
            return None
        groups = data.get("groups")
        if not isinstance(groups, list):
            raise NextcloudError("Nextcloud's answer has no group list")
        return tuple(str(group) for group in groups)

    async def language_of(self, uid: str) -> str | None:
        """The language ``uid`` chose in Nextcloud ("de", "de_DE"); None when unset or
        when the account may not read their details."""
        data = await self._get(f"/users/{quote(uid, safe='')}")
        language = data.get("language") if data is not None else None
        return language if isinstance(language, str) and language else None

    async def _get(self, path: str) -> dict[str, Any] | None:
        """The OCS ``data`` of a GET; None for "not found" (HTTP 404, OCS 998)."""
        headers = {
            "OCS-APIRequest": "true",
            "Accept": "application/json",
            "Authorization": self._authorization,
        }
        try:
            async with self._session.get(
                f"{self._base}{path}", headers=headers, timeout=self._timeout
            ) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NextcloudError(f"Nextcloud cannot be reached: {type(exc).__name__}") from None
        if status == 401:  # noqa: PLR2004 - HTTP status
            raise NextcloudAuthError(
                "Nextcloud refused the account: check [nextcloud] user and app_password"
            )
        meta, data = _ocs(body)
        if status == 404 and meta.get("statuscode") == OCS_NOT_FOUND:  # noqa: PLR2004
            return None
        if status != 200 or meta.get("status") != "ok":  # noqa: PLR2004
            code = meta.get("statuscode", "?")
            raise NextcloudError(f"Nextcloud answered {status} (OCS status {code})")
        return data if isinstance(data, dict) else {}


def _ocs(body: bytes) -> tuple[dict[str, Any], Any]:
    """``(meta, data)`` of an OCS JSON answer; empty for anything else (an XML page)."""
    try:
        document = json.loads(body)
    except ValueError:
        return {}, None
    ocs = document.get("ocs") if isinstance(document, dict) else None
    if not isinstance(ocs, dict) or not isinstance(ocs.get("meta"), dict):
        return {}, None
    return ocs["meta"], ocs.get("data")
