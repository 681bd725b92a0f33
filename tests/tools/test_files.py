"""file_list / file_read / file_write: nothing outside the root, ever (F01-F04, A01)."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bot.config import FilesToolSettings
from bot.errors import ToolError
from bot.tools import Toolbox
from bot.tools.filearea import FileArea
from bot.tools.files import ListArgs, ReadArgs, WriteArgs, make_file_tools
from tests.tools import context

SECRET = "outside secret, never to be read or changed"


@dataclass
class Layout:
    root: Path
    outside: Path  # a sibling folder whose name starts with the root's: root-evil
    secret: Path
    area: FileArea

    def outside_state(self) -> dict[str, bytes]:
        return {
            str(path.relative_to(self.outside)): path.read_bytes()
            for path in sorted(self.outside.rglob("*"))
            if path.is_file()
        }


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    root = tmp_path / "root"
    outside = tmp_path / "root-evil"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text(SECRET)
    (root / "notes").mkdir()
    (root / "notes" / "todo.md").write_text("- buy milk\n")
    (root / "readme.txt").write_text("hello from the root\n")
    area = FileArea(FilesToolSettings(root=root, max_read_bytes=1000, max_write_bytes=100))
    return Layout(root, outside, secret, area)


admin = partial(context.ctx, "admin", uid="root", room="adminroom1")


def refusal(call: Any, *args: Any) -> str:
    with pytest.raises(ToolError) as caught:
        call(*args)
    return str(caught.value)


# -- ordinary use ------------------------------------------------------------------------


def test_list_read_and_write_inside_the_root(layout: Layout) -> None:
    assert layout.area.list_folder("") == (
        "(the files folder): 2 entries\nnotes/\nreadme.txt (20 bytes)"
    )
    assert layout.area.read_file("notes/todo.md") == "- buy milk\n"
    assert layout.area.write_file("notes/todo.md", "- buy bread\n") == (
        "wrote 12 bytes to notes/todo.md"
    )
    assert (layout.root / "notes" / "todo.md").read_text() == "- buy bread\n"


def test_write_creates_missing_folders_inside_the_root(layout: Layout) -> None:
    layout.area.write_file("2026/11/plan.md", "plan")
    assert (layout.root / "2026" / "11" / "plan.md").read_text() == "plan"


def test_missing_root_names_the_key_and_the_path(tmp_path: Path) -> None:
    root = tmp_path / "nope"
    area = FileArea(FilesToolSettings(root=root))
    expected = f"[tools.files] root {root} does not exist; an admin has to create it"
    assert refusal(area.list_folder, "") == expected
    assert refusal(area.write_file, "notes.txt", "hello") == expected
    assert not root.exists()


# -- F01: names that try to leave --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../root-evil/secret.txt", "'..' is not allowed"),
        ("notes/../../root-evil/secret.txt", "'..' is not allowed"),
        ("/etc/passwd", "not an absolute one"),
        ("//server/share/x", "not an absolute one"),
        ("~/secret.txt", "'~' is not allowed"),
        ("~root/.ssh/id_rsa", "'~' is not allowed"),
        ("notes\x00/../x", "NUL character"),
        ("%2e%2e/root-evil/secret.txt", "percent-escapes"),
        ("..%2froot-evil%2fsecret.txt", "percent-escapes"),
        ("..\\root-evil\\secret.txt", "backslash"),
        ("notes/\nx", "control character"),
        (".env", "hidden names"),
        ("notes/.git/config", "hidden names"),
        ("/".join(["d"] * 40), "deeper than 32 folders"),
    ],
)
def test_f01_escaping_names_are_refused_by_every_tool(
    layout: Layout, path: str, reason: str
) -> None:
    for call, args in (
        (layout.area.list_folder, (path,)),
        (layout.area.read_file, (path,)),
        (layout.area.write_file, (path, "pwned")),
    ):
        assert reason in refusal(call, *args)
    assert layout.outside_state() == {"secret.txt": SECRET.encode()}


def test_f01_sibling_with_the_same_prefix_is_outside(layout: Layout) -> None:
    # A startswith() check would take /…/root-evil for a part of /…/root.
    (layout.root / "evil").symlink_to(layout.outside)
    assert refusal(layout.area.read_file, "evil/secret.txt") == (
        "refused: evil/secret.txt leads outside the files folder"
    )
    assert "leads outside" in refusal(layout.area.write_file, "evil/secret.txt", "pwned")
    assert "leads outside" in refusal(layout.area.list_folder, "evil")
    assert layout.secret.read_text() == SECRET


# -- F02: links ------------------------------------------------------------------------------


def test_f02_a_link_to_a_file_outside_is_refused(layout: Layout) -> None:
    (layout.root / "link.txt").symlink_to(layout.secret)
    assert "leads outside" in refusal(layout.area.read_file, "link.txt")
    assert "leads outside" in refusal(layout.area.write_file, "link.txt", "pwned")
    assert layout.secret.read_text() == SECRET
    assert (layout.root / "link.txt").is_symlink()


def test_f02_links_inside_the_root_are_not_followed_either(layout: Layout) -> None:
    (layout.root / "alias.txt").symlink_to("readme.txt")
    (layout.root / "shortcut").symlink_to("notes")
    assert refusal(layout.area.read_file, "alias.txt") == "refused: alias.txt is a symbolic link"
    assert refusal(layout.area.read_file, "shortcut/todo.md") == (
        "refused: shortcut is a symbolic link; links are not followed"
    )
    assert "exists and is not a regular file" in refusal(layout.area.write_file, "alias.txt", "x")
    assert (layout.root / "readme.txt").read_text() == "hello from the root\n"


def _flip_links(layout: Layout, flips: int, started: threading.Event) -> None:
    """Swap links under the writer's feet: a folder link between inside and outside, the
    target file between a regular file and a link to the secret, a real folder and a link."""
    root = layout.root
    (root / "real").mkdir()
    (root / "box").mkdir()
    # "sub" is a link before the writer starts: else its first write could make it a real
    # folder, which no link can replace (the test's own race, not the file area's).
    (root / "sub").symlink_to(root / "real")
    started.set()
    for flip in range(flips):
        spare = root / "spare-link"
        spare.symlink_to(layout.outside if flip % 2 else root / "real")
        os.replace(spare, root / "sub")
        if flip % 2:
            spare.symlink_to(layout.secret)
            os.replace(spare, root / "victim.txt")
        else:
            (root / "spare-file").write_text("inside")
            os.replace(root / "spare-file", root / "victim.txt")
        if flip % 4 == 0:
            _swap_folder_for_link(root, layout.outside)


def _swap_folder_for_link(root: Path, outside: Path) -> None:
    """The non-atomic dance of a real attacker: folder away, link in, link out, folder back."""
    steps: list[Callable[[], None]] = [
        lambda: os.rename(root / "box", root / "box-aside"),
        lambda: (root / "box").symlink_to(outside),
        lambda: os.unlink(root / "box"),
        lambda: os.rename(root / "box-aside", root / "box"),
    ]
    for step in steps:
        try:
            step()
        except OSError:
            continue  # the writer made "box" meanwhile: it stays inside the root, fine


def test_f02_a_racing_link_swap_changes_nothing_outside(layout: Layout) -> None:
    before = layout.outside_state()
    started = threading.Event()
    flipper = threading.Thread(target=_flip_links, args=(layout, 2000, started))
    flipper.start()
    assert started.wait(5)
    wrote = refused = 0
    read_back: set[str] = set()
    while flipper.is_alive():
        for path in ("victim.txt", "sub/secret.txt", "sub/new.txt", "box/new.txt"):
            try:
                layout.area.write_file(path, "PWNED")
                wrote += 1
            except ToolError:
                refused += 1
            with contextlib.suppress(ToolError):
                read_back.add(layout.area.read_file(path))
    flipper.join()
    assert layout.outside_state() == before  # F02: nothing outside changed
    assert SECRET not in read_back  # and nothing outside was read
    assert wrote > 0  # the race really ran against successful writes
    assert refused > 0


# -- F03: special files, caps, atomic writes -------------------------------------------------


def test_f03_a_fifo_is_refused_quickly_instead_of_hanging(layout: Layout) -> None:
    os.mkfifo(layout.root / "pipe")
    outcome: list[str] = []

    def read() -> None:
        outcome.append(refusal(layout.area.read_file, "pipe"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "reading a FIFO hung"
    assert outcome == ["refused: pipe is not a regular file"]
    assert refusal(layout.area.write_file, "pipe", "x") == (
        "refused: pipe exists and is not a regular file"
    )
    assert stat.S_ISFIFO(os.stat(layout.root / "pipe").st_mode)


def test_f03_a_folder_cannot_be_read_or_overwritten(layout: Layout) -> None:
    assert refusal(layout.area.read_file, "notes") == "refused: notes is not a regular file"
    assert "not a regular file" in refusal(layout.area.write_file, "notes", "x")
    assert (layout.root / "notes" / "todo.md").exists()


def test_f03_content_over_the_cap_is_refused_and_the_file_kept(layout: Layout) -> None:
    assert refusal(layout.area.write_file, "readme.txt", "x" * 101) == (
        "refused: 101 bytes is more than the limit of 100"
    )
    assert (layout.root / "readme.txt").read_text() == "hello from the root\n"


def test_f03_a_large_file_is_read_up_to_the_cap(layout: Layout) -> None:
    (layout.root / "big.txt").write_text("a" * 5000)
    text = layout.area.read_file("big.txt")
    assert text == "a" * 1000 + "\n[cut at 1000 of 5000 bytes]"


def test_f03_binary_files_are_not_read(layout: Layout) -> None:
    (layout.root / "image.png").write_bytes(b"\x89PNG\x00\x00")
    assert refusal(layout.area.read_file, "image.png") == (
        "image.png is a binary file; only text files are read"
    )


def test_f03_writes_are_atomic_and_leave_no_temp_files(layout: Layout) -> None:
    os.chmod(layout.root / "readme.txt", 0o644)
    layout.area.write_file("readme.txt", "new text")
    layout.area.write_file("fresh.txt", "brand new")
    assert sorted(os.listdir(layout.root)) == ["fresh.txt", "notes", "readme.txt"]
    assert (layout.root / "readme.txt").read_text() == "new text"
    assert stat.S_IMODE(os.stat(layout.root / "readme.txt").st_mode) == 0o644  # kept
    assert stat.S_IMODE(os.stat(layout.root / "fresh.txt").st_mode) == 0o600  # new: private


# -- F04: listings ------------------------------------------------------------------------------


def test_f04_listing_hides_dotfiles_and_does_not_follow_links(layout: Layout) -> None:
    (layout.root / ".env").write_text("API_KEY=secret")
    (layout.root / ".git").mkdir()
    (layout.root / "out").symlink_to(layout.outside)
    os.mkfifo(layout.root / "pipe")
    listing = layout.area.list_folder("")
    assert listing.splitlines() == [
        "(the files folder): 4 entries",
        "notes/",
        "out (symbolic link, not followed)",
        "pipe (special file, not readable)",
        "readme.txt (20 bytes)",
    ]
    assert ".env" not in listing
    assert ".git" not in listing
    assert "secret.txt" not in listing
    assert "out (symbolic link, not followed)" in listing
    assert "leads outside" in refusal(layout.area.list_folder, "out")


def test_f04_listing_is_capped(layout: Layout) -> None:
    many = layout.root / "many"
    many.mkdir()
    for number in range(250):
        (many / f"f{number:03}.txt").write_text("x")
    lines = layout.area.list_folder("many").splitlines()
    assert lines[0] == "many: 250 entries"
    assert len(lines) == 1 + 200 + 1
    assert lines[1] == "f000.txt (1 bytes)"
    assert lines[-1] == "[and 50 more not shown]"


# -- A01: who may use them -----------------------------------------------------------------------


@pytest.fixture
def box(layout: Layout) -> Toolbox:
    return Toolbox(make_file_tools(layout.area.settings))


@pytest.mark.parametrize("role", ["guest", "user"])
async def test_a01_file_tools_are_neither_offered_nor_run_for_non_admins(
    layout: Layout, box: Toolbox, role: Any
) -> None:
    assert box.specs_for(role) == []
    ctx = context.ctx(role, uid="bob")
    for name, args in (
        ("file_list", ListArgs()),
        ("file_read", ReadArgs(path="readme.txt")),
        ("file_write", WriteArgs(path="readme.txt", content="pwned")),
    ):
        result = await box.execute(name, args, ctx, confirmed=True)
        assert (result.ok, result.text) == (False, "not allowed: this tool is not available to you")
    assert (layout.root / "readme.txt").read_text() == "hello from the root\n"


async def test_a01_file_write_needs_a_confirmation_even_for_admins(
    layout: Layout, box: Toolbox
) -> None:
    names = [spec["function"]["name"] for spec in box.specs_for("admin")]
    assert names == ["file_list", "file_read", "file_write"]
    args = WriteArgs(path="readme.txt", content="changed")
    unconfirmed = await box.execute("file_write", args, admin())
    assert not unconfirmed.ok
    assert (layout.root / "readme.txt").read_text() == "hello from the root\n"
    confirmed = await box.execute("file_write", args, admin(), confirmed=True)
    assert (confirmed.ok, confirmed.text) == (True, "wrote 7 bytes to readme.txt")
    assert (layout.root / "readme.txt").read_text() == "changed"
    read = await box.execute("file_read", ReadArgs(path="readme.txt"), admin())
    assert (read.ok, read.text) == (True, "changed")
