"""The language of the fixed texts the bot writes: gettext catalogs, chosen per person.

The texts in replies and the handlers are English msgids marked with ``_`` (or ``N_``
where a constant is translated later); ``bot/locale/<lang>/LC_MESSAGES/talkbot.po`` holds
each translation and ``talkbot.mo`` its compiled form (``scripts/i18n`` extracts with
Babel, updates and compiles; tests/test_i18n.py fails when a catalog misses a string or
a compiled catalog is stale).

The language is a context variable: the router sets it for the event it handles (the
person's Nextcloud language, else ``[chat] language``), so everything said in that
event's task speaks it without each function taking a parameter. A language without a
catalog gets English texts; the model is still told the person's language.
"""

from __future__ import annotations

import gettext as _gettext
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

DOMAIN = "talkbot"
LOCALE_DIR = Path(__file__).parent / "locale"
DEFAULT = "en"
# Languages with a catalog (English is the msgids themselves).
CATALOGS = ("de",)

_current: ContextVar[str] = ContextVar("talkbot_language", default=DEFAULT)


def normalize(code: str | None) -> str | None:
    """A language code as Nextcloud or the config gives it ("de", "de_DE", "pt-BR"), in
    gettext's form ("de", "de_DE", "pt_BR"); None for nothing usable."""
    if not code:
        return None
    text = code.strip().replace("-", "_")
    base, _, region = text.partition("_")
    if not base.isalpha() or not 2 <= len(base) <= 3 or (region and not region.isalnum()):  # noqa: PLR2004
        return None
    return f"{base.lower()}_{region.upper()}" if region else base.lower()


@cache
def _catalog(language: str) -> _gettext.NullTranslations:
    # gettext tries "de_DE", then "de": Nextcloud's formal German gets the German catalog.
    return _gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)


def current() -> str:
    """The language of the event being handled (gettext form)."""
    return _current.get()


def set_language(code: str | None) -> None:
    """Speak ``code`` for the rest of this task (the router, per event)."""
    _current.set(normalize(code) or DEFAULT)


@contextmanager
def language(code: str | None) -> Iterator[None]:
    """Speak ``code`` inside the block (a scheduled job's owner, a test)."""
    token = _current.set(normalize(code) or DEFAULT)
    try:
        yield
    finally:
        _current.reset(token)


# English names of common languages, for telling the model which one a person reads.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "eu": "Basque",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "gl": "Galician",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "id": "Indonesian",
    "is": "Icelandic",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "nb": "Norwegian Bokmål",
    "nl": "Dutch",
    "nn": "Norwegian Nynorsk",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sr": "Serbian",
    "sv": "Swedish",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


def language_name(code: str) -> str:
    """The English name of a language ("de_DE" -> "German"), else the code itself."""
    return LANGUAGE_NAMES.get(code.split("_", maxsplit=1)[0].lower(), code)


def has_catalog(code: str | None) -> bool:
    normalized = normalize(code)
    return normalized is not None and (
        normalized == DEFAULT or normalized.split("_")[0] in CATALOGS
    )


def _(message: str) -> str:
    """``message`` in the current language (an empty one stays empty: gettext would give
    the catalog's header for it)."""
    return _catalog(_current.get()).gettext(message) if message else message


def ngettext(singular: str, plural: str, count: int) -> str:
    return _catalog(_current.get()).ngettext(singular, plural, count)


def N_(message: str) -> str:
    """Marks ``message`` for extraction only; ``_`` translates it where it is used."""
    return message
