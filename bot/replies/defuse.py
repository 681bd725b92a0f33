"""Model and job text defused: its mentions notify nobody, its made-up links fetch nothing."""

from __future__ import annotations

import re

ZERO_WIDTH_SPACE = "\u200b"
# Where Talk sees a mention: an "@" at the start or after a space, then an id or a quoted
# id ("@bob", '@"group/dev team"', "@all"); "alice@example.com" is no mention.
_MENTION = re.compile(r'(?:(?<=\s)|^)@(?=[\w"\'.-])', re.MULTILINE)


def defuse_mentions(text: str) -> str:
    """What the model or a job wrote notifies nobody: every mention ("@all", "@here",
    "@bob") keeps its text but loses its power (A12, #13.8). A zero-width space after the
    "@" is invisible to people and no mention to Talk."""
    return _MENTION.sub(f"@{ZERO_WIDTH_SPACE}", text)


_LINK = re.compile(r"(?i)\b(https?)://([^\s<>()\[\]`\"']+)")


def defuse_unseen_links(text: str, seen: str) -> str:
    """Links the model made up in a turn that read untrusted or private content lose their
    power: Nextcloud previews a link by fetching it, so a URL built from a file's content
    would carry it out with no tool call (review of #13). A link that appears verbatim in
    what the turn read (the page, the search result, the requester's message) stays."""

    def defuse(match: re.Match[str]) -> str:
        if match.group(0) in seen:
            return match.group(0)
        return f"{match.group(1)}://{ZERO_WIDTH_SPACE}{match.group(2)}"

    return _LINK.sub(defuse, text)
