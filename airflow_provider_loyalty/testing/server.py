r"""The loyalty API emulator: a real HTTP/1.1 server of the whole loyalty API on loopback.

It is an independent check on the client: it imports nothing from the rest of
``airflow_provider_loyalty`` (only from ``airflow_provider_loyalty.testing``), so a
misunderstanding of the API in the provider cannot hide in a shared helper.

Endpoints (paths below the base URL):

=====================================================  =============================================
``POST /api/v1.1/loyalty/transactions_export``         create an export task (``export``)
``POST /api/v1.1/tasks/status``                        poll an export task (``status``)
``GET  /api/download/<hashed_file>``                   the batch zip (``download``)
``POST /api/v1.1/loyalty/account/transactions``        a member's history, paged (``account``)
``/_emulator/...``                                     control endpoints (see
                                                       :mod:`~airflow_provider_loyalty.testing.control`)
=====================================================  =============================================

All four API endpoints require ``Authorization: Bearer <token>``. Requests are ``application/json``
or ``application/xml`` (``text/xml`` accepted); the answer uses the request's format (for ``GET``
requests and bodies without a usable Content-Type: XML if ``Accept`` names XML, else JSON). Every
response, errors included, carries the envelope fields ``error`` and ``error_text``:

=====  ===========  =================================================================
error  HTTP status  meaning
=====  ===========  =================================================================
0      200          success (``"Successful operation"``)
1000   500 / 503    internal error (also the ``http_500`` / ``http_503`` faults)
1001   400          validation error; text names the parameter, e.g.
                    ``Invalid parameter date_from: expected RFC3339 date-time``
1002   401          authentication failed (missing/wrong Bearer token, wrong body
                    ``token`` on the account endpoint); 403 for control endpoints
                    called from a non-loopback address
1003   404          export task not found
1004   404          member profile not found
1005   404          download not found (unknown ``hashed_file`` or task not completed)
1006   429          rate limit exceeded (``rate_limit`` fault, ``max_concurrent_requests``;
                    ``Retry-After`` header)
1007   404 / 405    unknown endpoint / method not allowed
1008   404          file expired (``file_ttl``, ``expire_files()``, ``download_gone``
                    fault; ``expired_file_status`` 410 or 200 instead of 404)
=====  ===========  =================================================================

Validation: see :mod:`~airflow_provider_loyalty.testing.validation`. Exports return exactly the
transactions whose ``created_at`` lies within ``[date_from, date_to]``, both ends inclusive,
``batch_size`` rows per task, following ``from_id`` as ``cursor_mode`` says
(:mod:`~airflow_provider_loyalty.testing.exports`).

Downloads are zips of CSV (:mod:`~airflow_provider_loyalty.testing.archive`), generated on the fly
and sent with ``Transfer-Encoding: chunked`` so memory stays flat for multi-GiB exports, or, with
``prebuilt_files``, built once on disk and sent with ``Content-Length``
(:mod:`~airflow_provider_loyalty.testing.prebuilt`).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from airflow_provider_loyalty.testing.api import LoyaltyApi
from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.dataset import expected_transaction_ids
from airflow_provider_loyalty.testing.errors import ERROR_CODES, ApiError
from airflow_provider_loyalty.testing.faults import FaultRule, FaultSet
from airflow_provider_loyalty.testing.stats import EmulatorStats
from airflow_provider_loyalty.testing.transport import EmulatorHTTPServer

__all__ = ["ERROR_CODES", "ApiError", "LoyaltyEmulator"]


class LoyaltyEmulator:
    """A running (or runnable) emulator of the loyalty API.

    Use as a context manager or call :meth:`start` / :meth:`stop`::

        with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000)) as emu:
            requests.post(f"{emu.url}/api/v1.1/loyalty/transactions_export", ...)

    ``api`` (the API's semantics), ``counters`` and ``faults`` are what the HTTP handler uses;
    tests use the methods below.

    :param config: emulator configuration (default :class:`EmulatorConfig`). Mutable while running.
    :param host: address to bind (loopback by default).
    :param port: TCP port (0: pick a free one; see :attr:`port` after :meth:`start`).
    :param ssl_context: serve HTTPS with this server-side context.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        config = config if config is not None else EmulatorConfig()
        self.host = host.strip("[]")  # "[::1]" as a URL writes it is the host ::1
        self._port = port
        self._ssl_context = ssl_context
        self.faults = FaultSet(config.seed)
        self.counters = EmulatorStats(config.request_log_limit)
        self.api = LoyaltyApi(config, self.faults, self.counters)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> EmulatorConfig:
        """The configuration (mutable; see :class:`EmulatorConfig` for when changes apply)."""
        return self.api.config

    @config.setter
    def config(self, value: EmulatorConfig) -> None:
        self.api.config = value

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LoyaltyEmulator:
        """Bind and serve in a daemon thread. Returns ``self``.

        :raises OSError: the address cannot be listened on (its text names the host and port).
        """
        if self._server is not None:
            raise RuntimeError("emulator already started")
        try:
            server = EmulatorHTTPServer((self.host, self._port), self, self._ssl_context)
        except OSError as error:
            raise OSError(
                error.errno, f"the emulator cannot listen on {self.host}:{self._port}: {error.strerror}"
            ) from error
        self.api.reopen()
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loyalty-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open (keep-alive) connections and delete pre-built files. Idempotent."""
        server, self._server = self._server, None
        self.api.close()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LoyaltyEmulator:
        """Start the emulator."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the emulator."""
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (real port once started)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (``https`` with an SSL context)."""
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}"

    @property
    def token(self) -> str:
        """The API token the emulator accepts."""
        return self.config.token

    # --- control --------------------------------------------------------------------------------
    def set_faults(self, rules: Iterable[FaultRule | Mapping[str, Any]]) -> None:
        """Replace the fault rules (reseeding their random source from ``config.seed``).

        :param rules: :class:`FaultRule` objects or their JSON dicts; ``[]`` clears.
        """
        self.faults.set(rules, seed=self.config.seed)

    def reset(self) -> None:
        """Clear counters, the request log, all export tasks and pre-built files (faults and config stay)."""
        self.api.reset()
        self.counters.clear(self.config.request_log_limit)

    def forget_tasks(self) -> None:
        """Forget every export task and its file, as a server restarted without its task store would:
        status and download answer "not found". Counters, the request log, faults and config stay."""
        self.api.reset()

    def expire_files(self, task_ids: Iterable[str] | None = None) -> int:
        """Make the files of these export tasks gone for good (downloads answer ``File expired``).

        :param task_ids: the tasks (default: every task created so far).
        :return: how many tasks' files expired.
        """
        return self.api.expire_files(task_ids)

    def expected_ids(self, date_from: str | None = None, date_to: str | None = None) -> list[str]:
        """Return the transaction ids an export of ``[date_from, date_to]`` must deliver, in order.

        Uses the current configuration (see
        :func:`~airflow_provider_loyalty.testing.dataset.expected_transaction_ids`).

        :param date_from: RFC3339 period start, inclusive (default: the first transaction).
        :param date_to: RFC3339 period end, inclusive (default: the last transaction).
        """
        return expected_transaction_ids(self.config, date_from, date_to)

    def export_tasks(self) -> list[dict[str, Any]]:
        """Every export task so far, oldest first: ``task_id``, ``period``, ``from_id``, ``total``,
        ``next_from_id``, ``hashed_file``, ``expired``, ``failed``."""
        return [task.describe() for task in self.api.tasks.all()]

    def stats(self) -> dict[str, Any]:
        """Counters and the request log as a JSON-ready dict.

        Keys: ``requests`` (per endpoint: export, status, download, account, control, unknown),
        ``requests_total``, ``responses_by_status``, ``faults_applied`` (per kind),
        ``export_tasks_created``, ``export_tasks_by_period`` (``"<date_from>/<date_to>"`` in UTC
        RFC3339 -> tasks created), ``connections``, ``open_connections``, ``download_bytes`` (zip
        bytes sent), ``download_csv_bytes``, ``downloads_completed``, ``downloads_gone`` (answers
        ``File expired`` for ``file_ttl`` / ``expire_files``), ``prebuilt_files_built``,
        ``concurrency_rejections`` (429 for ``max_concurrent_requests``), ``requests_in_flight``,
        ``requests_in_flight_peak``, ``tasks`` and ``request_log`` (received_at: epoch seconds, method, path,
        endpoint, status, request_content_type, content_type, fault; never headers).
        """
        server = self._server
        open_connections = len(server.open_sockets) if server is not None else 0
        return self.counters.snapshot(len(self.api.tasks), open_connections)
