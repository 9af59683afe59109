"""The emulator's error envelope: error codes, :class:`ApiError` and the success text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ERROR_CODES", "SUCCESS_TEXT", "ApiError", "invalid", "success"]

SUCCESS_TEXT = "Successful operation"
#: error code -> (default HTTP status, short meaning)
ERROR_CODES: dict[int, tuple[int, str]] = {
    0: (200, "success"),
    1000: (500, "internal error"),
    1001: (400, "validation error"),
    1002: (401, "authentication failed"),
    1003: (404, "export task not found"),
    1004: (404, "member profile not found"),
    1005: (404, "download not found"),
    1006: (429, "rate limit exceeded"),
    1007: (404, "unknown endpoint"),
    1008: (404, "file expired"),
}


class ApiError(Exception):
    """An error answered with the API envelope (``error`` / ``error_text``).

    :param code: the ``error`` code (see :data:`ERROR_CODES`; other codes need ``http_status``).
    :param text: the ``error_text``.
    :param http_status: HTTP status (default: the code's status).
    :param headers: extra response headers.
    :param fmt: ``"json"`` or ``"xml"`` to force the envelope's format (default: the request's).
    """

    def __init__(
        self,
        code: int,
        text: str,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
        fmt: str | None = None,
    ) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.http_status = http_status if http_status is not None else ERROR_CODES.get(code, (500, ""))[0]
        self.headers = dict(headers or {})
        self.fmt = fmt

    def envelope(self) -> dict[str, Any]:
        """Return the JSON-ready error envelope."""
        return {"error": self.code, "error_text": self.text}


def invalid(name: str, reason: str) -> ApiError:
    """Return the validation error (``1001``, HTTP 400) for request parameter ``name``.

    :param name: the parameter, as the API names it.
    :param reason: what was expected or what is wrong.
    """
    return ApiError(1001, f"Invalid parameter {name}: {reason}")


def success(**fields: Any) -> dict[str, Any]:
    """Return a success envelope: ``fields`` followed by ``error`` 0 and ``error_text``.

    :param fields: the payload's keys in wire order (e.g. ``data=...``).
    """
    return {**fields, "error": 0, "error_text": SUCCESS_TEXT}
