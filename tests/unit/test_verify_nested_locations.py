"""loyalty-verify's stray check stays at the export's own location: a nested sub-directory / sub-prefix
(another export's location, or anything else) is not the export's, while its ``_`` bookkeeping
sub-directories (``_staging/``, ``_parts/``) still are. On disk, in moto's S3 server (loopback) and
through an fsspec filesystem (``s3a://``)."""

from __future__ import annotations

from pathlib import Path

from airflow_provider_loyalty.verify import verify_manifest
from tests.unit.test_verify import HEADER, kinds, land_local, land_s3


def test_local_nested_directories_are_not_strays_but_bookkeeping_is_still_examined(tmp_path: Path) -> None:
    export = tmp_path / "exports"
    land_local(export)
    land_local(export / "daily")  # another export, one level down
    (export / "misc" / "deeper").mkdir(parents=True)
    (export / "misc" / "deeper" / "notes.txt").write_text("not an export")
    (export / "_staging").mkdir()
    (export / "_staging" / "part-00000.csv").write_text(HEADER)

    report = verify_manifest(export)

    assert report.intact, report.problems
    assert any(note.startswith("_staging/ (1 object(s))") for note in report.notes), report.notes
    assert not any("daily" in note or "misc" in note for note in report.notes), report.notes

    (export / "part-00007.csv").write_text(HEADER)  # beside the parts: still a stray
    assert kinds(verify_manifest(export)) == [("stray", "part-00007.csv")]
    assert verify_manifest(export / "daily").intact  # the nested export verifies on its own


def test_s3_nested_prefixes_are_not_strays_but_bookkeeping_is_still_examined(s3_bucket: str, s3_client) -> None:
    land_s3(s3_client, s3_bucket, "exports")
    land_s3(s3_client, s3_bucket, "exports/daily")  # s3://bucket/exports/daily/part-00000.csv ...
    s3_client.put_object(Bucket=s3_bucket, Key="exports/misc/deeper/notes.txt", Body=b"not an export")
    s3_client.put_object(Bucket=s3_bucket, Key="exports/misc/", Body=b"")  # a console "folder" marker
    s3_client.put_object(Bucket=s3_bucket, Key="exports/_staging/part-00000.csv", Body=HEADER.encode())
    s3_client.put_object(Bucket=s3_bucket, Key="exports/_parts/part-00000.json", Body=b"{}")

    report = verify_manifest(f"s3://{s3_bucket}/exports/")

    assert report.intact, report.problems
    notes = "\n".join(report.notes)
    assert "_staging/ (1 object(s))" in notes and "_parts/ (1 object(s))" in notes
    assert "daily" not in notes and "misc" not in notes

    s3_client.put_object(Bucket=s3_bucket, Key="exports/part-00007.csv", Body=HEADER.encode())
    assert kinds(verify_manifest(f"s3://{s3_bucket}/exports")) == [("stray", "part-00007.csv")]
    assert verify_manifest(f"s3://{s3_bucket}/exports/daily").intact


def test_object_storage_nested_prefixes_are_not_strays(s3_bucket: str, s3_client) -> None:
    land_s3(s3_client, s3_bucket, "exports")
    land_s3(s3_client, s3_bucket, "exports/daily")
    s3_client.put_object(Bucket=s3_bucket, Key="exports/_staging/part-00000.csv", Body=HEADER.encode())

    report = verify_manifest(f"s3a://{s3_bucket}/exports", conn_id="aws_default")

    assert report.intact, report.problems
    assert any(note.startswith("_staging/ (1 object(s))") for note in report.notes), report.notes
