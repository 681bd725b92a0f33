"""Cutting a long text into the parts Talk accepts, never inside one visible symbol."""

from __future__ import annotations

import unicodedata

# PHP trim(): what Talk strips before counting the length.
PHP_TRIM = " \t\n\r\0\x0b"
_ZWJ = "\u200d"
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


def split_message(text: str, max_length: int) -> list[str]:
    """Cut ``text`` into trimmed parts of at most ``max_length`` characters each.

    Cuts prefer a paragraph break, then a line break, then a space in the second half of
    the window, and never fall inside a character sequence that draws one symbol.
    """
    parts: list[str] = []
    rest = text.strip(PHP_TRIM)
    while len(rest) > max_length:
        cut = _cut_position(rest, max_length)
        parts.append(rest[:cut].strip(PHP_TRIM))
        rest = rest[cut:].strip(PHP_TRIM)
    if rest:
        parts.append(rest)
    return [part for part in parts if part]


def _cut_position(text: str, max_length: int) -> int:
    window = text[: max_length + 1]
    for separator in ("\n\n", "\n", " "):
        position = window.rfind(separator, max_length // 2)
        if position > 0:
            return position
    cut = max_length
    while cut > 0 and _joins(text, cut):
        cut -= 1
    return cut or max_length


def _joins(text: str, cut: int) -> bool:
    """True when cutting before ``text[cut]`` would break one visible symbol apart."""
    before, after = text[cut - 1], text[cut]
    if "\ud800" <= before <= "\udbff" or _ZWJ in {before, after}:
        return True
    if unicodedata.category(after) in {"Mn", "Mc", "Me", "Sk"} and not after.isascii():
        return True
    if "\ufe00" <= after <= "\ufe0f" or "\U000e0020" <= after <= "\U000e007f":
        return True
    if ord(before) in _REGIONAL_INDICATORS and ord(after) in _REGIONAL_INDICATORS:
        return _regional_run(text, cut) % 2 == 1
    return False


def _regional_run(text: str, cut: int) -> int:
    """How many regional indicators directly precede ``cut`` (flags come in pairs)."""
    count = 0
    while cut - count > 0 and ord(text[cut - count - 1]) in _REGIONAL_INDICATORS:
        count += 1
    return count
