"""LoyaltyHook: the loyalty platform's HTTP API, synchronously, for workers."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import IO, Any

import requests
from airflow.providers.common.compat.sdk import mask_secret
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from tenacity import Retrying
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyValidationError,
)
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.codec import ACCOUNT_LIST_FIELDS, MIME_TYPES, encode_body
from airflow_provider_loyalty.utils.connection import (
    USER_AGENT,
    LoyaltyConnectionSettings,
    ca_bundle_from_env,
    settings_from_parts,
)
from airflow_provider_loyalty.utils.connection_form import UI_FIELD_BEHAVIOUR
from airflow_provider_loyalty.utils.protocol import (
    ACCOUNT_PATH,
    EXPORT_PATH,
    MAX_REPLY_BYTES,
    STATUS_PATH,
    check_reply,
    data_object,
    download_url,
)
from airflow_provider_loyalty.utils.retry import retry_policy

DOWNLOAD_CHUNK_BYTES = 1024 * 1024


class _NoRedirectSession(requests.Session):
    """A session that never resolves redirects: a 3xx comes back unread, so :func:`check_reply`
    reports it (not retried) and its body stays under the reply cap. (With ``allow_redirects=False``
    plain ``requests`` still reads the 3xx body whole to prepare ``Response.next``.)"""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class _BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>``; ``repr`` never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


@contextmanager
def _transport_errors(path: str) -> Iterator[None]:
    """Map requests/urllib3 failures to typed errors; TLS failures are not retried."""
    try:
        yield
    except LoyaltyError:
        raise
    except requests.exceptions.SSLError as err:
        raise LoyaltyApiError(None, f"{path}: TLS verification failed: {err}", None) from None
    except requests.exceptions.Timeout:
        raise LoyaltyTransientError(None, f"{path}: timed out", None) from None
    except (requests.exceptions.RequestException, Urllib3HTTPError, OSError) as err:
        raise LoyaltyTransientError(None, f"{path}: connection failed ({type(err).__name__})", None) from None


class LoyaltyHook(BaseHook):
    """
    Talk to the loyalty platform's HTTP API: export tasks, their status and files, member histories.

    One ``requests.Session`` per hook keeps connections alive across calls. Every request carries
    ``Authorization: Bearer <token>``; bodies are JSON or XML per the connection; replies are
    decoded by their own Content-Type and checked for the ``error`` / ``error_text`` envelope.
    Transient failures (429 with ``Retry-After``, 5xx, timeouts, resets) are retried with
    exponential backoff and jitter; auth and validation errors never are. Redirects are not
    followed, so the token is only ever sent to the configured host.

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
        self.loyalty_conn_id = loyalty_conn_id
        self._overrides: dict[str, Any] = {
            "content_type": content_type,
            "timeout": timeout,
            "max_retries": max_retries,
            "verify_ssl": verify_ssl,
            "retry_backoff": retry_backoff,
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden and relabelled fields of the connection form (also in ``get_provider_info``)."""
        return UI_FIELD_BEHAVIOUR

    @cached_property
    def settings(self) -> LoyaltyConnectionSettings:
        """The connection's settings, read once; the token is registered with the secrets masker."""
        conn = self.get_connection(self.loyalty_conn_id)
        settings = settings_from_parts(
            host=conn.host,
            password=conn.password,
            extra=conn.extra_dejson,
            schema=conn.schema,
            port=conn.port,
            overrides=self._overrides,
        )
        mask_secret(settings.token)
        return settings

    @cached_property
    def session(self) -> requests.Session:
        """The hook's HTTP session: keep-alive, Bearer auth, proxies and CA bundle from the environment."""
        session = _NoRedirectSession()
        # Auth as an AuthBase (not a bare header): requests then never replaces it with ~/.netrc.
        session.auth = _BearerAuth(self.settings.token)
        session.headers.update(
            {
                "User-Agent": USER_AGENT,
                "Accept": f"{MIME_TYPES[self.settings.content_type]}, */*;q=0.5",
            }
        )
        # The environment (proxies, REQUESTS_CA_BUNDLE) is read once here, not re-scanned by requests on
        # every call; ``verify`` also goes with each request so nothing can override verify_ssl/ca_bundle.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(self.settings.base_url))
        session.verify = self._verify
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @cached_property
    def _verify(self) -> bool | str:
        """``verify`` for requests: the connection's setting, or the environment's CA bundle."""
        return ca_bundle_from_env(self.settings.verify)

    def close(self) -> None:
        """Close the session's pooled connections."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    # ------------------------------------------------------------------ transport

    def _retrying(self) -> Retrying:
        return Retrying(**retry_policy(self.settings, self.log))

    def _post(self, path: str, payload: dict[str, Any], list_fields: frozenset[str] = frozenset()) -> dict[str, Any]:
        """POST a body to an API path, with retries; return the checked envelope."""
        content_type = self.settings.content_type
        body = encode_body(payload, content_type)
        headers = {"Content-Type": MIME_TYPES[content_type]}
        for attempt in self._retrying():
            with attempt:
                return self._post_once(path, body, headers, list_fields)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _post_once(
        self, path: str, body: bytes, headers: dict[str, str], list_fields: frozenset[str]
    ) -> dict[str, Any]:
        started = time.monotonic()
        with _transport_errors(path):
            response = self.session.post(
                self.settings.url(path),
                data=body,
                headers=headers,
                timeout=self.settings.timeout,
                stream=True,
                allow_redirects=False,
                verify=self._verify,
            )
            with response:
                reply = self._read_capped(response, path)
        self.log.debug("POST %s -> HTTP %s in %.0f ms", path, response.status_code, 1000 * (time.monotonic() - started))
        return check_reply(
            http_status=response.status_code,
            headers=response.headers,
            body=reply,
            token=self.settings.token,
            list_fields=list_fields,
        )

    @staticmethod
    def _read_capped(response: requests.Response, path: str) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
            raise LoyaltyResponseError(f"{path}: reply of {declared} bytes is over the {MAX_REPLY_BYTES} byte cap")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise LoyaltyResponseError(f"{path}: reply is over the {MAX_REPLY_BYTES} byte cap")
            chunks.append(chunk)
        return b"".join(chunks)

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
        :param date_from: period start (inclusive): datetime or RFC3339 string.
        :param date_to: period end (inclusive): datetime or RFC3339 string.
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
        data = data_object(self._post(EXPORT_PATH, payload), "transactions_export")
        task_id = data.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise LoyaltyResponseError(f"transactions_export: expected data.task_id to be a string, got {task_id!r}")
        self.log.info("Export task %s created (%s .. %s, from_id=%s)", task_id, start, end, from_id)
        return task_id

    def get_task_status(self, export_task_id: str) -> dict[str, Any]:
        """Poll an export task: ``{"status", "progress", "result"?}`` as the API returned it.

        :param export_task_id: the id returned by :meth:`create_transactions_export`.
        """
        if not isinstance(export_task_id, str) or not export_task_id.strip():
            raise LoyaltyValidationError("export_task_id", f"expected a task id string, got {export_task_id!r}")
        return data_object(self._post(STATUS_PATH, {"task_id": export_task_id}), "tasks/status")

    def download_export(self, hashed_file: str, destination: str | os.PathLike[str] | IO[bytes]) -> int:
        """Stream an export's zip to a path or a binary file object; return the bytes written.

        The body is written in chunks as it arrives, never held in memory. Truncated bodies,
        resets and 5xx are retried from the start (the destination is rewound); the URL is built
        by :func:`~airflow_provider_loyalty.utils.protocol.download_url`, which refuses any
        ``hashed_file`` that would leave ``/api/download/`` on the connection's host.

        :param hashed_file: the ``result.hashed_file`` of a completed export task.
        :param destination: a file path, or a seekable binary file object opened for writing.
        """
        url = download_url(self.settings, hashed_file)
        for attempt in self._retrying():
            with attempt:
                if isinstance(destination, str | os.PathLike):
                    with open(destination, "wb") as sink:
                        return self._download_once(url, sink)
                destination.seek(0)
                destination.truncate()
                return self._download_once(url, destination)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _download_once(self, url: str, sink: IO[bytes]) -> int:
        started = time.monotonic()
        written = 0
        with _transport_errors("/api/download/"):
            response = self.session.get(
                url, timeout=self.settings.timeout, stream=True, allow_redirects=False, verify=self._verify
            )
            with response:
                if response.status_code != 200:
                    check_reply(
                        http_status=response.status_code,
                        headers=response.headers,
                        body=self._read_capped(response, "/api/download/"),
                        token=self.settings.token,
                    )
                    raise LoyaltyResponseError(f"download: unexpected HTTP {response.status_code}")
                for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                    sink.write(chunk)
                    written += len(chunk)
        elapsed = max(time.monotonic() - started, 1e-9)
        self.log.debug("Downloaded %d bytes in %.2f s (%.1f MiB/s)", written, elapsed, written / elapsed / 2**20)
        return written

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
        return {
            "token": self.settings.token,
            "loyalty_program_id": validation.check_program_id(loyalty_program_id),
            **validation.check_currency(
                fields.pop("points_currency_eid", None), fields.pop("points_currency_iid", None)
            ),
            **validation.check_matching(matching, **fields),
            "limit": validation.check_limit(limit),
        }

    def _account_page(self, payload: dict[str, Any]) -> dict[str, Any]:
        envelope = self._post(ACCOUNT_PATH, payload, list_fields=ACCOUNT_LIST_FIELDS)
        records = envelope.get("data")
        if records is None or records == "":
            records = []
        if not isinstance(records, list) or not all(isinstance(item, dict) for item in records):
            raise LoyaltyResponseError("account/transactions: expected 'data' to be a list of objects")
        total = envelope.get("total_count")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int)):
            raise LoyaltyResponseError(f"account/transactions: expected total_count to be an integer, got {total!r}")
        next_from_id = envelope.get("next_from_id") or ""
        if not isinstance(next_from_id, str):
            raise LoyaltyResponseError(
                f"account/transactions: expected next_from_id to be a string, got {next_from_id!r}"
            )
        return {"data": records, "next_from_id": next_from_id, "total_count": total}

    def iter_account_transaction_pages(self, *, limit: int = 100, **member: Any) -> Iterator[dict[str, Any]]:
        """Every page of a member's history, following ``next_from_id`` until it is empty.

        Takes the same keyword arguments as :meth:`get_account_transactions` (but ``from_id``
        starts the walk). One page is in memory at a time. A ``next_from_id`` that repeats
        raises :class:`LoyaltyCursorError` instead of looping forever.
        """
        cursor = validation.check_cursor(member.pop("from_id", None))
        payload = self._account_payload(limit=limit, **member)
        seen_cursor: str | None = None
        while True:
            payload["from_id"] = cursor
            page = self._account_page(payload)
            yield page
            next_cursor = page["next_from_id"]
            if not next_cursor or not page["data"]:
                return
            if next_cursor in (cursor, seen_cursor):
                raise LoyaltyCursorError(f"account/transactions: next_from_id {next_cursor!r} repeats; stopping")
            seen_cursor, cursor = cursor, next_cursor

    def iter_account_transactions(self, *, limit: int = 100, **member: Any) -> Iterator[dict[str, Any]]:
        """Every transaction of a member, in API order, one page in memory at a time.

        Takes the keyword arguments of :meth:`get_account_transactions`; ``limit`` defaults to
        100 (the largest page) for bulk reads.
        """
        for page in self.iter_account_transaction_pages(limit=limit, **member):
            yield from page["data"]

    # ------------------------------------------------------------------ UI

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: reach the API and check that it accepts the token.

        Asks for the status of a task id that cannot exist: "not found" proves the host answers
        and the token was accepted, without creating anything.
        """
        try:
            self.get_task_status(f"task_connection-test-{uuid.uuid4()}")
        except LoyaltyAuthError as err:
            return False, f"The API refused the token: {err.text}"
        except LoyaltyApiError as err:
            if err.http_status is not None and err.http_status < 500:
                return True, "Connection successful: the API answered and accepted the token."
            return False, f"The API answered with an error: {err}"
        except LoyaltyError as err:
            return False, str(err)
        except Exception as err:
            return False, f"{type(err).__name__}: {err}"
        return True, "Connection successful."
