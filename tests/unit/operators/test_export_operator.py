"""LoyaltyExportOperator against the emulator: batches, exactly-once, faults, verification, deferral."""

from __future__ import annotations

import io
import dataclasses
import json
import zipfile
from pathlib import Path

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyBatchUnusableError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportTaskFailed,
    LoyaltyUnsafeDataError,
    LoyaltyValidationError,
    LoyaltyVerificationError,
)
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from tests.support.helpers import all_transaction_ids, csv_ids, point_connection_at, requests_seen
from tests.support.operator_driver import DeferralLog, context_for, run_with_deferrals

N = 2500


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=N, batch_size=1000, task_duration=0.05)


@pytest.fixture(params=["json", "xml"])
def content_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def emulator(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type)
    return loyalty_emulator


def make_operator(output: Path | str, **kwargs) -> LoyaltyExportOperator:
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


@pytest.mark.parametrize("cursor_mode", ["exclusive", "inclusive", "next_row"])
def test_every_transaction_exactly_once_in_every_cursor_mode(emulator: LoyaltyEmulator, tmp_path, cursor_mode):
    emulator.config.cursor_mode = cursor_mode
    manifest = make_operator(tmp_path).execute(context_for())
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


def test_manifest_matches_the_parts(emulator: LoyaltyEmulator, tmp_path):
    import hashlib

    manifest = make_operator(tmp_path).execute(context_for())
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


def test_rows_are_copied_byte_for_byte(emulator: LoyaltyEmulator, tmp_path):
    """The part holds the server's CSV bytes (quoted commas, quotes and newlines untouched)."""
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    make_operator(tmp_path, keep_zip=True).execute(context_for())
    with zipfile.ZipFile(tmp_path / "part-00000.zip") as archive:
        original = archive.read(archive.namelist()[0])
    assert (tmp_path / "part-00000.csv").read_bytes() == original
    assert b'""' in original and b'"\n' not in original.split(b"\r\n")[0]
    assert LoyaltyHook is not None


def test_deferrable_and_worker_modes_give_identical_parts(emulator: LoyaltyEmulator, tmp_path):
    in_worker = make_operator(tmp_path / "a").execute(context_for())
    emulator.config.task_duration = 1.0  # each next batch still runs when the previous one has landed
    log = DeferralLog()
    deferred = run_with_deferrals(make_operator(tmp_path / "b", deferrable=True), context_for(), log)
    assert log.deferrals >= 3 and all(event["status"] == "success" for event in log.events)
    for kwargs in log.trigger_kwargs:
        json.dumps(kwargs)  # primitives only
    digests = lambda m: [(p["rows"], p["bytes"], p["sha256"]) for p in m["parts"]]  # noqa: E731
    assert digests(in_worker) == digests(deferred)


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [("export", "http_503"), ("status", "rate_limit"), ("status", "reset"), ("download", "truncate")],
)
def test_a_transient_fault_in_each_phase_is_survived(emulator: LoyaltyEmulator, tmp_path, endpoint, kind):
    emulator.set_faults([FaultRule(endpoint=endpoint, kind=kind, count=2, params={"retry_after": 0.05})])
    manifest = make_operator(tmp_path).execute(context_for())
    assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)
    assert emulator.stats()["faults_applied"].get(kind) == 2


def test_failed_task_fails_with_api_text_and_leaves_no_manifest(emulator: LoyaltyEmulator, tmp_path):
    emulator.set_faults(
        [FaultRule(endpoint="status", kind="task_failed", params={"status": "error", "text": "disk full"})]
    )
    with pytest.raises(LoyaltyExportTaskFailed, match="disk full"):
        make_operator(tmp_path).execute(context_for())
    assert not (tmp_path / "_manifest.json").exists()


def test_failed_task_in_deferrable_mode(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.task_duration = 0.5
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "quota exceeded"})])
    with pytest.raises(LoyaltyError, match="quota exceeded"):
        run_with_deferrals(make_operator(tmp_path, deferrable=True), context_for())
    assert not (tmp_path / "_manifest.json").exists()


def test_failed_rerun_keeps_the_previous_export_provable(emulator: LoyaltyEmulator, tmp_path):
    """A re-run stages its parts: when it fails, the last complete export and its parts stay as they were."""
    make_operator(tmp_path).execute(context_for())
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    emulator.config.batch_size = 700
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", count=None, params={"text": "boom"})])
    with pytest.raises(LoyaltyExportTaskFailed, match="boom"):
        make_operator(tmp_path, resume=False).execute(context_for())
    after = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    assert {name: after[name] for name in before} == before  # manifest and every part byte-identical
    manifest = json.loads(before["_manifest.json"])
    assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)


def test_rerun_replaces_the_set(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.batch_size = 500
    first = make_operator(tmp_path).execute(context_for())
    emulator.config.batch_size = 1200
    second = make_operator(tmp_path).execute(context_for())
    assert len(first["parts"]) == 5 and len(second["parts"]) == 3
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [f"part-0000{i}.csv" for i in range(3)]
    assert csv_ids(part_paths(tmp_path, second)) == all_transaction_ids(emulator)


def test_replace_false_refuses_to_overwrite(emulator: LoyaltyEmulator, tmp_path):
    make_operator(tmp_path).execute(context_for())
    with pytest.raises(LoyaltyError, match="replace=True"):
        make_operator(tmp_path, replace=False).execute(context_for())


def test_row_count_mismatch_is_created_again_then_fails(emulator: LoyaltyEmulator, tmp_path, monkeypatch):
    """A batch that keeps failing verification is created again from its cursor, twice, then the
    task fails saying what was tried (never a replay of the same task)."""
    from airflow_provider_loyalty.export import loop as _export

    real = _export.write_part
    monkeypatch.setattr(
        _export, "write_part", lambda *a, **k: real(*a, **{**k, "expected_rows": k["expected_rows"] + 1})
    )
    with pytest.raises(LoyaltyBatchUnusableError, match="row count mismatch") as caught:
        make_operator(tmp_path).execute(context_for())
    assert "after creating it 3 times" in str(caught.value)
    first_batches = [task for task in emulator.export_tasks() if task["from_id"] is None]
    assert len(first_batches) == 3 and all(task["task_id"] in str(caught.value) for task in first_batches)
    assert not (tmp_path / "_manifest.json").exists()


def test_looping_cursor_is_caught(emulator: LoyaltyEmulator, tmp_path):
    first_batch_cursor = None
    emulator.config.batch_size = 1000

    def stuck(*_args, **_kwargs):
        return first_batch_cursor

    # The emulator serves a real cursor; freeze it by exporting the same from_id forever.
    emulator.config.cursor_mode = "exclusive"
    operator = make_operator(tmp_path, max_batches=50)
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


def test_max_batches_is_enforced(emulator: LoyaltyEmulator, tmp_path):
    with pytest.raises(LoyaltyCursorError, match="max_batches=2"):
        make_operator(tmp_path, max_batches=2).execute(context_for())
    assert not (tmp_path / "_manifest.json").exists()


def test_hostile_hashed_file_fails_closed(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.hashed_file_override = "../../../etc/passwd"
    with pytest.raises(LoyaltyUnsafeDataError):
        make_operator(tmp_path).execute(context_for())
    assert requests_seen(emulator, "download") == 0
    assert not (tmp_path / "_manifest.json").exists()


def test_date_defaults_and_validation(emulator: LoyaltyEmulator, tmp_path):
    manifest = make_operator(tmp_path).execute(context_for("2023-09-10T00:00:00Z", "2023-09-11T00:00:00Z"))
    assert (manifest["date_from"], manifest["date_to"]) == ("2023-09-10T00:00:00Z", "2023-09-10T23:59:59Z")
    assert 0 < manifest["total_rows"] < N
    with pytest.raises(LoyaltyValidationError, match="date_from"):
        make_operator(tmp_path, date_from="2023-09-30", date_to="2023-09-01")
    with pytest.raises(LoyaltyValidationError, match="points_currency"):
        make_operator(tmp_path, points_currency_iid=1)
    with pytest.raises(LoyaltyValidationError, match="max_batches"):
        make_operator(tmp_path, max_batches=0)
    assert requests_seen(emulator) > 0


def test_object_storage_output_path(emulator: LoyaltyEmulator, tmp_path):
    manifest = make_operator(f"file://{tmp_path}/osp").execute(context_for())
    assert manifest["parts"][0]["key"].startswith("file://")
    assert csv_ids(part_paths(tmp_path / "osp", manifest)) == all_transaction_ids(emulator)


# ---------------------------------------------------------------------- verification of archives


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _verify(tmp_path: Path, data: bytes, expected_rows: int = 1, **kwargs):
    from airflow_provider_loyalty.export.archive import write_part

    path = tmp_path / "a.zip"
    path.write_bytes(data)
    return write_part(str(path), io.BytesIO(), expected_rows=expected_rows, **kwargs)


CSV = b'transaction_id,description\r\nid-1,"a, ""quoted""\nline"\r\n'


def test_verification_accepts_quoted_newlines(tmp_path):
    stats = _verify(tmp_path, _zip_bytes({"t.csv": CSV}))
    assert (stats.rows, stats.tail_ids) == (1, ["id-1"])


@pytest.mark.parametrize("name", ["../evil.csv", "/abs.csv", "a/../../b.csv", "C:\\x.csv", "dir\\x.csv"])
def test_unsafe_member_names(tmp_path, name):
    with pytest.raises(LoyaltyUnsafeDataError):
        _verify(tmp_path, _zip_bytes({name: CSV}))


def test_corrupt_zip_and_bad_crc(tmp_path):
    with pytest.raises(LoyaltyVerificationError, match="corrupt"):
        _verify(tmp_path, b"PK\x03\x04 definitely not a zip")
    good = bytearray(_zip_bytes({"t.csv": CSV * 50}))
    start = good.find(b"t.csv") + len(b"t.csv")
    good[start + 10] ^= 0xFF  # flip a byte of the compressed data
    with pytest.raises(LoyaltyVerificationError):
        _verify(tmp_path, bytes(good), expected_rows=50)


def test_zip_bomb_caps(tmp_path):
    from airflow_provider_loyalty.export.archive import ArchiveLimits

    bomb = _zip_bytes({"t.csv": b"transaction_id\r\n" + b"x" * (8 * 1024 * 1024)})
    with pytest.raises(LoyaltyUnsafeDataError, match="zip bomb"):
        _verify(tmp_path, bomb)
    with pytest.raises(LoyaltyUnsafeDataError, match="over the cap"):
        _verify(tmp_path, _zip_bytes({"t.csv": CSV}), limits=ArchiveLimits(max_uncompressed_bytes=10))


def test_wrong_field_count_and_missing_id_column(tmp_path):
    with pytest.raises(LoyaltyVerificationError, match="fields"):
        _verify(tmp_path, _zip_bytes({"t.csv": b"transaction_id,a\r\nx\r\n"}))
    with pytest.raises(LoyaltyVerificationError, match="transaction_id"):
        _verify(tmp_path, _zip_bytes({"t.csv": b"id,a\r\nx,y\r\n"}))


def test_s3_object_storage_output_path(emulator: LoyaltyEmulator, s3_bucket, s3_client):
    """``output_path`` as an ``s3://`` ObjectStoragePath URL (fsspec/s3fs through the AWS connection)."""
    manifest = make_operator(f"s3://{s3_bucket}/exports/run-1", output_conn_id="aws_default").execute(context_for())
    keys = sorted(item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["exports/run-1/_manifest.json"] + [f"exports/run-1/part-0000{i}.csv" for i in range(3)]
    body = s3_client.get_object(Bucket=s3_bucket, Key="exports/run-1/part-00000.csv")["Body"].read()
    assert len(body) == manifest["parts"][0]["bytes"]
    assert manifest["parts"][0]["key"] == f"s3://{s3_bucket}/exports/run-1/part-00000.csv"
