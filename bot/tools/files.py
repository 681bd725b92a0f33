"""The file tools: list, read and write inside ``[tools.files] root`` and nowhere else
(the containment is filearea.py's), and whether a root can and may serve them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.config import FilesToolSettings
from bot.tools import Tool, ToolContext, roles_from
from bot.tools.filearea import MAX_PATH_CHARS, FileArea

FILE_THREADS = 4  # file tool calls running at once; more wait for a thread

FILE_TOOLS = ("file_list", "file_read", "file_write")


def root_problem(settings: FilesToolSettings) -> str | None:
    """Why the file tools cannot work in ``root`` (missing, not a folder), or None.

    The tools stay offered when it is missing: an admin may create the folder while the
    daemon runs, and each call then names the key and the path.
    """
    root = Path(settings.root)
    if not root.exists():
        return f"{root} does not exist: {', '.join(FILE_TOOLS)} fail until an admin creates it"
    if not root.is_dir():
        return f"{root} is not a folder: {', '.join(FILE_TOOLS)} cannot work"
    return None


# Folders whose contents are the system's or a person's: never a root for the model.
_SYSTEM_ROOTS = (Path("/"), Path("/etc"), Path("/root"), Path("/home"))


def root_refusal(root: Path, protected: Sequence[Path]) -> str | None:
    """Why ``root`` must not be the files root, or None (#13.9, I10).

    The model reads whatever the file tools reach and may be told by any text to do so:
    a root holding the config, a secret file or the store would hand them to it.
    """
    where = root.expanduser().resolve()
    if where in _SYSTEM_ROOTS or where == Path.home().resolve() or where.parent == Path("/home"):
        return f"{root} is a system or home folder: give the file tools a folder of their own"
    for path in protected:
        target = path.expanduser().resolve()
        if target == where or where in target.parents:
            return f"{root} holds {path}: the file tools would let the model read it"
    return None


class ListArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = Field(
        default="", max_length=MAX_PATH_CHARS, description="folder relative to the files folder"
    )


class ReadArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = Field(max_length=MAX_PATH_CHARS, description="file relative to the files folder")


class WriteArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = Field(max_length=MAX_PATH_CHARS, description="file relative to the files folder")
    content: str = Field(description="the complete new text of the file")


def make_file_tools(settings: FilesToolSettings) -> list[Tool[Any]]:
    area = FileArea(settings)
    # Threads of their own: a slow disk must not take the loop's default pool, where DNS
    # lookups wait (H01). Idle threads end when a reload drops these tools.
    pool = ThreadPoolExecutor(max_workers=FILE_THREADS, thread_name_prefix="talkbot-files")

    async def blocking(call: Callable[..., str], *args: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(pool, call, *args)

    async def file_list(args: ListArgs, _ctx: ToolContext) -> str:
        return await blocking(area.list_folder, args.path)

    async def file_read(args: ReadArgs, _ctx: ToolContext) -> str:
        return await blocking(area.read_file, args.path)

    async def file_write(args: WriteArgs, _ctx: ToolContext) -> str:
        return await blocking(area.write_file, args.path, args.content)

    admins = roles_from("admin")
    return [
        Tool(
            name="file_list",
            description="List a folder inside the bot's files folder ('' for the top).",
            args=ListArgs,
            run=file_list,
            roles=admins,
            reads_private=True,
            brings_untrusted=True,  # file names in a shared folder are anyone's text
        ),
        Tool(
            name="file_read",
            description="Read a text file inside the bot's files folder.",
            args=ReadArgs,
            run=file_read,
            roles=admins,
            reads_private=True,
            brings_untrusted=True,  # a file may hold anyone's text (a shared folder)
        ),
        Tool(
            name="file_write",
            description="Create or replace a text file inside the bot's files folder.",
            args=WriteArgs,
            run=file_write,
            roles=admins,
            confirm=True,
            egress=True,  # the folder may be shared beyond the room
            changes_state=True,
        ),
    ]
