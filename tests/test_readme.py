"""The README's install-and-run command works as written (on this checkout's venv).

`.ci/run` proves the test command on a fresh machine; this proves the other one, minus the
`pip install` it shares with CI: the config it writes from the example is accepted and
`talkbot serve` comes up ready with the embedded SQLite store.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . && "
READY_WITHIN_S = 30.0


def install_and_run_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install and run", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert match is not None, "no command under 'Install and run'"
    return match.group(1).strip()


async def test_the_readme_install_and_run_command_starts_a_ready_daemon(tmp_path: Path) -> None:
    command = install_and_run_command()
    assert command.startswith(INSTALL)  # the install part is what .ci/run does already
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command.removeprefix(INSTALL),
        cwd=tmp_path,
        env={**os.environ, "TALKBOT_SERVER__PORT": str(port)},  # a free port, not 8585
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        ready = await wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert ready, err.decode()
    assert (tmp_path / "talkbot.sqlite3").exists()
    assert "change-me" not in (tmp_path / "talkbot.toml").read_text()


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> bool:
    deadline = asyncio.get_running_loop().time() + READY_WITHIN_S
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline and proc.returncode is None:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    return False
