"""What the cluster tests expect: the emulator's data, each interval's ids, an exact S3 export.

The emulator serves :data:`DAYS` days of transactions from 2024-01-01, :data:`ROWS_PER_DAY` a day
(``created_at`` spread evenly), in export batches of :data:`BATCH_SIZE` rows: every daily interval
takes :data:`BATCHES_PER_DAY` export tasks. :func:`expected_ids` asks the emulator which ids an
interval holds (from its synthetic data, not through the API). :func:`check_exact_export` proves one interval landed exactly: the manifest, its
parts (bytes, sha256, rows), the ids in order without loss or duplicates, and no stray key under
the interval's prefix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator

BACKFILL_DAG = "loyalty_cluster_backfill"
RATE_LIMITED_DAG = "loyalty_cluster_rate_limited"
DEADLINE_DAG = "loyalty_cluster_deadline"
DAG_IDS = (BACKFILL_DAG, RATE_LIMITED_DAG, DEADLINE_DAG)
EXPORT_TASK = "export"

FIRST_DAY = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 14
ROWS_PER_DAY = 600
BATCH_SIZE = 250
BATCHES_PER_DAY = math.ceil(ROWS_PER_DAY / BATCH_SIZE)
#: Seconds an export task stays ``in_progress``: long enough that every batch defers.
TASK_DURATION = 2.0
#: The export operator's ``poll_interval`` in the cluster DAGs (``LOYALTY_CLUSTER_POLL_INTERVAL``).
POLL_INTERVAL = 1.0
#: ``execution_timeout`` of the deadline DAG's export task (``LOYALTY_CLUSTER_DEADLINE_TIMEOUT``).
DEADLINE_TIMEOUT = 30.0


def dag_environment() -> dict[str, str]:
    """What the cluster DAG file reads from the environment of every Airflow process."""
    return {
        "LOYALTY_CLUSTER_POLL_INTERVAL": str(POLL_INTERVAL),
        "LOYALTY_CLUSTER_DEADLINE_TIMEOUT": str(DEADLINE_TIMEOUT),
    }


def cluster_emulator_config() -> EmulatorConfig:
    """The emulator's data for every cluster test: 14 days, 600 rows a day, 250-row batches."""
    last = FIRST_DAY + timedelta(days=DAYS) - timedelta(seconds=1)
    return EmulatorConfig(
        transactions=DAYS * ROWS_PER_DAY,
        period_start=_rfc3339(FIRST_DAY),
        period_end=_rfc3339(last),
        batch_size=BATCH_SIZE,
        task_duration=TASK_DURATION,
    )


def prepare_emulator(emulator: LoyaltyEmulator, **changes: Any) -> None:
    """Forget earlier export tasks, counters and faults; serve the cluster data with ``changes`` on top.

    :param emulator: the session's emulator.
    :param changes: :class:`EmulatorConfig` fields to set for this test.
    """
    emulator.reset()
    emulator.set_faults([])
    emulator.config.update({**cluster_emulator_config().to_dict(), **changes})


def period_key(start: datetime, end: datetime) -> str:
    """The emulator's ``export_tasks_by_period`` key of the data interval ``[start, end)``.

    :param start: interval start.
    :param end: interval end (exclusive).
    """
    return f"{_rfc3339(start)}/{_rfc3339(end - timedelta(seconds=1))}"


def day(index: int) -> datetime:
    """The start of the ``index``-th daily interval (0 = 2024-01-01).

    :param index: 0-based day.
    """
    return FIRST_DAY + timedelta(days=index)


def expected_ids(emulator: LoyaltyEmulator, start: datetime, end: datetime) -> list[str]:
    """Ids of the transactions of the data interval ``[start, end)`` in export order.

    :param emulator: the emulator (it knows each period's ids from its synthetic data).
    :param start: interval start (inclusive).
    :param end: interval end (exclusive, as Airflow's data interval; the API's end is inclusive).
    """
    return emulator.expected_ids(_rfc3339(start), _rfc3339(end - timedelta(seconds=1)))


@dataclass(frozen=True)
class LandedExport:
    """One interval's export as found in S3.

    :param prefix: the interval's key prefix.
    :param parts: parts listed in the manifest.
    :param rows: data rows over all parts.
    :param export_task_ids: the API export task of each part, in part order.
    """

    prefix: str
    parts: int
    rows: int
    export_task_ids: tuple[str, ...]


def check_exact_export(s3_client: Any, bucket: str, prefix: str, expected: list[str]) -> LandedExport:
    """Assert that ``s3://bucket/prefix/`` holds exactly the export of ``expected`` ids.

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the interval's prefix (without a trailing slash).
    :param expected: the interval's transaction ids in order.
    :raises AssertionError: naming what differs.
    """
    keys = _list_keys(s3_client, bucket, f"{prefix}/")
    manifest_key = f"{prefix}/_manifest.json"
    assert manifest_key in keys, f"{prefix}: no _manifest.json; keys: {sorted(keys)}"
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    parts = manifest["parts"]
    part_keys = [part["key"] for part in parts]
    stray = sorted(set(keys) - {manifest_key, *part_keys})
    assert not stray, f"{prefix}: keys the manifest does not list: {stray}"
    missing = sorted(set(part_keys) - set(keys))
    assert not missing, f"{prefix}: parts the manifest lists but S3 lacks: {missing}"
    ids: list[str] = []
    for part in parts:
        body = s3_client.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        assert len(body) == part["bytes"], f"{part['key']}: {len(body)} bytes, the manifest says {part['bytes']}"
        assert hashlib.sha256(body).hexdigest() == part["sha256"], f"{part['key']}: sha256 differs from the manifest"
        part_ids = _csv_ids(body)
        assert len(part_ids) == part["rows"], f"{part['key']}: {len(part_ids)} rows, the manifest says {part['rows']}"
        ids.extend(part_ids)
    assert manifest["total_rows"] == len(expected), f"{prefix}: total_rows {manifest['total_rows']} != {len(expected)}"
    if ids != expected:
        lost = len(set(expected) - set(ids))
        doubled = len(ids) - len(set(ids))
        raise AssertionError(f"{prefix}: ids differ from the emulator's ({lost} missing, {doubled} doubled)")
    return LandedExport(
        prefix=prefix,
        parts=len(parts),
        rows=len(ids),
        export_task_ids=tuple(str(part.get("export_task_id")) for part in parts),
    )


def _list_keys(s3_client: Any, bucket: str, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def _csv_ids(body: bytes) -> list[str]:
    reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
    header = next(reader)
    column = header.index("transaction_id")
    return [row[column] for row in reader if row]


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
