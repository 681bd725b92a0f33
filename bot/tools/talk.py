"""The ``nc_talk_send`` tool: post a message to a Talk room as the bot (A15)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from bot import replies
from bot.config import TOKEN_PATTERN
from bot.errors import TalkError, TalkOutcomeUnknownError, ToolError
from bot.store import Store
from bot.talk.poster import Poster
from bot.tools import Tool, ToolContext, roles_from

MAX_MESSAGE_CHARS = 32000


class RoomDirectory:
    """Rooms the bot knows: joined ones from Join events, and those the config names."""

    def __init__(self, store: Store, config_rooms: Callable[[], Iterable[str]] = frozenset) -> None:
        self._store = store
        self._config_rooms = config_rooms  # read on each call: !reload may change them

    async def known(self) -> frozenset[str]:
        records = await self._store.list_rooms()
        left = {room.token for room in records if not room.joined}
        joined = {room.token for room in records if room.joined}
        return frozenset(joined | (set(self._config_rooms()) - left))

    async def is_known(self, token: str) -> bool:
        return token in await self.known()


class TalkSendArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    room: str = Field(
        default="",
        max_length=64,
        description="Token of the room to post in; empty for the current room.",
    )
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="The text.")


def target_room(args: TalkSendArgs, ctx: ToolContext) -> str:
    return args.room.strip() or ctx.room


def needs_confirmation(args: TalkSendArgs, ctx: ToolContext) -> bool:
    """An admin posting into another room confirms it; a user's attempt is refused outright."""
    return ctx.role == "admin" and target_room(args, ctx) != ctx.room


async def check_room(room: str, ctx: ToolContext, rooms: RoomDirectory) -> str:
    """The room a user or admin may address from this turn, or ToolError saying why not."""
    if room == ctx.room:
        return room
    if ctx.role != "admin":
        raise ToolError("not allowed: you can only use this room")
    if not TOKEN_PATTERN.match(room) or not await rooms.is_known(room):
        raise ToolError(f"unknown room {room[:64]!r}: the bot is not in a room with that token")
    return room


def make_talk_tools(poster: Poster, rooms: RoomDirectory) -> list[Tool[TalkSendArgs]]:
    async def allowed_room(args: TalkSendArgs, ctx: ToolContext) -> None:
        await check_room(target_room(args, ctx), ctx, rooms)

    async def nc_talk_send(args: TalkSendArgs, ctx: ToolContext) -> str:
        room = await check_room(target_room(args, ctx), ctx, rooms)
        text = args.message.strip()
        if not text:
            raise ToolError("the message is empty")
        try:
            await poster.send_message(room, replies.defuse_mentions(text))
        except TalkOutcomeUnknownError:
            # Talk may have stored it (its throttle holds posts, then accepts them): a
            # second call would post it twice.
            raise ToolError(
                "Talk did not answer in time; the message may have been posted. "
                "Do not send it again."
            ) from None
        except TalkError as exc:
            raise ToolError(f"Talk did not accept the message ({type(exc).__name__})") from None
        return f"sent to room {room}"

    return [
        Tool(
            name="nc_talk_send",
            description=(
                "Post a message to a Talk room as the bot. Users: the current room only. "
                "Admins: any room the bot is in (another room needs the admin's confirmation)."
            ),
            args=TalkSendArgs,
            run=nc_talk_send,
            roles=roles_from("user"),
            egress=True,  # even in this room: the model writes it, not the requester (A03)
            confirm_when=needs_confirmation,
            precheck=allowed_room,
            timeout_s=60,
        )
    ]
