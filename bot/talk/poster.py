"""The port everything that speaks in Talk writes through: the Talk client implements it,
and so does the console's terminal transport (and the metered wrapper around either)."""

from __future__ import annotations

from typing import Protocol


class Poster(Protocol):
    """Where messages and reactions go."""

    async def send_message(
        self,
        token: str,
        message: str,
        *,
        reply_to: int | str | None = None,
        reference_id: str | None = None,
        silent: bool = False,
    ) -> list[str]: ...

    async def react(self, token: str, message_id: int | str, reaction: str) -> None: ...

    async def unreact(self, token: str, message_id: int | str, reaction: str) -> None: ...
