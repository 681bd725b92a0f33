"""The files root as a sandbox: paths checked, then opened inside the root and nowhere else.

Containment is structural: every path is opened component by component from a descriptor
of the root with ``O_NOFOLLOW``, so a symbolic link is never followed, even one swapped
in between a check and the open (F02). A real-path check comes first only to explain a
refusal. Names starting with a dot are hidden and refused; FIFOs and devices are refused
after an ``O_NONBLOCK`` open, so nothing hangs (F03); writes are atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from bot.config import FilesToolSettings
from bot.errors import ToolError

log = structlog.get_logger(__name__)

MAX_PATH_CHARS = 1024
MAX_DEPTH = 32
MAX_NAME_BYTES = 255
MAX_ENTRIES = 200  # shown by file_list
MAX_SCANNED = 10_000  # read from one folder before giving up counting
DIR_MODE = 0o750
FILE_MODE = 0o600
READ_CHUNK = 64 * 1024
PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

ROOT_KEY = "[tools.files] root"  # named in every error about the root: where to fix it

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(raw: str) -> tuple[str, ...]:
    """The components of a path relative to the root; ToolError for every escape (F01)."""
    text = raw.strip()
    _check_text(text)
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if len(parts) > MAX_DEPTH:
        raise ToolError(f"refused: the path is deeper than {MAX_DEPTH} folders")
    for part in parts:
        _check_name(part)
    return parts


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ToolError("refused: the path contains a NUL character")
    if len(text) > MAX_PATH_CHARS:
        raise ToolError(f"refused: the path is longer than {MAX_PATH_CHARS} characters")
    if text.startswith(("/", "\\")):
        raise ToolError("refused: give a path relative to the files folder, not an absolute one")
    if text.startswith("~"):
        raise ToolError("refused: '~' is not allowed; give a path relative to the files folder")
    if "\\" in text or CONTROL.search(text):
        raise ToolError("refused: the path contains a backslash or a control character")
    if PERCENT_ESCAPE.search(text):
        raise ToolError("refused: percent-escapes like %2e are not allowed in paths")


def _check_name(part: str) -> None:
    if part == "..":
        raise ToolError("refused: '..' is not allowed; the path must stay inside the folder")
    if part.startswith("."):
        raise ToolError("refused: hidden names (starting with '.') are not available")
    if len(part.encode()) > MAX_NAME_BYTES:
        raise ToolError("refused: a name in the path is too long")


def shown(parts: tuple[str, ...]) -> str:
    return "/".join(parts) or "(the files folder)"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "folder" | "file" | "link" | "other"
    size: int = 0

    def line(self) -> str:
        if self.kind == "folder":
            return f"{self.name}/"
        if self.kind == "file":
            return f"{self.name} ({self.size} bytes)"
        if self.kind == "link":
            return f"{self.name} (symbolic link, not followed)"
        return f"{self.name} (special file, not readable)"


def _entry(item: os.DirEntry[str]) -> Entry:
    if item.is_symlink():
        return Entry(item.name, "link")
    if item.is_dir(follow_symlinks=False):
        return Entry(item.name, "folder")
    if item.is_file(follow_symlinks=False):
        return Entry(item.name, "file", item.stat(follow_symlinks=False).st_size)
    return Entry(item.name, "other")


class FileArea:
    """The files root; every method is blocking and meant for ``asyncio.to_thread``."""

    def __init__(self, settings: FilesToolSettings) -> None:
        self.settings = settings
        self.root = Path(settings.root)

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        # The root itself may be a link: it is the admin's configuration, not input.
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            missing = f"{ROOT_KEY} {self.root} does not exist; an admin has to create it"
            raise ToolError(missing) from None
        except OSError as exc:
            raise ToolError(f"{ROOT_KEY} {self.root} cannot be opened: {exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _explain_escape(self, parts: tuple[str, ...]) -> None:
        """Refuse early, with a reason, a path whose real location is outside the root."""
        try:
            root = os.path.realpath(self.root)
            target = os.path.realpath(os.path.join(root, *parts))
        except OSError:
            return  # a link changed while being read: the descriptor walk decides
        if os.path.commonpath([root, target]) != root:
            raise ToolError(f"refused: {shown(parts)} leads outside the files folder")

    @contextlib.contextmanager
    def _folder(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder at ``parts``, walked one component at a time."""
        self._explain_escape(parts)
        with self._root_fd() as root_fd:
            fd = os.dup(root_fd)
            try:
                for depth, part in enumerate(parts):
                    child = self._open_child(fd, part, parts[: depth + 1], create=create)
                    os.close(fd)
                    fd = child
                yield fd
            finally:
                os.close(fd)

    def _open_child(self, fd: int, part: str, where: tuple[str, ...], *, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise ToolError(f"{shown(where)} does not exist") from None
        except OSError as exc:
            raise _not_a_folder(fd, where, exc) from None
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile: fine
            os.mkdir(part, DIR_MODE, dir_fd=fd)
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _not_a_folder(fd, where, exc) from None

    # -- the three operations ------------------------------------------------------

    def list_folder(self, raw_path: str) -> str:
        parts = split_path(raw_path)
        with self._folder(parts) as fd:
            entries, total = self._scan(fd)
        more = " (or more)" if total >= MAX_SCANNED else ""
        lines = [f"{shown(parts)}: {total} entries{more}"]
        lines += [entry.line() for entry in entries[:MAX_ENTRIES]]
        if total > MAX_ENTRIES:
            lines.append(f"[and {total - MAX_ENTRIES} more not shown]")
        return "\n".join(lines)

    def _scan(self, fd: int) -> tuple[list[Entry], int]:
        entries: list[Entry] = []
        with os.scandir(fd) as items:
            for item in items:
                if item.name.startswith("."):
                    continue  # dotfiles and our temp files stay hidden (F04)
                entries.append(_entry(item))
                if len(entries) >= MAX_SCANNED:
                    break
        entries.sort(key=lambda entry: (entry.kind != "folder", entry.name.casefold()))
        return entries, len(entries)

    def read_file(self, raw_path: str) -> str:
        parts = split_path(raw_path)
        if not parts:
            raise ToolError("give the path of a file to read")
        limit = self.settings.max_read_bytes
        self._explain_escape(parts)
        with self._folder(parts[:-1]) as folder:
            fd = self._open_regular(folder, parts)
            try:
                size = os.fstat(fd).st_size
                data = _read_up_to(fd, limit)
            finally:
                os.close(fd)
        if b"\x00" in data:
            raise ToolError(f"{shown(parts)} is a binary file; only text files are read")
        text = data.decode("utf-8", errors="replace")
        if size > limit:
            text += f"\n[cut at {limit} of {size} bytes]"
        return text

    def _open_regular(self, folder: int, parts: tuple[str, ...]) -> int:
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
        except FileNotFoundError:
            raise ToolError(f"{shown(parts)} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ToolError(f"refused: {shown(parts)} is a symbolic link") from None
            raise ToolError(f"cannot open {shown(parts)}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ToolError(f"refused: {shown(parts)} is not a regular file")
        return fd

    def write_file(self, raw_path: str, content: str) -> str:
        parts = split_path(raw_path)
        if not parts:
            raise ToolError("give the path of the file to write")
        data = content.encode("utf-8")
        if len(data) > self.settings.max_write_bytes:
            raise ToolError(
                f"refused: {len(data)} bytes is more than the limit of "
                f"{self.settings.max_write_bytes}"
            )
        self._explain_escape(parts)
        with self._folder(parts[:-1], create=True) as folder:
            _replace_atomically(folder, parts, data)
        log.info("files.written", bytes=len(data))
        return f"wrote {len(data)} bytes to {shown(parts)}"


def _not_a_folder(fd: int, where: tuple[str, ...], exc: OSError) -> ToolError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, where[-1]):
        return ToolError(f"refused: {shown(where)} is a symbolic link; links are not followed")
    if exc.errno == errno.ENOTDIR:
        return ToolError(f"{shown(where)} is not a folder")
    return ToolError(f"cannot open {shown(where)}: {exc.strerror}")


def _is_link(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(READ_CHUNK, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _existing_mode(folder: int, parts: tuple[str, ...]) -> int | None:
    """Permission bits of the file being replaced; None when there is none yet."""
    try:
        found = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(found.st_mode):
        raise ToolError(f"refused: {shown(parts)} exists and is not a regular file")
    return stat.S_IMODE(found.st_mode) & 0o777


def _replace_atomically(folder: int, parts: tuple[str, ...], data: bytes) -> None:
    """Temp file (O_EXCL|O_NOFOLLOW, 0600) + fsync + rename: readers see old or new (F03).

    The rename replaces a name, never what a link there points to, so a link swapped in
    after the check above changes nothing outside the root (F02).
    """
    name = parts[-1]
    mode = _existing_mode(folder, parts)
    temp = f".{name[:64]}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temp, _TEMP_FLAGS, FILE_MODE, dir_fd=folder)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if mode is not None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise ToolError(f"cannot write {shown(parts)}: {exc.strerror}") from None
    os.fsync(folder)
