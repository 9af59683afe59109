"""csv.gz and parquet parts through both export operators, verified by loyalty-verify and read back
(issue 18); lineage of the file export operator; verify=True."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from airflow_provider_loyalty.verify import verify_manifest
from tests.support.helpers import all_transaction_ids, point_connection_at
from tests.support.operator_driver import context_for

PREFIX = "formats/2023-09"


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.05)


@pytest.fixture
def emulator(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator)
    return loyalty_emulator


def ids_of(payloads: list[bytes], output_format: str) -> list[str]:
    """Transaction ids of stored parts, read back with gzip / pyarrow as a consumer would."""
    ids: list[str] = []
    for payload in payloads:
        if output_format == "parquet":
            import pyarrow.parquet as pq

            ids.extend(pq.read_table(io.BytesIO(payload)).column("transaction_id").to_pylist())
            continue
        text = (gzip.decompress(payload) if output_format == "csv.gz" else payload).decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        column = next(reader).index("transaction_id")
        ids.extend(row[column] for row in reader if row)
    return ids


@pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
def test_a_compressed_or_columnar_export_lands_locally_and_verifies(emulator, tmp_path: Path, output_format):
    if output_format == "parquet":
        pytest.importorskip("pyarrow")
    manifest = LoyaltyExportOperator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        output_path=str(tmp_path),
        output_format=output_format,
        poll_interval=0.05,
        deferrable=False,
        verify=True,  # verify_manifest runs right after the manifest is written
    ).execute(context_for())
    assert manifest["output_format"] == output_format
    names = [Path(part["key"]).name for part in manifest["parts"]]
    assert names == [f"part-{index:05d}.{output_format}" for index in range(len(names))]
    assert ids_of([(tmp_path / name).read_bytes() for name in names], output_format) == all_transaction_ids(emulator)
    report = verify_manifest(str(tmp_path))
    assert report.intact and report.rows == 2500, report.to_text()


@pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
def test_a_compressed_or_columnar_export_lands_in_s3_and_verifies(emulator, s3_bucket, s3_client, output_format):
    if output_format == "parquet":
        pytest.importorskip("pyarrow")
    manifest = LoyaltyTransactionsToS3Operator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        s3_bucket=s3_bucket,
        s3_key_prefix=PREFIX,
        output_format=output_format,
        poll_interval=0.05,
        deferrable=False,
        verify=True,
    ).execute(context_for())
    payloads = [s3_client.get_object(Bucket=s3_bucket, Key=part["key"])["Body"].read() for part in manifest["parts"]]
    for part, payload in zip(manifest["parts"], payloads, strict=True):
        assert part["key"].endswith(f".{output_format}") and part["bytes"] == len(payload)
    assert ids_of(payloads, output_format) == all_transaction_ids(emulator)
    assert verify_manifest(manifest["manifest"]).intact


def test_csv_gz_stores_far_fewer_bytes_than_csv(emulator, tmp_path: Path):
    sizes: dict[str, Any] = {}
    for output_format in ("csv", "csv.gz"):
        manifest = LoyaltyExportOperator(
            task_id="export",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            output_path=str(tmp_path / output_format.replace(".", "_")),
            output_format=output_format,
            poll_interval=0.05,
            deferrable=False,
        ).execute(context_for())
        sizes[output_format] = manifest["total_bytes"]
    assert sizes["csv.gz"] * 3 < sizes["csv"]


def test_the_file_export_has_one_lineage_output_per_export(emulator, tmp_path: Path):
    pytest.importorskip("airflow.providers.openlineage")
    operator = LoyaltyExportOperator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        output_path=str(tmp_path),
        poll_interval=0.05,
        deferrable=False,
    )
    manifest = operator.execute(context_for())
    lineage = operator.get_openlineage_facets_on_complete(None)
    assert [(source.namespace, source.name) for source in lineage.inputs] == [
        (emulator.url, "loyalty_program/123/points_transactions")
    ]
    assert [(out.namespace, out.name) for out in lineage.outputs] == [("file", str(tmp_path))]
    assert len(manifest["parts"]) == 3  # three parts, one dataset
    assert json.loads((tmp_path / "_manifest.json").read_text())["manifest"] == f"file://{tmp_path}/_manifest.json"
