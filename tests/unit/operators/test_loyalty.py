"""The operators of ``operators/loyalty.py`` against the emulator (and moto's S3 server):
LoyaltyExportOperator (batches, exactly-once, faults, deferral, output formats, lineage) and
LoyaltyAccountTransactionsOperator (a member's whole history as JSON Lines)."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyBatchUnusableError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportTaskFailed,
    LoyaltyNotFoundError,
    LoyaltyUnsafeDataError,
    LoyaltyValidationError,
)
from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator, LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from airflow_provider_loyalty.verify import verify_manifest
from tests.support.helpers import all_transaction_ids, csv_ids, point_connection_at, requests_seen
from tests.support.operator_driver import DeferralLog, context_for, run_with_deferrals

N = 2500


def export_operator(output: Path | str, **kwargs) -> LoyaltyExportOperator:
    params = {
        "task_id": "export",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "output_path": str(output),
        "poll_interval": 0.05,
        "deferrable": False,
        **kwargs,
    }
    return LoyaltyExportOperator(**params)


def part_paths(output: Path, manifest: dict) -> list[str]:
    return [str(output / Path(part["key"]).name) for part in manifest["parts"]]


PREFIX = "formats/2023-09"


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


def member_operator(tmp_path, **kwargs) -> LoyaltyAccountTransactionsOperator:
    params = {
        "task_id": "member",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "matching": "email",
        "member_email": "member0@example.com",
        "output_path": str(tmp_path / "member.jsonl"),
        **kwargs,
    }
    return LoyaltyAccountTransactionsOperator(**params)


def read_jsonl(path: str) -> list[dict]:
    with open(path.removeprefix("file://"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


class TestLoyaltyExportOperator:
    """LoyaltyExportOperator: batches, exactly-once, faults, verification, deferral."""

    @pytest.fixture
    def loyalty_emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(transactions=N, batch_size=1000, task_duration=0.05)

    @pytest.fixture(params=["json", "xml"])
    def content_type(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def emulator(
        self, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str
    ) -> LoyaltyEmulator:
        point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type)
        return loyalty_emulator

    @pytest.mark.parametrize("cursor_mode", ["exclusive", "inclusive", "next_row"])
    def test_every_transaction_exactly_once_in_every_cursor_mode(
        self, emulator: LoyaltyEmulator, tmp_path, cursor_mode
    ):
        emulator.config.cursor_mode = cursor_mode
        manifest = export_operator(tmp_path).execute(context_for())
        ids = csv_ids(part_paths(tmp_path, manifest))
        assert ids == all_transaction_ids(emulator)  # complete, in order, no duplicates
        assert len(manifest["parts"]) >= 3
        assert manifest["total_rows"] == N
        assert manifest["duplicates_dropped"] == (len(manifest["parts"]) - 1 if cursor_mode == "inclusive" else 0)
        on_disk = json.loads((tmp_path / "_manifest.json").read_text())
        assert {k: v for k, v in on_disk.items() if k != "manifest"} == {
            k: v for k, v in manifest.items() if k != "manifest"
        }
        assert not (tmp_path / "_manifest.inprogress.json").exists()

    def test_manifest_matches_the_parts(self, emulator: LoyaltyEmulator, tmp_path):
        import hashlib

        manifest = export_operator(tmp_path).execute(context_for())
        assert manifest["format_version"] == 1
        assert (manifest["date_from"], manifest["date_to"]) == ("2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z")
        assert manifest["points_currency_eid"] == "bonus_points" and manifest["points_currency_iid"] is None
        for part, path in zip(manifest["parts"], part_paths(tmp_path, manifest), strict=True):
            data = Path(path).read_bytes()
            assert part["bytes"] == len(data)
            assert part["sha256"] == hashlib.sha256(data).hexdigest()
            assert part["rows"] == len(csv_ids([path]))
            assert part["export_task_id"].startswith("task_")
        cursors = [(p["from_id"], p["next_from_id"]) for p in manifest["parts"]]
        assert cursors[0][0] is None and cursors[-1][1] == ""
        assert all(prev[1] == cur[0] for prev, cur in zip(cursors, cursors[1:], strict=False))
        json.dumps(manifest)  # XCom-safe: metadata only

    def test_rows_are_copied_byte_for_byte(self, emulator: LoyaltyEmulator, tmp_path):
        """The part holds the server's CSV bytes (quoted commas, quotes and newlines untouched)."""
        from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

        export_operator(tmp_path, keep_zip=True).execute(context_for())
        with zipfile.ZipFile(tmp_path / "part-00000.zip") as archive:
            original = archive.read(archive.namelist()[0])
        assert (tmp_path / "part-00000.csv").read_bytes() == original
        assert b'""' in original and b'"\n' not in original.split(b"\r\n")[0]
        assert LoyaltyHook is not None

    def test_deferrable_and_worker_modes_give_identical_parts(self, emulator: LoyaltyEmulator, tmp_path):
        in_worker = export_operator(tmp_path / "a").execute(context_for())
        emulator.config.task_duration = 1.0  # each next batch still runs when the previous one has landed
        log = DeferralLog()
        deferred = run_with_deferrals(export_operator(tmp_path / "b", deferrable=True), context_for(), log)
        assert log.deferrals >= 3 and all(event["status"] == "success" for event in log.events)
        for kwargs in log.trigger_kwargs:
            json.dumps(kwargs)  # primitives only
        digests = lambda m: [(p["rows"], p["bytes"], p["sha256"]) for p in m["parts"]]  # noqa: E731
        assert digests(in_worker) == digests(deferred)

    @pytest.mark.parametrize(
        ("endpoint", "kind"),
        [("export", "http_503"), ("status", "rate_limit"), ("status", "reset"), ("download", "truncate")],
    )
    def test_a_transient_fault_in_each_phase_is_survived(self, emulator: LoyaltyEmulator, tmp_path, endpoint, kind):
        emulator.set_faults([FaultRule(endpoint=endpoint, kind=kind, count=2, params={"retry_after": 0.05})])
        manifest = export_operator(tmp_path).execute(context_for())
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)
        assert emulator.stats()["faults_applied"].get(kind) == 2

    def test_failed_task_fails_with_api_text_and_leaves_no_manifest(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.set_faults(
            [FaultRule(endpoint="status", kind="task_failed", params={"status": "error", "text": "disk full"})]
        )
        with pytest.raises(LoyaltyExportTaskFailed, match="disk full"):
            export_operator(tmp_path).execute(context_for())
        assert not (tmp_path / "_manifest.json").exists()

    def test_failed_task_in_deferrable_mode(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.config.task_duration = 0.5
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "quota exceeded"})])
        with pytest.raises(LoyaltyError, match="quota exceeded"):
            run_with_deferrals(export_operator(tmp_path, deferrable=True), context_for())
        assert not (tmp_path / "_manifest.json").exists()

    def test_failed_rerun_keeps_the_previous_export_provable(self, emulator: LoyaltyEmulator, tmp_path):
        """A re-run stages its parts: when it fails, the last complete export and its parts stay as they were."""
        export_operator(tmp_path).execute(context_for())
        before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
        emulator.config.batch_size = 700
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", count=None, params={"text": "boom"})])
        with pytest.raises(LoyaltyExportTaskFailed, match="boom"):
            export_operator(tmp_path, resume=False).execute(context_for())
        after = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
        assert {name: after[name] for name in before} == before  # manifest and every part byte-identical
        manifest = json.loads(before["_manifest.json"])
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)

    def test_rerun_replaces_the_set(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.config.batch_size = 500
        first = export_operator(tmp_path).execute(context_for())
        emulator.config.batch_size = 1200
        second = export_operator(tmp_path).execute(context_for())
        assert len(first["parts"]) == 5 and len(second["parts"]) == 3
        assert sorted(p.name for p in tmp_path.glob("part-*")) == [f"part-0000{i}.csv" for i in range(3)]
        assert csv_ids(part_paths(tmp_path, second)) == all_transaction_ids(emulator)

    def test_replace_false_refuses_to_overwrite(self, emulator: LoyaltyEmulator, tmp_path):
        export_operator(tmp_path).execute(context_for())
        with pytest.raises(LoyaltyError, match="replace=True"):
            export_operator(tmp_path, replace=False).execute(context_for())

    def test_row_count_mismatch_is_created_again_then_fails(self, emulator: LoyaltyEmulator, tmp_path, monkeypatch):
        """A batch that keeps failing verification is created again from its cursor, twice, then the
        task fails saying what was tried (never a replay of the same task)."""
        from airflow_provider_loyalty.export import loop as _export

        real = _export.write_part
        monkeypatch.setattr(
            _export, "write_part", lambda *a, **k: real(*a, **{**k, "expected_rows": k["expected_rows"] + 1})
        )
        with pytest.raises(LoyaltyBatchUnusableError, match="row count mismatch") as caught:
            export_operator(tmp_path).execute(context_for())
        assert "after creating it 3 times" in str(caught.value)
        first_batches = [task for task in emulator.export_tasks() if task["from_id"] is None]
        assert len(first_batches) == 3 and all(task["task_id"] in str(caught.value) for task in first_batches)
        assert not (tmp_path / "_manifest.json").exists()

    def test_looping_cursor_is_caught(self, emulator: LoyaltyEmulator, tmp_path):
        first_batch_cursor = None
        emulator.config.batch_size = 1000

        def stuck(*_args, **_kwargs):
            return first_batch_cursor

        # The emulator serves a real cursor; freeze it by exporting the same from_id forever.
        emulator.config.cursor_mode = "exclusive"
        operator = export_operator(tmp_path, max_batches=50)
        from airflow_provider_loyalty.export import loop as _export

        original = _export.ExportLoop._check_cursor

        def repeat_the_cursor(self, progress, task, result):
            if progress.recent_cursors:
                result = dataclasses.replace(result, next_from_id=progress.recent_cursors[-1])
            return original(self, progress, task, result)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_export.ExportLoop, "_check_cursor", repeat_the_cursor)
            with pytest.raises(LoyaltyCursorError, match="already used"):
                operator.execute(context_for())
        assert stuck() is None

    def test_max_batches_is_enforced(self, emulator: LoyaltyEmulator, tmp_path):
        with pytest.raises(LoyaltyCursorError, match="max_batches=2"):
            export_operator(tmp_path, max_batches=2).execute(context_for())
        assert not (tmp_path / "_manifest.json").exists()

    def test_hostile_hashed_file_fails_closed(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.config.hashed_file_override = "../../../etc/passwd"
        with pytest.raises(LoyaltyUnsafeDataError):
            export_operator(tmp_path).execute(context_for())
        assert requests_seen(emulator, "download") == 0
        assert not (tmp_path / "_manifest.json").exists()

    def test_date_defaults_and_validation(self, emulator: LoyaltyEmulator, tmp_path):
        manifest = export_operator(tmp_path).execute(context_for("2023-09-10T00:00:00Z", "2023-09-11T00:00:00Z"))
        assert (manifest["date_from"], manifest["date_to"]) == ("2023-09-10T00:00:00Z", "2023-09-10T23:59:59Z")
        assert 0 < manifest["total_rows"] < N
        with pytest.raises(LoyaltyValidationError, match="date_from"):
            export_operator(tmp_path, date_from="2023-09-30", date_to="2023-09-01")
        with pytest.raises(LoyaltyValidationError, match="points_currency"):
            export_operator(tmp_path, points_currency_iid=1)
        with pytest.raises(LoyaltyValidationError, match="max_batches"):
            export_operator(tmp_path, max_batches=0)
        assert requests_seen(emulator) > 0

    def test_object_storage_output_path(self, emulator: LoyaltyEmulator, tmp_path):
        manifest = export_operator(f"file://{tmp_path}/osp").execute(context_for())
        assert manifest["parts"][0]["key"].startswith("file://")
        assert csv_ids(part_paths(tmp_path / "osp", manifest)) == all_transaction_ids(emulator)

    # ---------------------------------------------------------------------- verification of archives

    def test_s3_object_storage_output_path(self, emulator: LoyaltyEmulator, s3_bucket, s3_client):
        """``output_path`` as an ``s3://`` ObjectStoragePath URL (fsspec/s3fs through the AWS connection)."""
        manifest = export_operator(f"s3://{s3_bucket}/exports/run-1", output_conn_id="aws_default").execute(
            context_for()
        )
        keys = sorted(item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
        assert keys == ["exports/run-1/_manifest.json"] + [f"exports/run-1/part-0000{i}.csv" for i in range(3)]
        body = s3_client.get_object(Bucket=s3_bucket, Key="exports/run-1/part-00000.csv")["Body"].read()
        assert len(body) == manifest["parts"][0]["bytes"]
        assert manifest["parts"][0]["key"] == f"s3://{s3_bucket}/exports/run-1/part-00000.csv"


class TestOutputFormats:
    """csv.gz and parquet through both export operators, verified and read back; lineage."""

    @pytest.fixture
    def loyalty_emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.05)

    @pytest.fixture
    def emulator(self, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
        point_connection_at(monkeypatch, loyalty_emulator)
        return loyalty_emulator

    @pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
    def test_a_compressed_or_columnar_export_lands_locally_and_verifies(self, emulator, tmp_path: Path, output_format):
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
        assert ids_of([(tmp_path / name).read_bytes() for name in names], output_format) == all_transaction_ids(
            emulator
        )
        report = verify_manifest(str(tmp_path))
        assert report.intact and report.rows == 2500, report.to_text()

    @pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
    def test_a_compressed_or_columnar_export_lands_in_s3_and_verifies(
        self, emulator, s3_bucket, s3_client, output_format
    ):
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
        payloads = [
            s3_client.get_object(Bucket=s3_bucket, Key=part["key"])["Body"].read() for part in manifest["parts"]
        ]
        for part, payload in zip(manifest["parts"], payloads, strict=True):
            assert part["key"].endswith(f".{output_format}") and part["bytes"] == len(payload)
        assert ids_of(payloads, output_format) == all_transaction_ids(emulator)
        assert verify_manifest(manifest["manifest"]).intact

    def test_csv_gz_stores_far_fewer_bytes_than_csv(self, emulator, tmp_path: Path):
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

    def test_the_file_export_has_one_lineage_output_per_export(self, emulator, tmp_path: Path):
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


class TestLoyaltyAccountTransactionsOperator:
    """LoyaltyAccountTransactionsOperator: a member's whole history as JSON Lines, mappable."""

    @pytest.fixture
    def loyalty_emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(member_history_sizes=[250, 3, 0, 42, 1])

    @pytest.fixture(params=["json", "xml"])
    def emulator(self, request, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
        point_connection_at(monkeypatch, loyalty_emulator, content_type=request.param)
        return loyalty_emulator

    def test_250_transactions_in_3_pages(self, emulator: LoyaltyEmulator, tmp_path):
        result = member_operator(tmp_path).execute({})
        assert result["rows"] == 250
        assert result["total_count"] == 250
        records = read_jsonl(result["path"])
        ids = [record["transaction_id"] for record in records]
        assert len(set(ids)) == 250
        assert ids == sorted(ids)
        assert requests_seen(emulator, "account") == 3
        assert isinstance(records[0]["amount"], str)  # exact decimal text, never a float
        assert isinstance(records[0]["canceled"], bool)

    @pytest.mark.parametrize(
        "member",
        [
            {"matching": "phone", "member_email": None, "phone": "+15550000003"},
            {"matching": "profile_id", "member_email": None, "profile_id": "profile_3"},
            {"matching": "custom", "member_email": None, "field_name": "user_id", "field_value": 3},
        ],
    )
    def test_each_matching_mode(self, emulator: LoyaltyEmulator, tmp_path, member):
        assert member_operator(tmp_path, limit=20, **member).execute({})["rows"] == 42

    def test_member_without_transactions_and_unknown_member(self, emulator: LoyaltyEmulator, tmp_path):
        empty = member_operator(tmp_path, member_email="member2@example.com").execute({})
        assert (empty["rows"], empty["total_count"]) == (0, 0)
        with pytest.raises(LoyaltyNotFoundError):
            member_operator(tmp_path, member_email="nobody@example.com").execute({})

    def test_directory_output_names_files_without_pii(self, emulator: LoyaltyEmulator, tmp_path):
        result = member_operator(tmp_path, output_path=f"{tmp_path}/members/").execute({})
        assert "member0" not in result["path"]
        assert result["path"].endswith(".jsonl")

    @pytest.mark.parametrize(
        ("kwargs", "parameter"),
        [
            ({"matching": "nickname"}, "matching"),
            ({"matching": "phone", "member_email": None}, "phone"),
            ({"matching": "custom", "member_email": None, "field_name": "user_id"}, "field_value"),
            ({"matching": "custom", "member_email": None, "field_value": 1}, "field_name"),
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"points_currency_iid": 1}, "points_currency_eid/points_currency_iid"),
        ],
    )
    def test_validation_at_task_start_sends_nothing(self, emulator: LoyaltyEmulator, tmp_path, kwargs, parameter):
        with pytest.raises(LoyaltyValidationError) as err:
            member_operator(tmp_path, **kwargs).execute({})
        assert err.value.parameter == parameter
        assert requests_seen(emulator) == 0
