"""The one place where the API token is kept out of error texts.

Server text (``error_text``, failure reasons) and library errors (``http.client`` quotes a whole
header it refuses) can carry the token. Every exception leaving the hooks and the trigger passes
:func:`token_redacted`; text built from server data passes :func:`redact`. Besides the token itself,
its URL-encoded form and the ``Authorization`` header value are removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, quote_plus

from airflow_provider_loyalty.exceptions import LoyaltyError

MASK = "***"


def _forms(token: str) -> list[str]:
    forms = {token, quote(token, safe=""), quote_plus(token), repr(token)[1:-1]}
    return sorted((form for form in forms if form), key=len, reverse=True)


def redact(text: str, token: str | None) -> str:
    """``text`` without the token (nor its URL-encoded or escaped forms)."""
    if not token or not text:
        return text
    for form in _forms(token):
        text = text.replace(form, MASK)
    return text


def _mentions(error: BaseException, token: str) -> bool:
    texts = [str(error), *(str(arg) for arg in error.args)]
    texts += [str(value) for value in vars(error).values() if isinstance(value, str)]
    return any(form in text for text in texts for form in _forms(token))


def scrub(error: BaseException, token: str | None) -> BaseException:
    """``error`` itself when it does not mention the token; otherwise a redacted equivalent.

    Our own errors keep their type (their text and arguments are redacted in place); any other
    exception becomes a :class:`LoyaltyError` naming its type, so ``http.client``'s quote of a
    refused header never reaches a log.
    """
    if not token:
        return error
    if isinstance(error, LoyaltyError):
        if _mentions(error, token):
            error.args = tuple(redact(arg, token) if isinstance(arg, str) else arg for arg in error.args)
            for name, value in list(vars(error).items()):
                if isinstance(value, str):
                    setattr(error, name, redact(value, token))
        chained = error.__cause__ or error.__context__
        if chained is not None and _mentions(chained, token):
            error.__cause__ = None
            error.__suppress_context__ = True
        return error
    if not _mentions(error, token) and not (error.__cause__ and _mentions(error.__cause__, token)):
        return error
    return LoyaltyError(f"{type(error).__name__}: {redact(str(error), token)}")


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
