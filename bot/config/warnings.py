"""Config warnings: what starts but is probably not meant (example hosts, half an admin setup)."""

from __future__ import annotations

from urllib.parse import urlsplit

from bot.config.conversation import AccessSettings
from bot.config.settings import Settings


def config_warnings(settings: Settings) -> list[tuple[str, str]]:
    """(field, reason) for what starts but is probably not meant: example host names, half
    an admin setup. The daemon runs all the same; ``check`` prints these, ``serve`` logs them."""
    urls = {
        "nextcloud.url": settings.nextcloud.url,
        "server.public_url": settings.server.public_url,
        "llm.base_url": settings.llm.base_url,
        "tools.web_search.searxng_url": settings.tools.web_search.searxng_url,
    }
    warnings = [
        (field, f"{host} is an example host name from the docs, not a real server")
        for field, url in urls.items()
        if (host := _example_host(url))
    ]
    return warnings + _admin_warnings(settings.access)


def _example_host(url: str) -> str | None:
    """The host of ``url`` if it is under example.com, example.org, ... or .example."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return None
    labels = host.split(".")
    return host if "example" in labels[-2:] else None


def _admin_warnings(access: AccessSettings) -> list[tuple[str, str]]:
    if access.admins and not access.admin_room:
        return [
            (
                "access.admin_room",
                "is empty, so the admins have no room for admin commands: "
                "set the token of a private room with them and the bot",
            )
        ]
    if not access.admins:
        room = f"the admin room {access.admin_room}" if access.admin_room else "admin commands"
        return [("access.admins", f"is empty, so nobody can use {room} or the admin tools")]
    return []
