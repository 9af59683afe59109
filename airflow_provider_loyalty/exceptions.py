"""Typed errors of the loyalty provider.

Every error is an :class:`~airflow.exceptions.AirflowException`, so Airflow fails (or retries) the
task with a readable message. Messages say what was expected, what arrived and which parameter or
response field it was; they never contain the API token.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class LoyaltyError(AirflowException):
    """Base class of every error raised by the loyalty provider."""


class LoyaltyValidationError(LoyaltyError, ValueError):
    """A parameter given to the provider is invalid; raised before any request is sent.

    :param parameter: name of the offending parameter.
    :param message: what was expected and what arrived.
    """

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


class LoyaltyApiError(LoyaltyError):
    """The API answered with an error envelope (``error != 0``) or an HTTP error status.

    :param code: the envelope's ``error`` code (``None`` when the body had no envelope).
    :param text: the envelope's ``error_text`` (or a description of the HTTP failure).
    :param http_status: the HTTP status code of the reply.
    """

    def __init__(self, code: int | None, text: str, http_status: int | None = None) -> None:
        self.code = code
        self.text = text
        self.http_status = http_status
        parts = [f"error {code}" if code is not None else "", f"HTTP {http_status}" if http_status else ""]
        where = ", ".join(part for part in parts if part)
        super().__init__(f"Loyalty API ({where}): {text}" if where else f"Loyalty API: {text}")


class LoyaltyAuthError(LoyaltyApiError):
    """The token was refused (HTTP 401/403). Never retried."""


class LoyaltyNotFoundError(LoyaltyApiError):
    """The API did not find what was asked for (HTTP 404): an export task, a file or a member."""


class LoyaltyTransientError(LoyaltyApiError):
    """A failure worth retrying: HTTP 429, 5xx, a timeout, a reset or a truncated body.

    :param retry_after: seconds the server asked to wait (``Retry-After``), if it said.
    """

    def __init__(
        self, code: int | None, text: str, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(code, text, http_status)
        self.retry_after = retry_after


class LoyaltyResponseError(LoyaltyError):
    """A reply could not be understood: malformed JSON/XML, wrong field types, or too large."""


class LoyaltyUnsafeDataError(LoyaltyError):
    """Server data was refused for safety: a ``hashed_file`` leaving the download path, an unsafe
    zip member name, or an archive over the size / ratio caps."""


class LoyaltyExportTaskFailed(LoyaltyError):
    """The export task ended in a failure state; carries the API's text.

    :param export_task_id: the task that failed.
    :param status: the status word the API reported.
    :param text: the API's explanation.
    """

    def __init__(self, export_task_id: str, status: str, text: str) -> None:
        self.export_task_id = export_task_id
        self.status = status
        self.text = text
        super().__init__(f"Export task {export_task_id} ended with status {status!r}: {text}")


class LoyaltyVerificationError(LoyaltyError):
    """A downloaded batch failed verification (corrupt zip, CRC, row count)."""


class LoyaltyCursorError(LoyaltyError):
    """The export cursor misbehaved: ``next_from_id`` repeated, or more batches than ``max_batches``."""
