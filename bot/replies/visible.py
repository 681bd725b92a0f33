"""Values shown in full with nothing hidden: invisible characters as markers, long lines folded."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping

from bot.i18n import N_, _, ngettext

# A prompt shows every argument in full (DESIGN.md §5): nothing is cut, and nothing the
# reader cannot see is sent raw. Each character that would be invisible, or would make the
# visible text differ from what runs, is shown as a marker: ⟨TAB⟩ for a tab, ⟨U+XXXX⟩ for
# the rest. Markers stand for: controls (Cc: C0, DEL, C1, CR, and a newline where no line
# break can be shown), format characters (Cf: bidi controls, zero-width characters, the
# BOM, soft hyphens, tag characters), surrogates (Cs), private-use (Co) and unassigned
# (Cn, as this Python's Unicode knows it: so also emoji newer than it) characters, line
# and paragraph separators (Zl, Zp), every space but U+0020 (Zs), letters and marks that
# draw nothing (_BLANK_GLYPHS), variation selectors except one text/emoji selector right
# after a visible character (so ❤️ stays an emoji), combining marks past MAX_MARKS on one
# character (a pile of them draws over other lines), and "⟨" itself, so a marker cannot
# be faked. Values with several lines, or long ones, go in a fenced code block whose fence
# is longer than any backtick run inside (nothing inside can close it, so no Markdown,
# HTML or link inside takes effect); lines longer than FOLD_AT are folded with ⟨wrap⟩.

INLINE_MAX = 60  # characters of a value shown inline; longer ones get a block
FOLD_AT = 80  # characters per line of a block, ⟨wrap⟩ included
MAX_MARKS = 4  # combining marks kept on one character (Vietnamese uses two, Hebrew three)
MARK = "⟨"
TAB = "⟨TAB⟩"
WRAP = "⟨wrap⟩"
LEGEND = N_(  # translated where it is shown
    "⟨U+…⟩ stands for a character that would not show (a control, bidi or zero-width "
    "character...), ⟨TAB⟩ for a tab; ⟨wrap⟩ folds a long line (no line break there)."
)

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
# Hangul fillers, Khmer inherent vowels, the combining grapheme joiner, the braille blank.
_BLANK_GLYPHS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")
_PRESENTATION_SELECTORS = frozenset("\ufe0e\ufe0f")
_COMBINING = frozenset({"Mn", "Me"})
_MARKDOWN_INLINE = re.compile(r"[\\`*_\[\]<>&~|]")


def _marker(char: str) -> str:
    return f"⟨U+{ord(char):04X}⟩"


def _always_hidden(char: str) -> bool:
    if char == " ":
        return False
    return (
        char == MARK or char in _BLANK_GLYPHS or unicodedata.category(char) in _ESCAPED_CATEGORIES
    )


def _is_variation_selector(char: str) -> bool:
    return "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef"


def _hidden(char: str, previous: str, marks: int) -> bool:
    """Whether ``char`` is shown as a marker; ``marks``: combining marks so far, itself too."""
    if _always_hidden(char):
        return True
    if _is_variation_selector(char):
        lone_after_visible = marks == 1 and bool(previous) and not _always_hidden(previous)
        return not (char in _PRESENTATION_SELECTORS and lone_after_visible)
    return marks > MAX_MARKS


def visible_tokens(text: str) -> list[str]:
    """Each character as the prompt shows it: itself, ⟨TAB⟩, or its ⟨U+XXXX⟩ marker."""
    tokens = []
    marks = 0
    previous = ""
    for char in text:
        marks = marks + 1 if unicodedata.category(char) in _COMBINING else 0
        if char == "\t":
            tokens.append(TAB)
        else:
            tokens.append(_marker(char) if _hidden(char, previous, marks) else char)
        previous = char
    return tokens


def visible(text: str) -> str:
    """``text`` with every invisible or misleading character made visible, on one line."""
    return "".join(visible_tokens(text))


def plain_text(text: str) -> str:
    """A name shown in running Markdown text: visible, and unable to start formatting."""
    return _MARKDOWN_INLINE.sub(lambda m: "\\" + m.group(0), visible(text))


def code_span(text: str) -> str:
    """Inline code that Markdown shows verbatim, whatever backticks the text holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"`{text}`"


def _folded(line: str) -> str:
    """One line of a value, folded into rows of at most FOLD_AT characters."""
    rows: list[str] = []
    row: list[str] = []
    width = 0
    for token in visible_tokens(line):
        if row and width + len(token) > FOLD_AT - len(WRAP):
            rows.append("".join(row) + WRAP)
            row, width = [], 0
        row.append(token)
        width += len(token)
    rows.append("".join(row))
    return "\n".join(rows)


def _code_block(text: str) -> list[str]:
    """A fenced block of ``text``; the fence is longer than any backtick run inside."""
    body = "\n".join(_folded(line) for line in text.split("\n"))
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, body, fence]


def _fits_inline(text: str) -> bool:
    """Short, one line, no space that inline code could hide, nothing JSON would escape."""
    return (
        len(visible(text)) <= INLINE_MAX
        and text == text.strip()
        and "  " not in text
        and json.dumps(text, ensure_ascii=False) == f'"{text}"'
    )


def characters(count: int) -> str:
    return ngettext("{count} character", "{count} characters", count).format(count=count)


def _lines(count: int) -> str:
    return ngettext("{count} line", "{count} lines", count).format(count=count)


def _name(name: str) -> str:
    """An argument's name: as it is when an identifier (every tool's are), else as code."""
    return name if name.isascii() and name.isidentifier() else code_span(visible(name))


def _argument(name: str, value: object) -> list[str]:
    """One argument, in full: inline when short and simple, else in a code block.

    Inline, a text is quoted (JSON, which then escapes nothing); in a block it is shown as
    it is, line by line.
    """
    label = f"- {_name(name)}"
    if isinstance(value, str):
        if _fits_inline(value):
            return [f"{label}: {code_span(visible(json.dumps(value, ensure_ascii=False)))}"]
        lines = value.count("\n") + 1
        size = f"{characters(len(value))}, {_lines(lines)}"
        return [f"{label} ({size}):", *_code_block(value)]
    compact = json.dumps(value, ensure_ascii=False)
    if len(visible(compact)) <= INLINE_MAX and "  " not in compact:
        return [f"{label}: {code_span(visible(compact))}"]
    return [f"{label} (JSON):", *_code_block(json.dumps(value, ensure_ascii=False, indent=2))]


def arguments(args: Mapping[str, object]) -> list[str]:
    lines = [line for name, value in args.items() for line in _argument(name, value)]
    return lines or ["- " + _("(no arguments)")]


def with_legend(lines: list[str]) -> list[str]:
    return [*lines, _(LEGEND)] if any(MARK in line for line in lines) else lines
