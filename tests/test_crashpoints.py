"""Injected crash points: TALKBOT_CRASH_AT names where (and at which pass) the process dies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bot.crashpoints import ENV, EXIT_CODE, CrashPlan, parse_plan

# Reaches before_reply three times, then says it survived (on stderr: the crash point's
# log line goes to stdout).
PROGRAM = (
    "import sys\n"
    "from bot.crashpoints import crash_point\n"
    "for n in range(3):\n"
    "    crash_point('before_reply')\n"
    "    print(n + 1, file=sys.stderr, flush=True)\n"
    "print('survived', file=sys.stderr, flush=True)\n"
)


def run_with(value: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: value}
    return subprocess.run(  # noqa: S603 - our own interpreter and program
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("value", "plan"),
    [
        ("", None),
        ("  ", None),
        ("tool_ran", CrashPlan("tool_ran", 1)),
        ("schedule_claimed:3", CrashPlan("schedule_claimed", 3)),
    ],
)
def test_the_variable_names_a_point_and_a_pass(value: str, plan: CrashPlan | None) -> None:
    assert parse_plan(value) == plan


@pytest.mark.parametrize("value", ["tool_rann", "tool_ran:0", "tool_ran:x", "tool_ran:-1"])
def test_a_typo_fails_loudly_instead_of_never_crashing(value: str) -> None:
    with pytest.raises(ValueError, match=ENV):
        parse_plan(value)


def test_the_process_dies_at_the_named_pass_like_kill_9() -> None:
    result = run_with("before_reply:2")
    assert result.returncode == EXIT_CODE
    assert result.stderr.split() == ["1"]  # died on the second pass, before printing "2"


def test_unset_or_another_point_changes_nothing() -> None:
    for value in ("", "tool_ran"):
        result = run_with(value)
        assert result.returncode == 0
        assert result.stderr.split() == ["1", "2", "3", "survived"]
