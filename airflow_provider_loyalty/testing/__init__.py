"""Loyalty API emulator: a real HTTP server of the whole loyalty API for tests, demos and benchmarks.

The emulator is an independent check on the provider's client: it imports nothing from the rest
of ``airflow_provider_loyalty`` (only from this package), so it cannot share a misreading of the
API with the code it tests.

Quick start::

    from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator

    with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000)) as emulator:
        emulator.set_faults([FaultRule(endpoint="status", kind="rate_limit", count=1)])
        ...  # talk to emulator.url with "Authorization: Bearer " + emulator.token
        emulator.expected_ids("2023-09-01T00:00:00Z", "2023-09-01T23:59:59Z")  # what an export must hold

Modules, one concern each: :mod:`~.server` (:class:`LoyaltyEmulator`: lifecycle and controls),
:mod:`~.transport` (HTTP server and handler), :mod:`~.api` (what each endpoint means),
:mod:`~.exports` (export tasks), :mod:`~.accounts` (member histories), :mod:`~.validation`
(request checks), :mod:`~.archive` (zip and CSV files), :mod:`~.prebuilt` (files built on disk),
:mod:`~.streaming` (download bodies), :mod:`~.control` (``/_emulator/`` endpoints),
:mod:`~.faults` (fault rules), :mod:`~.stats` (counters), :mod:`~.config`, :mod:`~.data` and
:mod:`~.dataset` (synthetic transactions), :mod:`~.codec` (JSON and XML bodies),
:mod:`~.errors` (the error envelope). Beside the emulator, for offline DAG tests: :mod:`~.s3`
(moto's S3 server on loopback) and :mod:`~.airflow_db` (a temporary Airflow home with a migrated
metadata DB, for ``dag.test()``).

Pytest users get the fixtures automatically (:mod:`~.pytest_plugin`: the emulator, a loopback S3 and
its bucket, a metadata DB): the package registers this plugin under the ``pytest11`` entry point
(with plugin autoload disabled, pass ``-p loyalty_emulator``);
the console script ``loyalty-emulator`` (or ``python -m airflow_provider_loyalty.testing``) serves it
from the command line.
"""

from __future__ import annotations

from airflow_provider_loyalty.testing.airflow_db import AirflowTestDb, migrate_airflow_home, use_airflow_home
from airflow_provider_loyalty.testing.config import (
    CSV_LINE_ENDINGS,
    CSV_STYLES,
    CURSOR_MODES,
    EMPTY_EXPORT_STYLES,
    EXPIRED_FILE_STATUSES,
    HASHED_FILE_STYLES,
    PROGRESS_STYLES,
    ZIP_MEMBER_ORDERS,
    EmulatorConfig,
)
from airflow_provider_loyalty.testing.data import TRANSACTION_FIELDS
from airflow_provider_loyalty.testing.dataset import expected_transaction_ids
from airflow_provider_loyalty.testing.errors import ERROR_CODES
from airflow_provider_loyalty.testing.faults import FAULT_KINDS, FaultRule
from airflow_provider_loyalty.testing.s3 import (
    LoopbackS3,
    S3ServerUnavailable,
    aws_connection_json,
    moto_s3_server,
    unique_bucket_name,
)
from airflow_provider_loyalty.testing.server import LoyaltyEmulator

__all__ = [
    "CSV_LINE_ENDINGS",
    "CSV_STYLES",
    "CURSOR_MODES",
    "EMPTY_EXPORT_STYLES",
    "ERROR_CODES",
    "EXPIRED_FILE_STATUSES",
    "FAULT_KINDS",
    "HASHED_FILE_STYLES",
    "PROGRESS_STYLES",
    "TRANSACTION_FIELDS",
    "ZIP_MEMBER_ORDERS",
    "AirflowTestDb",
    "EmulatorConfig",
    "FaultRule",
    "LoopbackS3",
    "LoyaltyEmulator",
    "S3ServerUnavailable",
    "aws_connection_json",
    "expected_transaction_ids",
    "migrate_airflow_home",
    "moto_s3_server",
    "unique_bucket_name",
    "use_airflow_home",
]
