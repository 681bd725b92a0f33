"""Shared fixtures: the fakes on 127.0.0.1 and a running daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import ManualClock
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import API_KEY, SECRET, Daemon, running_daemon

# A real PostgreSQL for the store's tests: postgres_server, postgres_url (tests/pgserver.py).
pytest_plugins = ["tests.pgserver"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run long soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
async def talk() -> AsyncIterator[FakeTalk]:
    async with FakeTalk(SECRET) as server:
        yield server


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def daemon(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM, clock: ManualClock
) -> AsyncIterator[Daemon]:
    async with running_daemon(tmp_path, talk, llm, clock=clock) as running:
        yield running
