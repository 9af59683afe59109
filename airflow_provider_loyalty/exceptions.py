"""Typed errors of the loyalty provider.

Every error is an :class:`~airflow.exceptions.AirflowException`, so Airflow fails (or retries) the
task with a readable message. Messages say what was expected, what arrived and which parameter or
response field it was; they never contain the API token.

Errors that a retry cannot fix are *final*: they also derive from ``AirflowFailException``, so
Airflow fails the task at once instead of spending its retries. Final: validation errors, auth
errors, redirects (a wrong Base URL), a misbehaving cursor (a loop, ``max_batches``), and verified
data the chosen ``output_format`` cannot hold.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException


class LoyaltyError(AirflowException):
    """Base class of every error raised by the loyalty provider."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and ``copy``) as what it is: its message and attributes, without calling a
        constructor whose parameters are not its ``args`` (an API error unpickled as
        ``LoyaltyApiError(message)`` failed with a ``TypeError`` instead, e.g. raised by a hook in a
        process pool)."""
        return _rebuilt, (type(self), self.args, dict(self.__dict__))


def _rebuilt(cls: type[LoyaltyError], args: tuple[Any, ...], state: dict[str, Any]) -> LoyaltyError:
    """A :class:`LoyaltyError` of ``cls`` with these ``args`` and attributes (see ``__reduce__``)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class LoyaltyFinalError(LoyaltyError, AirflowFailException):
    """Base class of the errors a retry cannot fix: Airflow fails the task without retrying."""


class LoyaltyValidationError(LoyaltyFinalError, ValueError):
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
    :param endpoint: the API path that answered, named in the message.
    """

    def __init__(
        self, code: int | None, text: str, http_status: int | None = None, *, endpoint: str | None = None
    ) -> None:
        self.code = code
        self.text = text
        self.http_status = http_status
        self.endpoint = endpoint
        parts = [f"error {code}" if code is not None else "", f"HTTP {http_status}" if http_status else ""]
        where = ", ".join(part for part in parts if part)
        said = f"{endpoint}: {text}" if endpoint else text
        super().__init__(f"Loyalty API ({where}): {said}" if where else f"Loyalty API: {said}")


class LoyaltyAuthError(LoyaltyApiError, LoyaltyFinalError):
    """The token was refused (HTTP 401/403). Never retried."""


class LoyaltyRedirectError(LoyaltyApiError, LoyaltyFinalError):
    """The API answered with a redirect; it is never followed (the token stays on the configured
    host). The text names where it points and what to change in the connection."""


class LoyaltyNotFoundError(LoyaltyApiError):
    """The API did not find what was asked for (HTTP 404): an export task, a file or a member."""


class LoyaltyTransientError(LoyaltyApiError):
    """A failure worth retrying: HTTP 429, 5xx, a timeout, a reset or a truncated body.

    :param retry_after: seconds the server asked to wait (``Retry-After``), if it said.
    :param unprocessed: the server cannot have acted on the request: the connection was refused,
        the host does not resolve, or the server answered 429 or 503 (else it may have, as after a
        timeout, a reset, a cut reply or another 5xx).
    """

    def __init__(
        self,
        code: int | None,
        text: str,
        http_status: int | None = None,
        retry_after: float | None = None,
        *,
        unprocessed: bool = False,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(code, text, http_status, endpoint=endpoint)
        self.retry_after = retry_after
        self.unprocessed = unprocessed


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


class LoyaltyOutputFormatError(LoyaltyFinalError):
    """A verified batch holds a value the chosen ``output_format`` cannot store (a Parquet column
    typed ``int64``, ``timestamp`` or ``bool`` got other text). The file is sound, so the batch is
    not created again and the task is not retried; ``output_format='csv'`` keeps every value as sent."""


class LoyaltyCursorError(LoyaltyFinalError):
    """The export cursor misbehaved: ``next_from_id`` repeated, or more batches than ``max_batches``."""


class LoyaltyBatchUnusableError(LoyaltyError):
    """A completed batch cannot be landed: its file is gone or it failed verification, also after
    the batch was created again from the same cursor. Says what was tried."""


class LoyaltyEmptyExportError(LoyaltyError):
    """The period holds no transactions and the operator was asked ``fail_on_empty=True``."""


class LoyaltyLocationBusyError(LoyaltyError):
    """Another export writes at the output location (it holds the location's lease).

    :param location: the output location.
    :param holder: who holds the lease, as it recorded itself.
    """

    def __init__(self, location: str, holder: str, message: str) -> None:
        self.location = location
        self.holder = holder
        super().__init__(message)


class LoyaltyStorageError(LoyaltyError):
    """Reading or writing the output location failed; names the location and the connection.

    The store's own error is chained (``__cause__``).
    """


class LoyaltyExportStopped(LoyaltyError):
    """The export was stopped (``on_kill``: the task was cleared or marked failed)."""


class LoyaltyTlsError(LoyaltyApiError, LoyaltyFinalError):
    """The TLS handshake with the API failed (certificate not trusted, or no TLS at all there)."""
