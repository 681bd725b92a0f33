"""On-demand atheris harness for parse_event (W10): any bytes give an Event or EventParseError.

Not collected by pytest (the name does not start with ``test_``). Run it by hand:

    pip install atheris
    python tests/fuzz/atheris_parser.py -atheris_runs=200000 [CORPUS_DIR ...]

Without a corpus directory it seeds a temporary one from the captured webhooks in
tests/fixtures/talk/webhooks/. A crash prints the input and writes it to ./crash-*;
replay one with ``python tests/fuzz/atheris_parser.py crash-<hash>``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]  # optional, on-demand; stubs not installed

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "tests" / "fixtures" / "talk" / "webhooks"
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from bot.talk.events import Event, EventParseError, parse_event


def check_one_input(data: bytes) -> None:
    """The parser's contract, plus what the daemon then does with an accepted event."""
    try:
        event = parse_event(data)
    except EventParseError:
        return
    _check_usable(event)


def _check_usable(event: Event) -> None:
    # Everything below is read by the webhook, the router and the store for every event.
    _ = (event.dedupe_key, event.actor.is_bot, event.actor.is_moderator, event.actor.uid)
    _ = event.room.is_one_to_one
    if event.message is not None:
        _ = (event.message.files, event.message.is_system, event.message.text)
    # The store keeps the text as UTF-8 (history, rooms); a lone surrogate cannot be stored.
    json.dumps(event.raw, ensure_ascii=False).encode("utf-8")


def _seeded_corpus() -> str:
    corpus = tempfile.mkdtemp(prefix="talkbot-fuzz-")
    for path in sorted(SEEDS.glob("*.body.raw")):
        shutil.copy(path, corpus)
    return corpus


def main() -> None:
    args = list(sys.argv)
    if not any(not arg.startswith("-") for arg in args[1:]):
        args.append(_seeded_corpus())
    atheris.Setup(args, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
