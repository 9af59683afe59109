"""LoyaltyHook: the loyalty platform's HTTP API, synchronously, for workers."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import IO, Any

import requests
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportStopped,
    LoyaltyRedirectError,
    LoyaltyResponseError,
    LoyaltyUnsafeDataError,
)
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.codec import ACCOUNT_SCHEMA, ENVELOPE_SCHEMA, STATUS_SCHEMA, Schema
from airflow_provider_loyalty.utils.connection import LoyaltyConnectionSettings, settings_from_parts
from airflow_provider_loyalty.utils.connection_form import connection_form_widgets, hook_field_behaviour
from airflow_provider_loyalty.utils.direct_transport import DirectPoster
from airflow_provider_loyalty.utils.export_status import ExportTaskStatus, cursor_text
from airflow_provider_loyalty.utils.protocol import (
    ACCOUNT_PATH,
    DOWNLOAD_PREFIX,
    EXPORT_PATH,
    STATUS_PATH,
    carries_envelope,
    check_reply,
    data_object,
    download_url,
    encode_request,
)
from airflow_provider_loyalty.utils.redaction import redact_values, token_redacted
from airflow_provider_loyalty.utils.retry import call_with_retries, creation_policy, retry_policy
from airflow_provider_loyalty.utils.sync_transport import ApiPoster, build_session
from airflow_provider_loyalty.utils.transport import ReplyBuffer, transport_error

DOWNLOAD_CHUNK_BYTES = 1024 * 1024
#: Largest download the hook streams to disk unless told otherwise (a batch's zip).
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024**3
#: Empty history pages in a row (each with a new ``next_from_id``) after which a walk stops: a page
#: the API filtered empty is followed, a server that never stops sending them is not.
MAX_EMPTY_PAGES = 1000


#: How a zip file starts: a local file header, or the end record of an archive without members.
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")


def _is_an_envelope(response: requests.Response, first_bytes: bytes) -> bool:
    """Whether a download's reply is the API's envelope in place of the file: any status but 200;
    or a body that does not start as a zip does and is declared JSON or XML, or starts as one
    (a zip sent with a JSON or XML Content-Type is still the file)."""
    if response.status_code != 200:
        return True
    if not first_bytes or first_bytes.startswith(_ZIP_SIGNATURES):
        return False  # an empty body holds no envelope (a batch of no rows may have no file at all)
    return carries_envelope(response.headers) or _looks_like_envelope(first_bytes)


def _looks_like_envelope(first_bytes: bytes) -> bool:
    """A zip starts with ``PK``; a JSON or XML error envelope with ``{`` or ``<`` (after blanks and
    a UTF-8 byte order mark, which a PHP source file easily puts before its reply)."""
    return first_bytes.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"<")


class LoyaltyHook(BaseHook):
    """
    Talk to the loyalty platform's HTTP API: export tasks, their status and files, member histories.

    Each hook keeps its connections alive across calls: the API's POSTs go on ``http.client``
    connections straight to the API (through a proxy, on the hook's ``requests.Session``), downloads
    on the session. Every request carries ``Authorization: Bearer <token>``; bodies are JSON or
    XML per the connection; replies are decoded by their own Content-Type and checked for the
    ``error`` / ``error_text`` envelope.
    Transient failures (429 with ``Retry-After``, 5xx, timeouts, resets) are retried with
    exponential backoff and jitter; auth and validation errors never are. Redirects are not
    followed, so the token is only ever sent to the configured host. No error leaving the hook
    contains the token. :class:`~airflow_provider_loyalty.hooks.loyalty_async.LoyaltyAsyncHook` is
    the same API for triggers, on asyncio.

    .. seealso:: :ref:`howto/connection:loyalty` for the connection's fields.

    :param loyalty_conn_id: the ``loyalty`` connection (Host = base URL, Password = API token).
    :param content_type: ``json`` or ``xml``; overrides the connection's extra.
    :param timeout: seconds for connect and read; overrides the connection's extra.
    :param max_retries: retries of transient failures; overrides the connection's extra.
    :param verify_ssl: verify the server's TLS certificate; overrides the connection's extra.
    :param retry_backoff: base of the exponential backoff in seconds; overrides the extra.
    """

    conn_name_attr = "loyalty_conn_id"
    default_conn_name = "loyalty_default"
    conn_type = "loyalty"
    hook_name = "Loyalty"

    def __init__(
        self,
        loyalty_conn_id: str = default_conn_name,
        *,
        content_type: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        verify_ssl: bool | None = None,
        retry_backoff: float | None = None,
    ) -> None:
        super().__init__()
        self.loyalty_conn_id = validation.check_conn_id(loyalty_conn_id, "loyalty_conn_id", templated=False)
        #: The connection an auth error names (none in the Test button's: Airflow tests the form
        #: under a throwaway id the user never saw).
        self._conn_id_in_errors: str | None = loyalty_conn_id
        self._overrides: dict[str, Any] = {
            "content_type": content_type,
            "timeout": timeout,
            "max_retries": max_retries,
            "verify_ssl": verify_ssl,
            "retry_backoff": retry_backoff,
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's four extra fields for Airflow 3.1's UI (3.2 and newer read ``conn-fields``)."""
        return connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden and relabelled fields for Airflow 3.1's UI (3.2 and newer read ``ui-field-behaviour``)."""
        return hook_field_behaviour()

    @cached_property
    def settings(self) -> LoyaltyConnectionSettings:
        """The connection's settings, read once; the token is registered with the secrets masker."""
        conn = self.get_connection(self.loyalty_conn_id)
        if conn.password:
            mask_secret(conn.password)
        settings = settings_from_parts(
            host=conn.host,
            password=conn.password,
            extra=conn.extra_dejson,
            schema=conn.schema,
            port=conn.port,
            conn_type=conn.conn_type,
            overrides=self._overrides,
        )
        for secret in settings.secrets:
            mask_secret(secret)
        return settings

    def fork(self) -> LoyaltyHook:
        """A hook on the same connection and settings with a session of its own, for another thread
        (a ``requests.Session`` is not shared across threads). The connection is not read again."""
        twin = type(self)(self.loyalty_conn_id)
        twin._overrides = dict(self._overrides)
        twin.__dict__["settings"] = self.settings
        return twin

    @cached_property
    def session(self) -> requests.Session:
        """The hook's HTTP session: keep-alive, Bearer auth, proxies and CA bundle of the connection."""
        return build_session(self.settings)

    def get_conn(self) -> requests.Session:
        """The hook's ``requests`` session (:attr:`session`), as ``HttpHook.get_conn`` gives one: for a
        call this hook has no method for. Requests on it carry the token; keep them to the API's host."""
        return self.session

    @cached_property
    def _poster(self) -> ApiPoster | DirectPoster:
        """The API's POSTs: on ``http.client`` straight to the API (see :mod:`~.utils.direct_transport`),
        on the ``requests`` session through a proxy (see :mod:`~.utils.sync_transport`)."""
        return _poster_for(self.settings, lambda: self.session)

    @cached_property
    def _retry_policy(self) -> dict[str, Any]:
        """The retry policy of this hook's settings, built once."""
        return retry_policy(self.settings, self.log)

    def close(self) -> None:
        """Close the session's pooled connections."""
        poster = self.__dict__.pop("_poster", None)
        if poster is not None:
            poster.close()
        session = self.__dict__.pop("session", None)
        if session is not None:
            session.close()

    # ------------------------------------------------------------------ transport

    def _token(self) -> str:
        """The API token (reading the connection if not done yet), for :func:`token_redacted`."""
        return self.settings.token

    def _post(
        self, path: str, payload: dict[str, Any], schema: Schema = ENVELOPE_SCHEMA, *, creates: bool = False
    ) -> dict[str, Any]:
        """POST a body to an API path, with retries; return the checked envelope.

        :param creates: the request creates something (see :func:`~.utils.retry.creation_policy`).
        """
        with token_redacted(self._token()):
            body, headers = encode_request(payload, self.settings.content_type)
            policy = creation_policy(self._retry_policy, self.log) if creates else self._retry_policy
            return call_with_retries(policy, lambda: self._post_once(path, body, headers, schema))

    def _post_once(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        schema: Schema,
        via: tuple[ApiPoster | DirectPoster, LoyaltyConnectionSettings] | None = None,
    ) -> dict[str, Any]:
        """One POST and its checked envelope.

        :param via: another poster and the settings it was made with (the Test button's request
            with a wrong token); by default the hook's own.
        """
        poster, settings = via or (self._poster, self.settings)
        started = time.monotonic()
        failure: LoyaltyError | None = None
        try:
            status, reply_headers, reply = poster.post(path, body, headers)
        except Exception as error:
            failure = transport_error(settings, path, error)
        if failure is not None:
            raise failure  # outside the handler: no __context__ keeps the library's error and its request
        self.log.debug("POST %s -> HTTP %s in %.0f ms", path, status, 1000 * (time.monotonic() - started))
        return check_reply(
            http_status=status,
            headers=reply_headers,
            body=reply,
            token=settings.token,
            schema=schema,
            conn_id=self._conn_id_in_errors,
            base_url=settings.base_url,
            path=path,
        )

    # ------------------------------------------------------------------ export API

    def create_transactions_export(
        self,
        *,
        loyalty_program_id: int,
        date_from: Any,
        date_to: Any,
        points_currency_eid: str | None = None,
        points_currency_iid: int | None = None,
        from_id: str | None = None,
    ) -> str:
        """Create an export task of a program's points transactions over a period.

        :param loyalty_program_id: the loyalty program.
        :param date_from: period start (inclusive): datetime, date or RFC3339 string; a date means
            its first second.
        :param date_to: period end (inclusive): datetime, date or RFC3339 string; a date means its
            last second.
        :param points_currency_eid: external points currency id (or give the iid).
        :param points_currency_iid: internal points currency id (or give the eid).
        :param from_id: cursor: the ``next_from_id`` of the previous batch.
        :return: the export task id.
        """
        start, end = validation.check_period(date_from, date_to)
        payload: dict[str, Any] = {
            "loyalty_program_id": validation.check_program_id(loyalty_program_id),
            **validation.check_currency(points_currency_eid, points_currency_iid),
            "date_from": start,
            "date_to": end,
            "from_id": validation.check_cursor(from_id),
        }
        data = data_object(self._post(EXPORT_PATH, payload, creates=True), "transactions_export")
        try:
            task_id = validation.check_task_id(data.get("task_id"), "data.task_id")
        except LoyaltyError as error:
            raise LoyaltyResponseError(f"transactions_export: {error}") from None
        self.log.info("Export task %s created (%s .. %s, from_id=%s)", task_id, start, end, from_id)
        return task_id

    def get_task_status(self, export_task_id: str) -> dict[str, Any]:
        """Poll an export task: the ``data`` object of ``tasks/status`` as the API returned it (but
        for the token, masked wherever a server echoed it: this may well be returned to XCom).

        :param export_task_id: the id returned by :meth:`create_transactions_export`.
        """
        data: dict[str, Any] = redact_values(
            data_object(self._status_envelope(export_task_id), "tasks/status"), self._token()
        )
        return data

    def _status_envelope(self, export_task_id: str) -> dict[str, Any]:
        return self._post(STATUS_PATH, {"task_id": validation.check_task_id(export_task_id)}, STATUS_SCHEMA)

    def get_export_task_status(self, export_task_id: str) -> ExportTaskStatus:
        """Poll an export task and interpret the reply (state, checked result, failure text).

        :param export_task_id: the id returned by :meth:`create_transactions_export`.
        """
        envelope = self._status_envelope(export_task_id)
        data = data_object(envelope, "tasks/status")
        with token_redacted(self._token()):
            return ExportTaskStatus.from_reply(export_task_id, data, self.settings.token, envelope.get("error_text"))

    def download_export(
        self,
        hashed_file: str,
        destination: str | os.PathLike[str] | IO[bytes],
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        stop: threading.Event | None = None,
    ) -> int:
        """Stream an export's zip to a path or a binary file object; return the bytes written.

        The body is written in chunks as it arrives, never held in memory, and refused past
        ``max_bytes``. Truncated bodies, resets and 5xx are retried from the start (the destination
        is rewound). The URL is built by :func:`~airflow_provider_loyalty.utils.protocol.download_url`,
        which refuses any ``hashed_file`` that would leave ``/api/download/`` on the connection's
        host. An error envelope in place of the file (e.g. HTTP 200 with "File expired") raises the
        API's typed error with its text.

        :param hashed_file: the ``result.hashed_file`` of a completed export task.
        :param destination: a file path (the file is written beside it and moved there once
            complete: a failed download leaves no partial file and an earlier file untouched), or
            a seekable binary file object opened for writing.
        :param max_bytes: the largest download accepted.
        :param stop: set it (from another thread or a signal handler) to stop the download.
        """
        max_bytes = validation.check_byte_count(max_bytes, "max_bytes")  # before the request: NaN would be no cap
        with token_redacted(self._token()):
            url = download_url(self.settings, hashed_file)
            if isinstance(destination, str | os.PathLike):
                return self._download_to_path(url, os.fspath(destination), max_bytes, stop)

            def attempt() -> int:
                destination.seek(0)
                destination.truncate()
                return self._download_once(url, destination, max_bytes, stop)

            return call_with_retries(self._retry_policy, attempt)

    def _download_to_path(self, url: str, path: str, max_bytes: int, stop: threading.Event | None) -> int:
        """Download beside ``path`` and move the file there once complete: a failed download leaves
        no partial file, and a file already at ``path`` stays as it was."""
        directory, name = os.path.split(os.path.abspath(path))
        partial = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.part")
        try:
            with open(partial, "xb") as sink:

                def attempt() -> int:
                    sink.seek(0)
                    sink.truncate()
                    return self._download_once(url, sink, max_bytes, stop)

                written = call_with_retries(self._retry_policy, attempt)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)  # left only by a failure: once moved, the name is gone
        return written

    def _download_once(self, url: str, sink: IO[bytes], max_bytes: int, stop: threading.Event | None) -> int:
        started = time.monotonic()
        written = 0
        failure: LoyaltyError | None = None
        try:
            response = self.session.get(url, timeout=self.settings.timeout, stream=True, allow_redirects=False)
            with response:
                chunks = response.iter_content(DOWNLOAD_CHUNK_BYTES)
                first = next(chunks, b"") if response.status_code == 200 else b""
                if _is_an_envelope(response, first):
                    self._raise_for_envelope(response, first, chunks)
                declared = response.headers.get("Content-Length")
                if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                    raise LoyaltyUnsafeDataError(f"download of {declared} bytes is over max_download_bytes={max_bytes}")
                for chunk in itertools.chain((first,), chunks):
                    if stop is not None and stop.is_set():
                        raise LoyaltyExportStopped("download stopped: the task is being killed")
                    written += len(chunk)
                    if written > max_bytes:
                        raise LoyaltyUnsafeDataError(f"download is over max_download_bytes={max_bytes}; stopped")
                    sink.write(chunk)
        except Exception as error:
            failure = transport_error(self.settings, DOWNLOAD_PREFIX, error)
        if failure is not None:
            raise failure  # outside the handler: requests' error holds the request, its headers the token
        elapsed = max(time.monotonic() - started, 1e-9)
        self.log.debug("Downloaded %d bytes in %.2f s (%.1f MiB/s)", written, elapsed, written / elapsed / 2**20)
        return written

    def _raise_for_envelope(self, response: requests.Response, first: bytes, rest: Iterator[bytes]) -> None:
        """The API answered the download with its envelope instead of a file: raise what it says."""
        buffer = ReplyBuffer(DOWNLOAD_PREFIX, response.headers)
        for chunk in itertools.chain((first,), rest):
            buffer.add(chunk)
        check_reply(
            http_status=response.status_code,
            headers=response.headers,
            body=buffer.body(),
            token=self.settings.token,
            conn_id=self._conn_id_in_errors,
            base_url=self.settings.base_url,
            refusal_in_words=False,
            path=DOWNLOAD_PREFIX,
        )
        raise LoyaltyResponseError(
            f"download: expected a zip file, got HTTP {response.status_code} "
            f"({response.headers.get('Content-Type') or 'no Content-Type'}) with a success envelope"
        )

    # ------------------------------------------------------------------ account API

    def get_account_transactions(
        self,
        *,
        loyalty_program_id: int,
        matching: str,
        points_currency_eid: str | None = None,
        points_currency_iid: int | None = None,
        email: str | None = None,
        phone: str | None = None,
        profile_id: str | None = None,
        field_name: str | None = None,
        field_value: str | int | None = None,
        from_id: str | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        """One page of a member's transaction history: ``{"data", "next_from_id", "total_count"}``.

        :param loyalty_program_id: the loyalty program.
        :param matching: how the member is found: ``email``, ``phone``, ``profile_id`` or ``custom``.
        :param points_currency_eid: external points currency id (or give the iid).
        :param points_currency_iid: internal points currency id (or give the eid).
        :param email: the member's email, with ``matching="email"``.
        :param phone: the member's phone (international format), with ``matching="phone"``.
        :param profile_id: the member's profile id, with ``matching="profile_id"``.
        :param field_name: custom field name, with ``matching="custom"``.
        :param field_value: custom field value, with ``matching="custom"``.
        :param from_id: return records after this transaction id.
        :param limit: records per page, 1..100.
        """
        payload = self._account_payload(
            loyalty_program_id=loyalty_program_id,
            matching=matching,
            points_currency_eid=points_currency_eid,
            points_currency_iid=points_currency_iid,
            email=email,
            phone=phone,
            profile_id=profile_id,
            field_name=field_name,
            field_value=field_value,
            limit=limit,
        )
        payload["from_id"] = validation.check_cursor(from_id)
        return self._account_page(payload)

    def _account_payload(self, *, loyalty_program_id: int, matching: str, limit: int, **fields: Any) -> dict[str, Any]:
        currency = validation.check_currency(
            fields.pop("points_currency_eid", None), fields.pop("points_currency_iid", None)
        )
        return {
            "token": self.settings.token,
            "loyalty_program_id": validation.check_program_id(loyalty_program_id),
            **currency,
            **validation.check_matching(matching, **fields),
            "limit": validation.check_limit(limit),
        }

    def _account_page(self, payload: dict[str, Any]) -> dict[str, Any]:
        envelope = self._post(ACCOUNT_PATH, payload, ACCOUNT_SCHEMA)
        # The checks below quote the reply, and this endpoint's request carries the token in its
        # body: a server echoing the request into a field would put it in the error.
        with token_redacted(self._token()):
            records = _as_record_list(envelope.get("data"))
            if not isinstance(records, list) or not set(map(type, records)) <= {dict}:
                raise LoyaltyResponseError("account/transactions: expected 'data' to be a list of objects")
            total = envelope.get("total_count")
            if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
                raise LoyaltyResponseError(
                    f"account/transactions: expected total_count to be an integer, got {total!r:.80}"
                )
            # A blank cursor is an empty one (the last page); blanks around one are no part of it.
            next_from_id = cursor_text(envelope.get("next_from_id"), "account/transactions: next_from_id")
        return {"data": records, "next_from_id": next_from_id, "total_count": total}

    def iter_account_transaction_pages(self, *, limit: int = 100, **member: Any) -> Iterator[dict[str, Any]]:
        """Every page of a member's history, following ``next_from_id`` until it is empty.

        Takes the same keyword arguments as :meth:`get_account_transactions` (but ``from_id``
        starts the walk). One page is in memory at a time. A page without records but with a new
        ``next_from_id`` is followed (the API may filter a page empty); one that points back at its
        own cursor ends the walk, as does a page that is not full, holds only the cursor's own record
        (which the previous page held) and points back at its own cursor (an inclusive API's last
        page). A
        ``next_from_id`` that was already followed (a cycle of any length), or
        :data:`MAX_EMPTY_PAGES` empty pages in a row each with a new one, raise
        :class:`LoyaltyCursorError` instead of looping forever.

        Seed 001 does not say whether ``from_id`` is inclusive: an API that reads it so starts each
        page with the last record of the one before. A record whose ``transaction_id`` the previous
        page held is dropped (counted in the page's ``duplicates_dropped``), so every transaction
        comes once under either reading; a page left without records counts as an empty one.

        :param limit: records per page, 1..100 (default 100, the largest page).
        :param member: the program, currency and member, as :meth:`get_account_transactions` takes
            them (``loyalty_program_id``, ``matching``, ``points_currency_eid`` or ``_iid``, the
            matching field(s)); a ``from_id`` starts the walk after that transaction.
        """
        cursor = validation.check_cursor(member.pop("from_id", None))
        payload = self._account_payload(limit=limit, **member)
        followed: set[str | None] = {cursor}  # one short id per page: bounded by the history's pages
        previous_ids: set[Any] = set()
        empty_in_a_row = 0
        while True:
            payload["from_id"] = cursor
            page = self._account_page(payload)
            sent = len(page["data"])  # before repeats are dropped
            boundary_only = 0 < sent < payload["limit"] and all(
                isinstance(record, dict) and str(record.get("transaction_id")) == cursor for record in page["data"]
            )
            previous_ids = _drop_repeated_records(page, previous_ids)
            yield page
            next_cursor = page["next_from_id"]
            # The end: no cursor, or a page pointing back at its own cursor that is empty, or (an
            # inclusive API's last page) holds only the cursor's own record, repeated from the page
            # before, and is not full. A full such page is an API that cannot move on (limit 1).
            if not next_cursor or (next_cursor == cursor and (not sent or (boundary_only and not page["data"]))):
                return
            with token_redacted(self._token()):  # a cursor is quoted: the server may have put anything in it
                if next_cursor in followed:
                    raise LoyaltyCursorError(
                        f"account/transactions: next_from_id {next_cursor!r:.80} repeats; stopping"
                    )
                empty_in_a_row = 0 if page["data"] else empty_in_a_row + 1
                if empty_in_a_row >= MAX_EMPTY_PAGES:
                    raise LoyaltyCursorError(
                        f"account/transactions: {empty_in_a_row} empty pages in a row, each with a new next_from_id "
                        f"(the last {next_cursor!r:.80}); stopping"
                    )
            followed.add(next_cursor)
            cursor = next_cursor

    def iter_account_transactions(self, *, limit: int = 100, **member: Any) -> Iterator[dict[str, Any]]:
        """Every transaction of a member, in API order, one page in memory at a time.

        Takes the keyword arguments of :meth:`get_account_transactions`; ``limit`` defaults to
        100 (the largest page) for bulk reads.

        :param limit: records per page, 1..100 (default 100).
        :param member: as :meth:`iter_account_transaction_pages` takes them.
        """
        for page in self.iter_account_transaction_pages(limit=limit, **member):
            yield from page["data"]

    # ------------------------------------------------------------------ UI

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: ``(True, ...)`` only when the API accepted an authenticated call.

        It asks for the status of an export task id that cannot exist, which creates nothing. The
        API accepted the token when it answers ``error`` 0, or says that this task is not found
        (HTTP 404 with its error envelope) while a path that does not exist is answered differently
        (so a wrong Base URL whose every path is "not found" does not pass). Anything else — an auth
        refusal, an error inside an HTTP 200, a 4xx, a redirect (with where it points) — is
        ``(False, <the API's text>)``.

        Each request is tried once, whatever the connection's ``max_retries``: a mistyped host or
        port, or a server that is down, is reported at once instead of after a task's worth of
        backoff.
        """
        probe = f"task_connection-test-{uuid.uuid4()}"
        self._conn_id_in_errors = None
        try:
            self.__dict__["_retry_policy"] = retry_policy(dataclasses.replace(self.settings, max_retries=0), self.log)
            with token_redacted(self._token()):
                try:
                    self._post(STATUS_PATH, {"task_id": probe})  # the envelope only: error 0 is enough
                except LoyaltyApiError as error:
                    if error.code is None or isinstance(error, LoyaltyAuthError | LoyaltyRedirectError):
                        raise
                    if error.http_status == 404:
                        return self._probe_confirms(error)
                    if (
                        error.http_status is not None
                        and error.http_status < 500
                        and not _AUTH_WORDS.search(error.text)  # "token expired": refused, in its own words
                        and self._refuses_a_wrong_token(probe)
                    ):
                        return True, (
                            "Connection successful: the API accepted the token (it refuses a wrong one, and "
                            f"answered the unknown test task with error {error.code}: {error.text})"
                        )
                    raise
                return True, "Connection successful: the API accepted the token."
        except LoyaltyAuthError as error:
            return False, f"The API refused the token: {error.text}"
        except LoyaltyRedirectError as error:
            return False, error.text
        except LoyaltyApiError as error:
            return False, f"The API did not accept the call: {error}"
        except LoyaltyError as error:
            return False, str(error)
        except Exception as error:
            return False, f"{type(error).__name__}: {error}"
        finally:
            self.__dict__.pop("_retry_policy", None)  # later calls retry as the connection says
            self._conn_id_in_errors = self.loyalty_conn_id
            self.close()

    def _refuses_a_wrong_token(self, probe: str) -> bool:
        """Whether the API refuses (HTTP 401/403) the test task asked with a wrong token: then the
        error it gave this connection's token (an unknown task, told in an HTTP 200 or 400 of its
        own style) came after the token was accepted. An API that answers both alike is not."""
        wrong = dataclasses.replace(self.settings, token=f"connection-test-wrong-token-{uuid.uuid4().hex}")
        poster = _poster_for(wrong, lambda: build_session(wrong))
        body, headers = encode_request({"task_id": probe}, wrong.content_type)
        try:
            self._post_once(STATUS_PATH, body, headers, ENVELOPE_SCHEMA, via=(poster, wrong))
        except LoyaltyAuthError:
            return True
        except Exception:  # any other answer leaves the token's acceptance unproven
            return False
        finally:
            poster.close()
        return False

    def _probe_confirms(self, not_found: LoyaltyApiError) -> tuple[bool, str]:
        """Whether "task not found" came from the status endpoint, not from a Base URL that misses the API."""
        try:
            self._post(f"{STATUS_PATH}/connection-test-{uuid.uuid4().hex}", {"task_id": "none"})
        except LoyaltyApiError as unknown_path:
            if (unknown_path.http_status, unknown_path.code) == (not_found.http_status, not_found.code):
                return False, (
                    f"Every path answers HTTP 404 (error {not_found.code}: {not_found.text}); check that the "
                    "Base URL points at the API (scheme, host and path prefix)"
                )
        return True, "Connection successful: the API accepted the token (the test task id is unknown, as expected)."


def _poster_for(
    settings: LoyaltyConnectionSettings, session: Callable[[], requests.Session]
) -> ApiPoster | DirectPoster:
    """The POSTs of ``settings``: on ``requests`` (``session()``) through a proxy, else ``http.client``."""
    if settings.proxy_for(settings.base_url):
        return ApiPoster(session(), settings)
    return DirectPoster(settings)


#: An API error's text that speaks of the caller's credentials: the token refused in the API's own
#: words (an expired or revoked token answered with an error code, not HTTP 401), never "accepted".
_AUTH_WORDS = re.compile(
    r"token|auth|credential|expired|revoked|forbidden|denied|permission|unauthori[sz]ed|not allowed|api[ _-]?key",
    re.IGNORECASE,
)


def _drop_repeated_records(page: dict[str, Any], previous_ids: set[Any]) -> set[Any]:
    """Drop from ``page`` the records whose ``transaction_id`` the previous page held (an API
    reading ``from_id`` as inclusive sends the boundary record twice); return this page's ids."""
    records = page["data"]
    ids = {_record_id(record) for record in records} - {None}
    if previous_ids & ids:
        page["data"] = [record for record in records if _record_id(record) not in previous_ids]
    page["duplicates_dropped"] = len(records) - len(page["data"])
    return ids


def _record_id(record: dict[str, Any]) -> Any:
    """A record's ``transaction_id`` when it is one a set holds (text or a number), else ``None``."""
    transaction_id = record.get("transaction_id")
    return transaction_id if isinstance(transaction_id, str | int) and transaction_id != "" else None


def _as_record_list(data: Any) -> Any:
    """A page's ``data`` as a list: none for ``null``, ``""`` (an empty XML element) or ``{}`` (an
    empty PHP array). (An object keyed ``"0"``, ``"1"``, ... is already a list: the codec reads it
    so, and types its records.) Anything else is returned as it came."""
    if data is None or data == "" or data == {}:
        return []
    return data
