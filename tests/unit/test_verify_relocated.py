"""loyalty-verify on an export copied or moved since it landed: its manifest records where it was
written (``manifest``), its parts are read beside the copy, and the report names what it read.
On disk and in moto's S3 server (loopback), through ``S3Hook`` (``s3://``) and fsspec (``s3a://``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.verify import main, verify_manifest
from tests.unit.test_verify import flip_byte, kinds, land_local, land_s3

ORIGIN = "exports/2023-09"


def land_s3_recording_its_location(s3_client: Any, bucket: str, prefix: str = ORIGIN) -> dict[str, Any]:
    """An export as the S3 transfer lands it: bare part keys, and the manifest's own URL in ``manifest``."""
    manifest = land_s3(s3_client, bucket, prefix)
    manifest["manifest"] = f"s3://{bucket}/{prefix}/_manifest.json"
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/_manifest.json", Body=json.dumps(manifest).encode())
    return manifest


def copy_prefix(s3_client: Any, source: tuple[str, str], destination: tuple[str, str]) -> list[str]:
    """Copy every object under ``source`` (bucket, prefix) to ``destination``, byte for byte; the keys copied."""
    (from_bucket, from_prefix), (to_bucket, to_prefix) = source, destination
    listed = s3_client.list_objects_v2(Bucket=from_bucket, Prefix=f"{from_prefix}/")["Contents"]
    for item in listed:
        key = f"{to_prefix}/{item['Key'][len(from_prefix) + 1 :]}"
        s3_client.copy_object(Bucket=to_bucket, Key=key, CopySource={"Bucket": from_bucket, "Key": item["Key"]})
    return [item["Key"] for item in listed]


@pytest.mark.parametrize("scheme", ["s3", "s3a"])
@pytest.mark.parametrize(
    "where",
    ["same-bucket-other-prefix", "other-bucket-other-prefix", "other-bucket-same-prefix"],
)
def test_an_s3_export_copied_elsewhere_verifies_beside_the_copy_and_after_a_move(
    s3_bucket: str, s3_client: Any, where: str, scheme: str
) -> None:
    """A byte-identical copy under another prefix was NOT INTACT (2 foreign, 2 stray, no part read):
    the bare part keys were compared with the recorded location's URL, which they never start with.
    After a move (the original deleted) it stayed so."""
    land_s3_recording_its_location(s3_client, s3_bucket)
    archive = f"{s3_bucket[:40]}-archive"
    s3_client.create_bucket(Bucket=archive)
    bucket, prefix = {
        "same-bucket-other-prefix": (s3_bucket, "moved/2023-09"),
        "other-bucket-other-prefix": (archive, "cold/2023-09"),
        "other-bucket-same-prefix": (archive, ORIGIN),
    }[where]
    originals = copy_prefix(s3_client, (s3_bucket, ORIGIN), (bucket, prefix))
    location = f"{scheme}://{bucket}/{prefix}/"

    copied = verify_manifest(location, conn_id="aws_default")

    assert copied.intact and copied.exit_code == 0, copied.problems
    assert copied.parts_checked == 3
    assert any(f"records its location as s3://{s3_bucket}/{ORIGIN}/_manifest.json" in n for n in copied.notes)

    s3_client.delete_objects(Bucket=s3_bucket, Delete={"Objects": [{"Key": key} for key in originals]})
    moved = verify_manifest(location, conn_id="aws_default")
    assert moved.intact and moved.parts_checked == 3, moved.problems


def test_an_s3_export_is_judged_by_the_copy_it_reads(s3_bucket: str, s3_client: Any) -> None:
    """The original changing does not touch the copy's verdict, and the copy changing does."""
    land_s3_recording_its_location(s3_client, s3_bucket)
    copy_prefix(s3_client, (s3_bucket, ORIGIN), (s3_bucket, "moved/2023-09"))
    s3_client.put_object(Bucket=s3_bucket, Key=f"{ORIGIN}/part-00001.csv", Body=b"changed")  # the original
    assert verify_manifest(f"s3://{s3_bucket}/moved/2023-09").intact

    s3_client.put_object(Bucket=s3_bucket, Key="moved/2023-09/part-00002.csv", Body=b"changed")  # the copy
    report = verify_manifest(f"s3://{s3_bucket}/moved/2023-09")
    assert {problem.location for problem in report.problems if problem.kind != "rows"} == {
        f"s3://{s3_bucket}/moved/2023-09/part-00002.csv"
    }
    assert kinds(report) == [("bytes", "part-00002.csv"), ("rows", "part-00002.csv"), ("sha256", "part-00002.csv")]


def test_an_s3_export_downloaded_to_a_local_directory_verifies_there(
    s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """``aws s3 sync s3://bucket/exports/2023-09 ./2023-09``: bare keys of the recorded bucket, read locally."""
    land_s3_recording_its_location(s3_client, s3_bucket)
    for item in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"{ORIGIN}/")["Contents"]:
        body = s3_client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        (tmp_path / item["Key"].rsplit("/", 1)[1]).write_bytes(body)

    report = verify_manifest(tmp_path)

    assert report.intact and report.parts_checked == 3, report.problems


def test_problem_lines_of_a_copied_export_name_the_files_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The copy was read, but its problem lines named the original's files (intact) from the manifest."""
    manifest = land_local(tmp_path / "landed")
    manifest["manifest"] = f"file://{tmp_path}/landed/_manifest.json"
    (tmp_path / "landed" / "_manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(tmp_path / "landed", tmp_path / "copy")
    with open(tmp_path / "copy" / "part-00000.csv", "ab") as part:
        part.write(b"x")
    flip_byte(tmp_path / "copy" / "part-00001.csv")
    (tmp_path / "copy" / "part-00002.csv").unlink()

    assert main([str(tmp_path / "copy")]) == 1

    lines = capsys.readouterr().out.splitlines()
    problems = [line.split()[:2] for line in lines if line.startswith("  ") and "note" not in line.split()[0]]
    assert problems == [
        ["bytes", f"{tmp_path}/copy/part-00000.csv:"],
        ["sha256", f"{tmp_path}/copy/part-00000.csv:"],
        ["rows", f"{tmp_path}/copy/part-00000.csv:"],
        ["sha256", f"{tmp_path}/copy/part-00001.csv:"],
        ["missing", f"{tmp_path}/copy/part-00002.csv:"],
    ]
    assert lines[4].endswith(f"listed in the manifest as file://{tmp_path}/landed/part-00002.csv, not found")
    report = verify_manifest(tmp_path / "copy")
    assert report.problems[0].part == manifest["parts"][0]["key"]  # the manifest's key stays in the data
    assert report.to_dict()["problems"][0]["location"] == f"{tmp_path}/copy/part-00000.csv"


def test_a_part_read_at_its_final_name_after_a_switch_is_named_there(tmp_path: Path) -> None:
    """A manifest listing ``_staging/`` whose part a re-run's switch already moved: read at its final
    name, and a problem there names the final name, not the staged one."""
    manifest = land_local(tmp_path, keys="name")
    manifest["parts"][0]["key"] = "_staging/part-00000.csv"
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    flip_byte(tmp_path / "part-00000.csv")

    report = verify_manifest(tmp_path)

    assert [(p.kind, p.part, p.location) for p in report.problems] == [
        ("sha256", "_staging/part-00000.csv", f"{tmp_path}/part-00000.csv")
    ]  # and the final name, the part the entry was read from, is no stray
    assert f"sha256     {tmp_path}/part-00000.csv: sha256" in report.to_text()
