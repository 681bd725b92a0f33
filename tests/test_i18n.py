"""The fixed texts in people's language (#16): every marked string is in each catalog,
translated, with the same placeholders; the compiled catalogs are current; and the bot
speaks German to a German reader, English to everyone without a catalog."""

from __future__ import annotations

import io
import re
import string
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from bot import i18n, replies
from bot.agent.prompts import system_prompt
from bot.config import settings_from_mapping
from bot.errors import ConfigError
from bot.handlers.admin import CommandSpec

REPO = Path(__file__).resolve().parents[1]
BOT = REPO / "bot"
# As scripts/i18n extracts: pybabel extract -F babel.cfg --no-default-keywords -k _ -k N_
# -k ngettext:1,2.
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}
PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")

PROMPT_ARGS = {"path": "notes.txt", "text": "hello\u200bworld"}


def extracted() -> dict[str, tuple[str, ...]]:
    """Every msgid marked in bot/, as Babel extracts it: (first place, msgid[, plural])."""
    with (REPO / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found: dict[str, tuple[str, ...]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(BOT), method_map, options_map, keywords=KEYWORDS
    ):
        ids = message if isinstance(message, tuple) else (message,)
        # No literal (``_(LEGEND)``): a msgid marked with N_ elsewhere, translated here.
        if ids[0] and ids[0] not in found:
            found[ids[0]] = (f"bot/{filename}:{lineno}", *ids)
    return found


def catalog(language: str) -> Catalog:
    with (i18n.LOCALE_DIR / language / "LC_MESSAGES" / f"{i18n.DOMAIN}.po").open("rb") as po:
        return read_po(po)


def placeholders(text: str) -> tuple[set[str], list[str]]:
    """The {named} fields and the %-conversions of a text."""
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    return names, sorted(PERCENT.findall(text))


def forms(message: Message) -> list[str]:
    return list(message.string) if isinstance(message.string, tuple | list) else [message.string]


def entry(message: Message) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(msgid[, plural]), (msgstr forms): the same from a .po and from a .mo."""
    ids = message.id if isinstance(message.id, tuple | list) else (message.id,)
    return tuple(ids), tuple(forms(message))


@pytest.fixture(autouse=True)
def english_around() -> Iterator[None]:
    """Each test starts and ends in the default language, whatever it switched to."""
    with i18n.language(i18n.DEFAULT):
        yield


# -- (a) the catalogs hold every string ------------------------------------------------


def test_the_extraction_finds_the_marked_texts() -> None:
    found = extracted()
    assert len(found) > 100
    assert "Cancelled {code}." in found  # replies.py
    assert "**Admin commands**" in found  # handlers/admin.py
    assert "every command, or one in detail" in found  # N_, translated by !help
    assert "{count} character" in found  # ngettext


@pytest.mark.parametrize("language", i18n.CATALOGS)
def test_every_marked_string_is_translated_with_the_same_placeholders(language: str) -> None:
    po = catalog(language)
    problems = []
    for msgid, (place, *ids) in sorted(extracted().items()):
        message = po.get(msgid)
        if message is None:
            problems.append(f"{place}: missing {msgid!r} (run scripts/i18n, then translate)")
            continue
        if message.fuzzy or not all(forms(message)):
            problems.append(f"{place}: not translated (or fuzzy) {msgid!r}")
            continue
        if len(ids) == 2 and len(forms(message)) != po.num_plurals:
            problems.append(f"{place}: {msgid!r} needs {po.num_plurals} plural forms")
        wanted = placeholders(ids[-1])
        problems += [
            f"{place}: {msgid!r} -> {text!r}: placeholders {placeholders(text)} != {wanted}"
            for text in forms(message)
            if placeholders(text) != wanted
        ]
    assert not problems, "\n".join(problems)


def test_msgid_and_plural_agree_on_placeholders() -> None:
    """A translation is checked against the plural's fields: the singular must have them."""
    for msgid, (place, *ids) in extracted().items():
        assert placeholders(ids[0]) == placeholders(ids[-1]), f"{place}: {msgid!r}"


# -- (b) the compiled catalogs are current -------------------------------------------


@pytest.mark.parametrize("language", i18n.CATALOGS)
def test_the_committed_mo_is_the_compiled_po(language: str) -> None:
    """A .po edited without scripts/i18n (or `scripts/i18n compile`) fails here."""
    po = catalog(language)
    fresh = io.BytesIO()
    write_mo(fresh, po)  # as pybabel compile does
    fresh.seek(0)
    expected = read_mo(fresh)
    with (i18n.LOCALE_DIR / language / "LC_MESSAGES" / f"{i18n.DOMAIN}.mo").open("rb") as mo:
        committed = read_mo(mo)
    assert {entry(m) for m in committed if m.id} == {entry(m) for m in expected if m.id}
    assert committed.plural_forms == po.plural_forms


def test_every_catalog_is_listed() -> None:
    on_disk = {path.parent.parent.name for path in i18n.LOCALE_DIR.glob("*/LC_MESSAGES/*.po")}
    assert on_disk == set(i18n.CATALOGS)


# -- (c) who reads what ----------------------------------------------------------------


def confirmation() -> str:
    return replies.confirmation_prompt(
        tool="file_write",
        args=PROMPT_ARGS,
        args_hash="ab" * 32,
        code="ABCDE",
        requester="Alice",
        expires="12:00 UTC (2026-01-01)",
    )


def test_german_readers_get_german_texts() -> None:
    english = confirmation()
    with i18n.language("de"):
        prompt = confirmation()
        notice = replies.llm_notice("timeout")
        refusal = replies.command_refused("!forget", "moderators only")
        characters = replies.pending_line(
            "ABCDE",
            tool="t",
            room="r",
            requester="a",
            status="pending",
            expires="x",
            args={"text": "y" * 100},
        )
    assert prompt.startswith("**Bitte bestätigen Sie, bevor ich `file_write` ausführe**")
    assert "Code **ABCDE**" in prompt
    assert "Nur Alice kann antworten, bis 12:00 UTC (2026-01-01)" in prompt
    assert "\n⟨U+…⟩ steht für ein Zeichen" in prompt  # the legend, translated where shown
    assert "Argumente sha256: `abababababab`" in prompt
    # What runs is shown exactly as in English: only the words around it change.
    assert [line for line in prompt.split("\n") if line.startswith("- ")] == [
        line for line in english.split("\n") if line.startswith("- ")
    ]
    assert notice.startswith("Das Modell hat zu lange")
    assert refusal == "Nur Moderatoren dieser Unterhaltung und Admins können !forget verwenden."
    assert "; offen, bis x" in characters
    assert "(100 Zeichen)" in characters


def test_a_regional_language_falls_back_to_its_catalog() -> None:
    with i18n.language("de"):
        german = confirmation()
    with i18n.language("de_DE"):
        assert confirmation() == german
        assert i18n.current() == "de_DE"
    with i18n.language("de-AT"):
        assert replies.apology().startswith("Entschuldigung")


def test_a_language_without_a_catalog_gets_english() -> None:
    english = confirmation()
    assert english.startswith("**Confirm before I run `file_write`** — code **ABCDE**")
    with i18n.language("fr"):
        assert confirmation() == english
        assert replies.llm_notice("timeout") == replies.LLM_NOTICES["timeout"]
        assert i18n.current() == "fr"
    assert i18n.current() == "en"
    assert not i18n.has_catalog("fr")
    assert i18n.has_catalog("de_CH")


def test_plurals_follow_the_count() -> None:
    with i18n.language("de"):
        assert replies.pending_call_too_large("C", 1) == (
            "C ist zu groß, um in einer Nachricht gezeigt zu werden (1 Zeichen)."
        )
        one = replies.confirmation_prompt(
            tool="t",
            args={"text": "a\n" + "b" * 70},
            args_hash="0" * 64,
            code="C",
            requester="A",
            expires="x",
        )
    assert "(72 Zeichen, 2 Zeilen):" in one


async def _noop(_event: object, _args: str) -> str:
    return ""


def test_help_summaries_are_translated_when_shown() -> None:
    """CommandSpec summaries are msgids made at start-up, translated by !help per reader."""
    spec = CommandSpec(
        "logs [N]",
        "the last N log lines (default {default}, max {max}), redacted",
        _noop,
        {"default": 20, "max": 200},
    )
    assert spec.describe() == "the last N log lines (default 20, max 200), redacted"
    with i18n.language("de"):
        assert spec.describe() == "die letzten N Logzeilen (Standard 20, höchstens 200), geschwärzt"


def test_an_empty_text_stays_empty() -> None:
    with i18n.language("de"):
        assert i18n._("") == ""  # gettext's msgid "" is the catalog's header


def test_nonsense_language_codes_mean_the_default() -> None:
    assert i18n.normalize("pt-br") == "pt_BR"
    assert i18n.normalize(" DE ") == "de"
    for bad in ("", None, "x", "12", "de_DE_x", "../etc"):
        assert i18n.normalize(bad) is None
    with i18n.language("../../etc/passwd"):
        assert i18n.current() == "en"


def test_the_config_language_is_checked() -> None:
    base = {"nextcloud": {"url": "https://cloud.example.com", "bot_secret": "x" * 48}}
    settings = settings_from_mapping({**base, "chat": {"language": "de-DE"}}, {})
    assert settings.chat.language == "de_DE"
    assert settings_from_mapping(base, {}).chat.language == "en"
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({**base, "chat": {"language": "German!"}}, {})
    assert [field for field, _ in info.value.problems] == ["chat.language"]
    assert "\n" not in info.value.one_line()


# -- (d) the model is told the person's language ---------------------------------------


def prompt_for(**overrides: object) -> str:
    values: dict[str, object] = {
        "bot_name": "talkbot",
        "requester_name": "Alice",
        "requester_id": "users/alice",
        "role": "user",
        "room_is_one_to_one": False,
        "now": datetime(2026, 12, 24, 9, 30, tzinfo=ZoneInfo("Europe/Berlin")),
        "timezone": "Europe/Berlin",
    }
    values.update(overrides)
    return system_prompt("You are helpful.", **values)  # type: ignore[arg-type]


def test_the_system_prompt_names_the_language_of_the_event() -> None:
    line = "The person you are talking to reads {}; answer in {} unless they write in another"
    assert line.format("English (en)", "English") in prompt_for()
    with i18n.language("de_DE"):
        assert line.format("German (de_DE)", "German") in prompt_for()
    with i18n.language("fr"):  # no catalog: English texts, but the model answers in French
        assert line.format("French (fr)", "French") in prompt_for()
    assert line.format("Japanese (ja)", "Japanese") in prompt_for(language="ja")
    assert "reads xx; answer in xx unless" in prompt_for(language="xx")
