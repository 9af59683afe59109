"""The one place where the API token is kept out of error texts.

Server text (``error_text``, failure reasons) and library errors (``http.client`` quotes a whole
header it refuses) can carry the token. Every exception leaving the hooks and the trigger passes
:func:`token_redacted` (or :func:`scrub`), which cleans the exception and every exception it links
to; text built from server data passes :func:`redact`. Besides the token itself, its URL-encoded
forms (either case of hex digit) and its escaped forms (Python ``repr``, JSON, JSON with escaped
slashes as PHP writes it, XML, numeric character references) are removed, and so is any run of
:data:`PIECE` or more of its first characters: a token cut short with the text that quoted it
(a field shown to its first 40 characters) is still masked.
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, quote_plus
from xml.sax.saxutils import escape as xml_escape

from airflow_provider_loyalty.exceptions import LoyaltyError
from airflow_provider_loyalty.utils.storable import storable_text

MASK = "***"
#: A run this long of the start of the token (or of one of its forms) is masked too.
PIECE = 8
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")
#: The most of a server's own text (``error_text``, a failed task's reason) an exception, an event
#: or a log line quotes; the rest is counted, not shown.
MAX_QUOTED_CHARS = 1000
#: What :func:`clip` puts where it cut a text.
CLIPPED = " …"


@functools.lru_cache(maxsize=16)
def _forms(token: str) -> tuple[str, ...]:
    """The token as it may appear in text: itself, URL-encoded (``/`` escaped or kept, as a path
    keeps it), and escaped by repr, JSON, XML or HTML (``&quot;``, ``&#x27;`` or PHP's ``&#039;``)."""
    encoded = quote(token, safe="")
    in_path = quote(token)  # "/" kept
    forms = {
        token,
        encoded,
        _PERCENT_ESCAPE.sub(lambda escape: escape.group().lower(), encoded),
        in_path,
        _PERCENT_ESCAPE.sub(lambda escape: escape.group().lower(), in_path),
        quote_plus(token),
        html.escape(token),
        html.escape(token).replace("&#x27;", "&#039;"),
        repr(token)[1:-1],
        json.dumps(token)[1:-1],
        json.dumps(token)[1:-1].replace("/", "\\/"),
        xml_escape(token),
        "".join(char if char.isalnum() else f"&#x{ord(char):X};" for char in token),
        "".join(char if char.isalnum() else f"&#x{ord(char):x};" for char in token),
        "".join(char if char.isalnum() else f"&#{ord(char)};" for char in token),
    }
    return tuple(sorted((form for form in forms if form), key=len, reverse=True))


@functools.lru_cache(maxsize=16)
def _whole_forms(token: str) -> tuple[str, ...]:
    """:func:`_forms`, and each in lower and upper case: a server that normalises what it echoes
    (an ``authorization: bearer …`` line written in lower case) changes the token's case. Only
    whole: a run of a lower-cased token's first characters is ordinary words too often
    (``loyalty_`` of a token ``Loyalty_7f3a…`` in ``loyalty_program_id``)."""
    forms = set(_forms(token))
    forms |= {form.lower() for form in forms} | {form.upper() for form in forms}
    return tuple(sorted(forms, key=len, reverse=True))


def _mask_runs(text: str, forms: tuple[str, ...]) -> str:
    """Mask every run of a form's first characters :data:`PIECE` long or longer (the longest run
    of any form that starts there)."""
    heads = {form[:PIECE] for form in forms if len(form) > PIECE}
    position = 0
    while heads:
        found = [(text.find(head, position), head) for head in heads]
        start = min((at for at, _ in found if at != -1), default=-1)
        if start == -1:
            return text
        end = start + PIECE
        for form in forms:
            if len(form) > PIECE and text.startswith(form[:PIECE], start):
                stop = start + PIECE
                while stop < len(text) and stop - start < len(form) and text[stop] == form[stop - start]:
                    stop += 1
                end = max(end, stop)
        text = f"{text[:start]}{MASK}{text[end:]}"
        position = start + len(MASK)
    return text


def redact(text: str, token: str | None) -> str:
    """``text`` without the token (nor its URL-encoded or escaped forms, in any of three cases, nor
    the start of one)."""
    if not token or not text:
        return text
    text = _without_whole_token(text, token)
    forms = _forms(token)
    if CLIPPED in text:
        text = _mask_clipped_words(text, forms)
    return _mask_runs(text, forms)


def _without_whole_token(text: str, token: str) -> str:
    for form in _whole_forms(token):
        text = text.replace(form, MASK)
    return text


def _mask_clipped_words(text: str, forms: tuple[str, ...]) -> str:
    """Mask the first words of a token that holds blanks where :func:`clip` cut the text after them
    (``tok with …`` of ``tok with spaces``): too short to be a :data:`PIECE`, still part of the secret."""
    for form in forms:
        for end in range(len(form) - 1, 0, -1):
            if form[end].isspace() and not form[end - 1].isspace():
                text = text.replace(f"{form[:end]}{CLIPPED}", f"{MASK}{CLIPPED}")
    return text


def carries_token(text: str, token: str | None) -> bool:
    """Whether ``text`` holds the whole token in any of its forms (itself, URL-encoded, escaped):
    unlike :func:`redact`, a run of its first characters alone (``eyJhbGci`` of two JWTs) is not it."""
    if not token:
        return False
    return any(form in text for form in _whole_forms(token))


def redact_values(value: Any, token: str | None) -> Any:
    """``value`` (a decoded reply: dicts, lists, text) with the whole token masked in every text in
    it, keys included; other values as they are. Data, not error text: a run of the token's first
    characters is left alone here (a file name ``Transactions_loyalty_1.zip`` under a token
    ``loyalty_live_…`` is the file's name, and the export downloads it by that name)."""
    if not token:
        return value
    if isinstance(value, str):
        return _without_whole_token(value, token)
    if isinstance(value, Mapping):
        return {redact_values(key, token): redact_values(item, token) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(item, token) for item in value]
    return value


def quoted(text: str, token: str | None, limit: int = MAX_QUOTED_CHARS) -> str:
    """A server's text as an error or a log quotes it: without the token (:func:`redact`, before
    cutting, so no piece of the token survives the cut), at most ``limit`` characters, and with
    what no UTF-8 log or database takes (a NUL, a lone surrogate) escaped (:func:`storable_text`)."""
    text = storable_text(redact(text, token))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters of a server's text, cut only between words (then ``…``).

    For text cut before the token is known (the codec quotes a field or a page before the hook
    redacts its errors): a token without blanks is kept whole (and masked later by :func:`redact`)
    or dropped whole, never cut to a piece too short to recognise; of one with blanks, the words
    kept before the cut are masked by :func:`redact` at the :data:`CLIPPED` mark. A first word
    longer than ``limit`` is not shown at all: ``…`` and its length stand for it.
    """
    if len(text) <= limit:
        return text
    cut = text[: limit + 1]
    blank = max(cut.rfind(" "), cut.rfind("\t"), cut.rfind("\n"), cut.rfind("\r"))
    words = cut[:blank].rstrip() if blank > 0 else ""
    return f"{words}{CLIPPED}" if words else f"… ({len(text)} characters)"


def _texts(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), *(str(arg) for arg in error.args)]
    texts += [value for value in vars(error).values() if isinstance(value, str)] if hasattr(error, "__dict__") else []
    return texts


def _mentions(error: BaseException, token: str) -> bool:
    pieces = {form[:PIECE] for form in _forms(token)} | {CLIPPED}  # a clipped text may end in its first words
    pieces |= set(_whole_forms(token))  # the whole token in another case
    return any(piece in text for text in _texts(error) for piece in pieces)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception it was raised from or while handling (cause and context)."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending:
        item = pending.pop()
        if any(item is known for known in seen):
            continue
        seen.append(item)
        pending += [linked for linked in (item.__cause__, item.__context__) if linked is not None]
    return seen


_TEXT_ATTRIBUTES = ("strerror", "filename", "filename2", "msg", "reason", "message", "text")


def _redact_in_place(error: BaseException, token: str) -> None:
    """Remove the token from an exception's arguments and text attributes."""
    with suppress(AttributeError, TypeError):  # an exception type that forbids it keeps its args
        error.args = tuple(redact(arg, token) if isinstance(arg, str) else arg for arg in error.args)
    names = set(vars(error)) if hasattr(error, "__dict__") else set()
    for name in names | set(_TEXT_ATTRIBUTES):
        value = getattr(error, name, None)
        if isinstance(value, str) and value:
            with suppress(AttributeError, TypeError):  # read-only: computed from what is redacted
                setattr(error, name, redact(value, token))


def scrub(error: BaseException, token: str | None) -> BaseException:
    """``error`` without the token: redacted in place, through its whole cause/context chain.

    What an exception links to (``__cause__``, ``__context__``) is what a traceback, a log
    handler or an error tracker may print too, so every exception of the chain is cleaned. Our
    own errors keep their type; any other exception whose text still holds the token after that
    (one that computes its text from hidden state) becomes a :class:`LoyaltyError` naming its type.
    """
    if not token:
        return error
    for item in _chain(error):
        if _mentions(item, token):
            _redact_in_place(item, token)
    if isinstance(error, LoyaltyError) or not _mentions(error, token):
        return error
    return LoyaltyError(f"{type(error).__name__} (its text held the API token and was withheld)")


@contextmanager
def token_redacted(token: str | None) -> Iterator[None]:
    """Re-raise any exception from the block with the token removed (see :func:`scrub`)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException as error:
        clean = scrub(error, token)
        if clean is error:
            raise
        raise clean from None
