"""[tools] modules: a deployment's own tools, same role and confirm policy; broken ones fail
at start with one clear config line."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from pathlib import Path

import aiohttp
import pytest

from bot.clock import ManualClock
from bot.config import FilesToolSettings, HttpFetchSettings, ToolsSettings
from bot.errors import ConfigError
from bot.store import Store
from bot.tools import Toolbox
from bot.tools.filearea import FileArea
from bot.tools.plugins import ToolDeps, load_plugin_tools
from bot.tools.web import HttpFetcher
from tests.fakes.llm_server import FakeLLM
from tests.fakes.talk_server import FakeTalk
from tests.harness import dm_event, running_daemon
from tests.tools.context import ctx

_numbers = itertools.count()

GOOD = """
from pydantic import BaseModel
from bot.tools import Tool, ToolContext, roles_from

class Args(BaseModel):
    name: str

def make_tools(deps):
    async def greet(args: Args, ctx: ToolContext) -> str:
        return f"hello {args.name}, it is {deps.clock.now():.0f} in {deps.timezone}"

    async def wipe(args: Args, ctx: ToolContext) -> str:
        return "wiped " + args.name

    return [
        Tool(name="greet", description="Greets.", args=Args, run=greet,
             roles=roles_from("user")),
        Tool(name="wipe", description="Dangerous.", args=Args, run=wipe,
             roles=roles_from("admin"), confirm=True),
    ]
"""


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Writes a module under a fresh name on sys.path; returns its import path."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def write(source: str) -> str:
        name = f"talkplugin_{next(_numbers)}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


@pytest.fixture
async def deps(tmp_path: Path) -> AsyncIterator[ToolDeps]:
    fetcher = HttpFetcher(HttpFetchSettings())
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield ToolDeps(
            http=session,
            fetcher=fetcher,
            files=FileArea(FilesToolSettings(root=tmp_path)),
            clock=ManualClock(1_800_000_000.0),
            timezone="Europe/Berlin",
        )
    await fetcher.aclose()


async def test_module_tools_run_with_their_deps(
    write_module: Callable[[str], str], deps: ToolDeps
) -> None:
    tools = load_plugin_tools([write_module(GOOD)], deps)
    box = Toolbox(tools)
    result = await box.execute("greet", box.validate("greet", '{"name": "Ada"}'), ctx())
    assert (result.ok, result.text) == (True, "hello Ada, it is 1800000000 in Europe/Berlin")


async def test_a01_module_tools_get_the_same_role_and_confirm_policy(
    write_module: Callable[[str], str], deps: ToolDeps
) -> None:
    box = Toolbox(load_plugin_tools([write_module(GOOD)], deps))
    assert [s["function"]["name"] for s in box.specs_for("user")] == ["greet"]
    args = box.validate("wipe", '{"name": "db"}')
    as_user = await box.execute("wipe", args, ctx("user"), confirmed=True)
    assert (as_user.ok, as_user.text) == (False, "not allowed: this tool is not available to you")
    unconfirmed = await box.execute("wipe", args, ctx("admin"))
    assert not unconfirmed.ok
    assert (await box.execute("wipe", args, ctx("admin"), confirmed=True)).text == "wiped db"


async def test_tools_policy_overrides_apply_to_module_tools(
    write_module: Callable[[str], str], deps: ToolDeps
) -> None:
    settings = ToolsSettings.model_validate(
        {"greet": {"roles": ["admin"], "confirm": True}, "wipe": {"enabled": False}}
    )
    box = Toolbox(load_plugin_tools([write_module(GOOD)], deps), settings)
    assert box.names == ("greet",)
    assert box.specs_for("user") == []
    greet = box.get("greet")
    assert greet is not None
    assert greet.confirm


def test_deps_offer_no_settings_and_no_secrets() -> None:
    assert [f.name for f in fields(ToolDeps)] == ["http", "fetcher", "files", "clock", "timezone"]


BROKEN = {
    "syntax": ("def make_tools(deps) ->:\n", "import failed: SyntaxError"),
    "raises": ("raise RuntimeError('no database')\n", "import failed: RuntimeError: no database"),
    "missing_dep": ("import talkbot_not_installed_xyz\n", "import failed: No module named"),
    "no_factory": ("TOOLS = []\n", "has no make_tools(deps) function"),
    "factory_fails": (
        "def make_tools(deps):\n    raise KeyError('TOKEN')\n",
        "make_tools failed: KeyError: 'TOKEN'",
    ),
    "not_a_list": ("def make_tools(deps):\n    return None\n", "must return a list"),
    "not_tools": ("def make_tools(deps):\n    return ['x']\n", "returned str, not a Tool"),
    "clash": (
        GOOD.replace('name="greet"', 'name="http_fetch"'),
        "tool 'http_fetch' is already declared",
    ),
    "bad_name": (GOOD.replace('name="greet"', 'name="greet me"'), "tool name 'greet me' must"),
    "kind_not_a_bool": (  # a kind the gate reads must be exactly True or False (#13)
        GOOD.replace('roles=roles_from("user")),', 'roles=roles_from("user"), egress="yes"),'),
        "greet: egress must be True or False",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_broken_module_is_one_clear_config_problem(
    write_module: Callable[[str], str], deps: ToolDeps, case: str
) -> None:
    source, reason = BROKEN[case]
    module = write_module(source)
    with pytest.raises(ConfigError) as caught:
        load_plugin_tools([module], deps, taken=["http_fetch", "file_read"])
    ((field, problem),) = caught.value.problems
    assert field == "tools.modules"
    assert problem.startswith(f"{module}: ")
    assert reason in problem
    assert "\n" not in caught.value.one_line()


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("talkbot_no_such_module", "module not found (is it installed?)"),
        ("../etc/passwd", "not a Python module path like mycorp.talktools"),
        ("os.path; import x", "not a Python module path like mycorp.talktools"),
    ],
)
async def test_a_missing_or_malformed_module_path_is_named(
    deps: ToolDeps, module: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_plugin_tools([module], deps)
    assert caught.value.one_line() == f"invalid config: tools.modules: {module}: {reason}"


async def test_the_same_tool_from_two_modules_is_refused(
    write_module: Callable[[str], str], deps: ToolDeps
) -> None:
    first, second = write_module(GOOD), write_module(GOOD)
    with pytest.raises(ConfigError) as caught:
        load_plugin_tools([first, second], deps)
    assert caught.value.problems == [
        ("tools.modules", f"{second}: tool 'greet' is already declared")
    ]


async def test_the_daemon_refuses_to_start_with_a_broken_module(
    tmp_path: Path, talk: FakeTalk, llm: FakeLLM
) -> None:
    extra = {"tools": {"modules": ["talkbot_no_such_module"]}}
    with pytest.raises(ConfigError) as caught:
        async with running_daemon(tmp_path, talk, llm, extra):
            pytest.fail("the daemon started")
    assert caught.value.one_line() == (
        "invalid config: tools.modules: talkbot_no_such_module: module not found (is it installed?)"
    )
    # What was opened before the module failed closed again: the store's lock is free.
    store = Store.open(tmp_path / "talkbot.sqlite3", ManualClock())
    await store.close()


async def test_a_module_tool_is_offered_and_run_by_the_daemon(
    tmp_path: Path,
    talk: FakeTalk,
    llm: FakeLLM,
    write_module: Callable[[str], str],
) -> None:
    extra = {"tools": {"modules": [write_module(GOOD)]}}
    async with running_daemon(tmp_path, talk, llm, extra) as daemon:
        llm.call("greet", {"name": "Alice"})
        llm.call("wipe", {"name": "everything"})  # admin-only: refused for a user
        llm.reply("done")
        assert await daemon.say(dm_event("say hi")) == ["done"]
    offered = llm.requests[0].tool_names
    assert "greet" in offered
    assert "wipe" not in offered
    greeted = [m["content"] for m in llm.requests[1].messages if m["role"] == "tool"]
    assert greeted == ["hello Alice, it is 1780000000 in UTC"]  # the daemon's clock
    refused = [m["content"] for m in llm.requests[2].messages if m["role"] == "tool"][-1]
    assert refused == "error: not allowed: this tool is not available to you"
