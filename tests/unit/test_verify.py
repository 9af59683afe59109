"""loyalty-verify / verify_manifest against exports landed on disk and in moto's S3 server (loopback)."""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pendulum
import pytest

from airflow_provider_loyalty.export.layout import temporary_name
from airflow_provider_loyalty.testing import EmulatorConfig
from airflow_provider_loyalty.verify import CannotVerifyError, VerifyReport, main, verify_manifest

REPO = Path(__file__).resolve().parents[2]
HEADER = "transaction_id,created_at,amount,description\r\n"

try:
    import pyarrow  # noqa: F401

    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False
needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow is not installed: parquet parts are not tested")


# --- landing exports by hand: parts, then a manifest with their true bytes, sha256 and rows ---------


def csv_part(index: int, rows: int) -> bytes:
    """A part as the export writes one; some fields quoted, with a comma and a line break inside."""
    lines = [HEADER]
    for row in range(rows):
        description = f'"accrual, order {row}\r\nsecond line"' if row % 7 == 0 else "accrual"
        lines.append(f"tx-{index:03d}-{row:05d},2023-09-01T12:00:00Z,{row}.5,{description}\r\n")
    return "".join(lines).encode()


def parquet_part(index: int, rows: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"transaction_id": [f"tx-{index:03d}-{row:05d}" for row in range(rows)], "amount": list(range(rows))}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=max(rows // 3, 1))
    return buffer.getvalue()


def part_body(fmt: str, index: int, rows: int) -> bytes:
    if fmt == "parquet":
        return parquet_part(index, rows)
    body = csv_part(index, rows)
    return gzip.compress(body, mtime=0) if fmt == "csv.gz" else body


def suffix(fmt: str) -> str:
    return {"csv": "csv", "csv.gz": "csv.gz", "parquet": "parquet"}[fmt]


def manifest_for(entries: list[tuple[str, bytes, int]], fmt: str | None) -> dict[str, Any]:
    parts = [
        {
            "key": key,
            "rows": rows,
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "export_task_id": f"task_{index}",
            "from_id": None if index == 0 else f"cursor-{index}",
            "next_from_id": "" if index == len(entries) - 1 else f"cursor-{index + 1}",
            "batch": index,
        }
        for index, (key, body, rows) in enumerate(entries)
    ]
    manifest: dict[str, Any] = {
        "format_version": 1,
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "points_currency_iid": None,
        "date_from": "2023-09-01T00:00:00Z",
        "date_to": "2023-09-30T23:59:59Z",
        "parts": parts,
        "total_rows": sum(part["rows"] for part in parts),
        "total_bytes": sum(part["bytes"] for part in parts),
        "batches": len(parts),
        "duplicates_dropped": 0,
        "started_at": "2023-10-01T00:00:01Z",
        "completed_at": "2023-10-01T00:01:00Z",
    }
    if fmt is not None:
        manifest["output_format"] = fmt
    return manifest


def land_local(
    directory: Path, fmt: str = "csv", parts: int = 3, rows: int = 40, *, keys: str = "url"
) -> dict[str, Any]:
    """Parts + ``_manifest.json`` in a local directory; part keys as ``file://`` URLs (the local operator's)."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(parts):
        body = part_body(fmt, index, rows + index)
        path = directory / f"part-{index:05d}.{suffix(fmt)}"
        path.write_bytes(body)
        entries.append((f"file://{path}" if keys == "url" else path.name, body, rows + index))
    manifest = manifest_for(entries, None if fmt == "csv" else fmt)
    (directory / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def land_s3(s3_client, bucket: str, prefix: str, fmt: str = "csv", parts: int = 3, rows: int = 40) -> dict[str, Any]:
    """Parts + ``_manifest.json`` under an S3 prefix; part keys bare, as the S3 transfer writes them."""
    entries = []
    for index in range(parts):
        body = part_body(fmt, index, rows + index)
        key = f"{prefix}/part-{index:05d}.{suffix(fmt)}"
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
        entries.append((key, body, rows + index))
    manifest = manifest_for(entries, fmt)
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/_manifest.json", Body=json.dumps(manifest).encode())
    return manifest


def flip_byte(path: Path, offset: int = 30) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def kinds(report: VerifyReport) -> list[tuple[str, str]]:
    return sorted((problem.kind, Path(problem.part).name) for problem in report.problems)


def run_cli(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it (``python -m``), in its own process."""
    command = (
        [sys.executable, "-c", code, *args]
        if code
        else [sys.executable, "-m", "airflow_provider_loyalty.verify", *args]
    )
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env or os.environ.copy(), timeout=240)


# --- intact exports ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form", ["directory", "manifest", "file-url", "directory-url", "short-file-url", "localhost-file-url"]
)
def test_intact_local_export_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str) -> None:
    """Every spelling the operators take for a local output_path (RFC 8089's ``file:/abs`` was read
    as a relative path, exit 2: probe of 2026-12-05)."""
    manifest = land_local(tmp_path / "export")
    location = {
        "directory": str(tmp_path / "export"),
        "manifest": str(tmp_path / "export" / "_manifest.json"),
        "file-url": f"file://{tmp_path}/export/_manifest.json",
        "directory-url": f"file://{tmp_path}/export/",
        "short-file-url": f"file:{tmp_path}/export",
        "localhost-file-url": f"file://localhost{tmp_path}/export",
    }[form]

    assert main([location]) == 0

    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith(
        f"INTACT: {tmp_path}/export/_manifest.json: 3 of 3 parts read, {manifest['total_rows']:,} rows"
    )


def test_intact_report_counts_every_row_and_byte(tmp_path: Path) -> None:
    manifest = land_local(tmp_path, rows=100)
    report = verify_manifest(tmp_path)
    assert report.intact and report.exit_code == 0 and report.status == "intact"
    assert (report.parts_listed, report.parts_checked) == (3, 3)
    assert report.rows == manifest["total_rows"] == 303
    assert report.bytes == manifest["total_bytes"]
    assert report.problems == [] and report.unchecked == [] and report.notes == []


def test_python_dash_m_runs_the_command(tmp_path: Path) -> None:
    land_local(tmp_path)
    result = run_cli(str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the report only: no log lines
    assert report["status"] == "intact" and report["parts_checked"] == 3
    assert "Traceback" not in result.stderr


def test_bookkeeping_files_are_notes_not_strays(tmp_path: Path) -> None:
    manifest = land_local(tmp_path)
    manifest["parts"][0]["archive_key"] = manifest["parts"][0]["key"].replace(".csv", ".zip")  # keep_zip=True
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "_manifest.inprogress.json").write_text("{}")
    (tmp_path / "_lease.json").write_text("{}")
    (tmp_path / "_staging" / "run-2").mkdir(parents=True)
    (tmp_path / "_staging" / "run-2" / "part-00000.csv").write_text("x")
    (tmp_path / "_staging" / "run-2" / "part-00001.csv").write_text("y")
    (tmp_path / "part-00000.zip").write_bytes(b"PK")  # the archive beside its part, as the manifest lists
    for _ in range(2):  # writes cut off by a SIGKILL before their rename
        (tmp_path / temporary_name()).write_bytes(b"half a docu")

    report = verify_manifest(tmp_path)

    assert report.intact, report.problems
    notes = "\n".join(report.notes)
    assert "_manifest.inprogress.json: an export is in progress here" in notes
    assert "_lease.json: an export holds this location's lease" in notes
    assert "_staging/ (2 object(s))" in notes
    assert "1 part-NNNNN.zip archive(s) kept as downloaded" in notes
    assert "_tmp-* (2 object(s)): local writes cut off mid-write" in notes


# --- altered exports: exit 1, naming the part --------------------------------------------------------


def test_flipped_byte_is_named_by_sha256(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    land_local(tmp_path)
    flip_byte(tmp_path / "part-00001.csv")

    assert main([str(tmp_path)]) == 1

    report = verify_manifest(tmp_path)
    assert kinds(report) == [("sha256", "part-00001.csv")]
    out = capsys.readouterr().out
    assert "sha256     file://" in out and "part-00001.csv: sha256" in out
    assert out.strip().splitlines()[-1].startswith("NOT INTACT:")


def test_deleted_part_is_named_missing(tmp_path: Path) -> None:
    land_local(tmp_path)
    (tmp_path / "part-00002.csv").unlink()
    report = verify_manifest(tmp_path)
    assert report.exit_code == 1
    assert kinds(report) == [("missing", "part-00002.csv")]
    assert report.parts_checked == 2


def test_unlisted_objects_are_strays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    land_local(tmp_path)
    (tmp_path / "part-00007.csv").write_text(HEADER)
    (tmp_path / "foo.csv").write_text("a,b\r\n")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "part-00000.csv").write_text(HEADER)

    assert main([str(tmp_path), "--json"]) == 1

    report = json.loads(capsys.readouterr().out)
    strays = sorted(problem["part"] for problem in report["problems"] if problem["kind"] == "stray")
    assert strays == ["foo.csv", "part-00007.csv"]  # extra/ is another location, not this export's
    assert len(report["problems"]) == 2


def test_truncated_part_is_named_by_bytes(tmp_path: Path) -> None:
    land_local(tmp_path)
    path = tmp_path / "part-00000.csv"
    path.write_bytes(path.read_bytes()[:-200])
    report = verify_manifest(tmp_path)
    problems = {problem.kind: problem for problem in report.problems}
    assert set(problems) == {"bytes", "sha256", "rows"}
    assert problems["bytes"].actual == problems["bytes"].expected - 200
    assert Path(problems["bytes"].part).name == "part-00000.csv"


def test_manifest_lying_about_rows_is_caught_with_the_same_sha256(tmp_path: Path) -> None:
    manifest = land_local(tmp_path)
    manifest["parts"][1]["rows"] += 1
    manifest["total_rows"] += 1
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))

    report = verify_manifest(tmp_path)

    assert kinds(report) == [("rows", "part-00001.csv")]
    assert (report.problems[0].expected, report.problems[0].actual) == (42, 41)


def test_totals_that_do_not_add_up_are_a_problem(tmp_path: Path) -> None:
    manifest = land_local(tmp_path)
    manifest["total_rows"] += 5
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    report = verify_manifest(tmp_path)
    assert [(problem.kind, problem.part) for problem in report.problems] == [("totals", "total_rows")]


@pytest.mark.parametrize("total", ["total_rows", "total_bytes"])
def test_a_manifest_without_its_totals_is_a_problem(tmp_path: Path, total: str) -> None:
    """Every manifest an export writes has both totals; one without them verified INTACT without a
    word (probe of 2026-12-05)."""
    manifest = land_local(tmp_path)
    del manifest[total]
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    report = verify_manifest(tmp_path)
    assert [(problem.kind, problem.part) for problem in report.problems] == [("totals", total)]
    assert main([str(tmp_path)]) == 1


def rewrite_manifest(directory: Path, change: Any) -> None:
    manifest = json.loads((directory / "_manifest.json").read_text())
    change(manifest)
    (directory / "_manifest.json").write_text(json.dumps(manifest))


def swap_first_two(manifest: dict[str, Any]) -> None:
    manifest["parts"][0], manifest["parts"][1] = manifest["parts"][1], manifest["parts"][0]


def break_the_chain(manifest: dict[str, Any]) -> None:
    manifest["parts"][2]["from_id"] = "cursor-elsewhere"


def end_with_a_cursor(manifest: dict[str, Any]) -> None:
    manifest["parts"][-1]["next_from_id"] = "cursor-3"


def start_elsewhere(manifest: dict[str, Any]) -> None:
    manifest["from_id"] = "cursor-0"


@pytest.mark.parametrize(
    ("change", "kind", "part"),
    [
        (swap_first_two, "order", "part-00001.csv"),
        (break_the_chain, "chain", "part-00002.csv"),
        (end_with_a_cursor, "chain", "part-00002.csv"),
        (start_elsewhere, "chain", "part-00000.csv"),
    ],
    ids=["parts-swapped", "cursor-chain-broken", "last-batch-goes-on", "first-batch-starts-elsewhere"],
)
def test_a_manifest_whose_parts_do_not_chain_is_not_intact(tmp_path: Path, change: Any, kind: str, part: str) -> None:
    """Every stored part matches its entry; the entries themselves say a batch is missing or out of place."""
    land_local(tmp_path)
    rewrite_manifest(tmp_path, change)
    report = verify_manifest(str(tmp_path))
    assert report.exit_code == 1
    assert (kind, part) in [(problem_kind, key.rsplit("/", 1)[-1]) for problem_kind, key in kinds(report)]


def test_two_parts_of_the_same_bytes_are_a_problem(tmp_path: Path) -> None:
    """A part replaced by a copy of another, its entry fixed to match: its rows would count twice."""
    manifest = land_local(tmp_path)
    first, second = tmp_path / "part-00000.csv", tmp_path / "part-00001.csv"
    second.write_bytes(first.read_bytes())

    def copy_entry(document: dict[str, Any]) -> None:
        for field_name in ("sha256", "bytes", "rows"):
            document["parts"][1][field_name] = manifest["parts"][0][field_name]
        document["total_rows"] = sum(entry["rows"] for entry in document["parts"])
        document["total_bytes"] = sum(entry["bytes"] for entry in document["parts"])

    rewrite_manifest(tmp_path, copy_entry)
    report = verify_manifest(str(tmp_path))
    assert report.exit_code == 1
    assert [kind for kind, _ in kinds(report)] == ["duplicate"]


def test_a_manifest_without_batch_numbers_verifies_with_a_note(tmp_path: Path) -> None:
    """An export landed by an older version: its cursor chain cannot be told from empty batches."""
    land_local(tmp_path)

    def strip_numbers(document: dict[str, Any]) -> None:
        del document["batches"]
        for entry in document["parts"]:
            del entry["batch"]

    rewrite_manifest(tmp_path, strip_numbers)
    report = verify_manifest(str(tmp_path))
    assert report.exit_code == 0
    assert any("cursor chain is not checked" in note for note in report.notes)


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    body = (HEADER + "tx-1,2023-09-01T00:00:00Z,1,a\r\n\r\n" + "tx-2,2023-09-01T00:00:00Z,2,b\r\n\r\n").encode()
    (tmp_path / "part-00000.csv").write_bytes(body)
    manifest = manifest_for([("part-00000.csv", body, 2)], None)
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    assert verify_manifest(tmp_path).intact


def test_hostile_part_keys_are_problems_not_reads(tmp_path: Path) -> None:
    manifest = land_local(tmp_path, parts=1)
    listed = manifest["parts"][0]
    manifest["parts"] += [
        dict(listed),  # the same part twice
        {**listed, "key": "s3://elsewhere/part-00000.csv"},  # another storage system than the manifest's
        {**listed, "key": "file:///dev/zero"},  # endless: must not be read
    ]
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))

    report = verify_manifest(tmp_path)

    per_part = [  # what reading each listed part found (the manifest's own checks also object to this list)
        problem
        for problem in report.problems
        if problem.kind not in ("totals", "order", "chain") and "same bytes" not in problem.detail
    ]
    assert [(problem.kind, problem.part) for problem in per_part] == [
        ("duplicate", listed["key"]),
        ("foreign", "s3://elsewhere/part-00000.csv"),
        ("foreign", "file:///dev/zero"),  # outside the location: never opened
    ]
    assert report.parts_checked == 1


def test_an_archive_the_manifest_does_not_name_is_a_stray(tmp_path: Path) -> None:
    """Any ``part-NNNNN.zip`` beside a listed part passed as an archive kept with keep_zip, also in
    an export made without it: INTACT with a file nobody accounted for."""
    land_local(tmp_path)
    (tmp_path / "part-00001.zip").write_bytes(b"PK")

    report = verify_manifest(tmp_path)

    assert not report.intact and report.exit_code == 1
    assert [(problem.kind, problem.part) for problem in report.problems] == [("stray", "part-00001.zip")]


@pytest.mark.parametrize("key", ["../real/part-00000.csv", "{real}/part-00000.csv", "file://{real}/part-00000.csv"])
def test_a_part_outside_the_location_is_foreign_not_read(tmp_path: Path, key: str) -> None:
    """A location holding only a manifest whose part lives elsewhere was INTACT (exit 0): the part
    was read wherever its key pointed. An export's parts are all beside its manifest."""
    manifest = land_local(tmp_path / "real", parts=1)
    (tmp_path / "copy").mkdir()
    manifest["parts"][0]["key"] = key.format(real=tmp_path / "real")
    manifest["manifest"] = f"file://{tmp_path}/copy/_manifest.json"
    (tmp_path / "copy" / "_manifest.json").write_text(json.dumps(manifest))

    report = verify_manifest(tmp_path / "copy")

    assert not report.intact and report.exit_code == 1
    assert [problem.kind for problem in report.problems] == ["foreign"]
    assert report.parts_checked == 0


def test_a_moved_export_is_read_where_its_manifest_is(tmp_path: Path) -> None:
    manifest = land_local(tmp_path / "landed")
    manifest["manifest"] = f"file://{tmp_path}/landed/_manifest.json"
    (tmp_path / "landed" / "_manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(tmp_path / "landed", tmp_path / "archive")
    flip_byte(tmp_path / "landed" / "part-00000.csv")  # the original changes; the copy must not be judged by it

    report = verify_manifest(tmp_path / "archive")

    assert report.intact, report.problems
    assert any("records its location" in note for note in report.notes)


# --- compressed and Parquet parts -------------------------------------------------------------------


def test_csv_gz_parts_are_hashed_compressed_and_counted_gunzipped(tmp_path: Path) -> None:
    manifest = land_local(tmp_path, fmt="csv.gz")
    report = verify_manifest(tmp_path)
    assert report.intact and report.output_format == "csv.gz"
    assert report.rows == manifest["total_rows"] and report.bytes == manifest["total_bytes"]

    flip_byte(tmp_path / "part-00001.csv.gz", offset=len((tmp_path / "part-00001.csv.gz").read_bytes()) // 2)
    truncated = tmp_path / "part-00002.csv.gz"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    report = verify_manifest(tmp_path)
    assert ("sha256", "part-00001.csv.gz") in kinds(report)
    assert ("unreadable", "part-00002.csv.gz") in kinds(report)
    assert ("bytes", "part-00002.csv.gz") in kinds(report)


@needs_pyarrow
def test_parquet_rows_come_from_the_footer(tmp_path: Path) -> None:
    manifest = land_local(tmp_path, fmt="parquet")
    assert verify_manifest(tmp_path).intact

    manifest["parts"][0]["rows"] -= 1
    manifest["total_rows"] -= 1
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    assert kinds(verify_manifest(tmp_path)) == [("rows", "part-00000.parquet")]


def test_parquet_rows_without_pyarrow_cannot_be_checked(tmp_path: Path) -> None:
    body = b"PAR1 not really parquet PAR1"  # bytes and sha256 are still checked without pyarrow
    (tmp_path / "part-00000.parquet").write_bytes(body)
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest_for([("part-00000.parquet", body, 10)], "parquet")))
    no_pyarrow = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from airflow_provider_loyalty.verify import main; sys.exit(main())"
    )
    result = run_cli(str(tmp_path), "--json", code=no_pyarrow)
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["problems"] == [] and report["parts_checked"] == 1
    assert report["unchecked"] == [
        "rows of parquet parts cannot be checked: pyarrow is not installed (the [parquet] extra)"
    ]


def test_csv_only_export_needs_no_pyarrow(tmp_path: Path) -> None:
    land_local(tmp_path)
    assert verify_manifest(tmp_path).unchecked == []


# --- manifests that cannot be checked: exit 2, one line on stderr ------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\xff garbage", "is not JSON: not a manifest"),
        (b"[1, 2, 3]", "is not a manifest: a JSON list instead of an object"),
        (b'{"parts": []}', "is not a manifest: no format_version"),
        (b'{"format_version": 2, "parts": []}', "format_version 2 is not supported"),
        (b'{"format_version": 1, "parts": {"key": "x"}}', "parts is missing or not a list"),
        (b'{"format_version": 1, "parts": [{"key": "p.csv", "rows": 1, "bytes": 1}]}', "parts[0].sha256 is not a hex"),
        (b'{"format_version": 1, "parts": [], "output_format": "xlsx"}', "output_format 'xlsx'"),
    ],
)
def test_unreadable_manifest_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    (tmp_path / "_manifest.json").write_bytes(content)
    assert main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err
    with pytest.raises(CannotVerifyError, match=r"manifest|format_version"):
        verify_manifest(tmp_path)


def test_missing_manifest_exits_2_without_traceback(tmp_path: Path) -> None:
    land_local(tmp_path)
    (tmp_path / "_manifest.json").unlink()  # parts without a manifest: not a finished export
    result = run_cli(str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    # Airflow's own log lines (e.g. its unit-test configuration notice) may precede it on stderr.
    assert result.stderr.strip().splitlines()[-1] == (
        f"loyalty-verify: cannot check: no manifest: no file at {tmp_path}/_manifest.json"
    )
    assert "Traceback" not in result.stderr


def test_unknown_scheme_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuchfs://bucket/export/", "--json"]) == 2
    captured = capsys.readouterr()
    assert "unknown scheme 'nosuchfs'" in captured.err
    assert json.loads(captured.out)["status"] == "cannot check"


# --- S3 (moto's server on loopback) ---------------------------------------------------------------


@pytest.mark.parametrize("form", ["prefix", "prefix/", "manifest"])
def test_intact_s3_export_exits_0(s3_bucket: str, s3_client, form: str) -> None:
    manifest = land_s3(s3_client, s3_bucket, "compliance/2023-09")
    location = {
        "prefix": f"s3://{s3_bucket}/compliance/2023-09",
        "prefix/": f"s3://{s3_bucket}/compliance/2023-09/",
        "manifest": f"s3://{s3_bucket}/compliance/2023-09/_manifest.json",
    }[form]
    report = verify_manifest(location)
    assert report.intact, report.problems
    assert report.manifest == f"s3://{s3_bucket}/compliance/2023-09/_manifest.json"
    assert report.rows == manifest["total_rows"]


def test_s3_flipped_deleted_and_stray_parts_are_named(
    s3_bucket: str, s3_client, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = "compliance/2023-09"
    land_s3(s3_client, s3_bucket, prefix)
    body = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=f"{prefix}/part-00000.csv")["Body"].read())
    body[40] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=f"{prefix}/part-00000.csv", Body=bytes(body))
    s3_client.delete_object(Bucket=s3_bucket, Key=f"{prefix}/part-00001.csv")
    s3_client.put_object(Bucket=s3_bucket, Key=f"{prefix}/part-00009.csv", Body=HEADER.encode())
    s3_client.put_object(Bucket=s3_bucket, Key=f"{prefix}/_manifest.inprogress.json", Body=b"{}")
    s3_client.put_object(Bucket=s3_bucket, Key="compliance/2023-10/part-00000.csv", Body=b"another export")

    assert main([f"s3://{s3_bucket}/{prefix}"]) == 1

    report = verify_manifest(f"s3://{s3_bucket}/{prefix}")
    assert kinds(report) == [("missing", "part-00001.csv"), ("sha256", "part-00000.csv"), ("stray", "part-00009.csv")]
    assert report.notes and report.notes[0].startswith("_manifest.inprogress.json")
    out = capsys.readouterr().out
    assert f"not found at s3://{s3_bucket}/{prefix}/part-00001.csv" in out


@needs_pyarrow
def test_s3_parquet_rows_are_read_by_ranged_gets(s3_bucket: str, s3_client) -> None:
    manifest = land_s3(s3_client, s3_bucket, "pq", fmt="parquet")
    assert verify_manifest(f"s3://{s3_bucket}/pq").intact
    manifest["parts"][2]["rows"] = 1
    s3_client.put_object(Bucket=s3_bucket, Key="pq/_manifest.json", Body=json.dumps(manifest).encode())
    report = verify_manifest(f"s3://{s3_bucket}/pq")
    assert ("rows", "part-00002.parquet") in kinds(report)


def test_s3_csv_gz_export(s3_bucket: str, s3_client) -> None:
    land_s3(s3_client, s3_bucket, "gz", fmt="csv.gz")
    assert verify_manifest(f"s3://{s3_bucket}/gz/").intact


def test_s3_missing_bucket_and_manifest_exit_2(s3_bucket: str, s3_client, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"s3://{s3_bucket}-missing/export"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([f"s3://{s3_bucket}/no-export-here"]) == 2
    assert f"no manifest: no object at s3://{s3_bucket}/no-export-here/_manifest.json" in capsys.readouterr().err


def test_aws_conn_id_selects_the_connection(
    s3_bucket: str, s3_client, s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_loyalty.testing.s3 import aws_connection_json

    land_s3(s3_client, s3_bucket, "exports")
    env = os.environ.copy()
    env.pop("AIRFLOW_CONN_AWS_DEFAULT")
    env["AIRFLOW_CONN_COMPLIANCE_S3"] = aws_connection_json(s3_server)

    result = run_cli(f"s3://{s3_bucket}/exports", "--aws-conn-id", "compliance_s3", "--json", env=env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parts_checked"] == 3
    assert "testing" not in result.stdout + result.stderr  # the connection's keys are never printed


def test_undefined_connection_exits_2(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"s3://{s3_bucket}/exports", "--aws-conn-id", "no_such_connection"]) == 2
    assert "connection 'no_such_connection' is not defined" in capsys.readouterr().err


def test_other_object_storage_schemes_go_through_object_storage_path(s3_bucket: str, s3_client) -> None:
    """``s3a://`` is not ``s3://``: it is read by the fsspec filesystem ObjectStoragePath attaches."""
    land_s3(s3_client, s3_bucket, "fs")
    report = verify_manifest(f"s3a://{s3_bucket}/fs", conn_id="aws_default")
    # The parts' bare keys are keys in the manifest's bucket, as for s3://.
    assert report.intact, report.problems
    s3_client.put_object(Bucket=s3_bucket, Key="fs/stray.csv", Body=b"x")
    assert kinds(verify_manifest(f"s3a://{s3_bucket}/fs", conn_id="aws_default")) == [("stray", "stray.csv")]


def test_object_storage_path_is_accepted(s3_bucket: str, s3_client) -> None:
    from airflow.sdk import ObjectStoragePath

    land_s3(s3_client, s3_bucket, "osp")
    assert verify_manifest(ObjectStoragePath(f"s3://{s3_bucket}/osp/_manifest.json", conn_id="aws_default")).intact


# --- what the export operators land verifies ---------------------------------------------------------


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.05)


def operator_context() -> dict[str, Any]:
    return {
        "data_interval_start": pendulum.parse("2023-09-01T00:00:00Z"),
        "data_interval_end": pendulum.parse("2023-10-01T00:00:00Z"),
        "outlet_events": None,
    }


def test_local_export_operator_output_is_intact(loyalty_connection, tmp_path: Path) -> None:
    from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator

    operator = LoyaltyExportOperator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        output_path=str(tmp_path / "out"),
        poll_interval=0.05,
        deferrable=False,
    )
    manifest = operator.execute(operator_context())

    report = verify_manifest(manifest)  # the operator's XCom return names its manifest
    assert report.intact, report.problems
    assert (report.parts_checked, report.rows) == (3, 2500)


def test_s3_transfer_output_is_intact_until_a_byte_flips(loyalty_connection, s3_bucket: str, s3_client) -> None:
    from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

    operator = LoyaltyTransactionsToS3Operator(
        task_id="to_s3",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        s3_bucket=s3_bucket,
        s3_key_prefix="compliance/2023-09",
        poll_interval=0.05,
        deferrable=False,
    )
    manifest = operator.execute(operator_context())

    report = verify_manifest(manifest)
    assert report.intact, report.problems
    assert report.rows == 2500

    key = manifest["parts"][1]["key"]
    body = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[-3] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    assert kinds(verify_manifest(manifest)) == [("sha256", "part-00001.csv")]


# --- memory stays flat ---------------------------------------------------------------------------------


def test_memory_stays_flat_verifying_a_200_mib_part(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    rows_per_block = 8192
    block = "".join(
        f'tx-{row:08d},2023-09-01T12:00:00Z,{row}.25,"accrual, order {row} of a long description text"\r\n'
        for row in range(rows_per_block)
    ).encode()
    blocks = (200 * 2**20) // len(block) + 1
    digest = hashlib.sha256(HEADER.encode())
    with open(tmp_path / "part-00000.csv", "wb") as part:
        part.write(HEADER.encode())
        for _ in range(blocks):
            part.write(block)
            digest.update(block)
    size = len(HEADER) + blocks * len(block)
    assert size >= 200 * 2**20
    manifest = manifest_for([("part-00000.csv", b"", blocks * rows_per_block)], None)
    manifest["parts"][0].update(bytes=size, sha256=digest.hexdigest())
    manifest["total_bytes"] = size
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))

    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        report = verify_manifest(tmp_path)
    finally:
        done.set()
        sampler.join()

    assert report.intact, report.problems
    assert report.bytes == size and report.rows == blocks * rows_per_block
    assert peak - baseline < 64 * 2**20, f"RSS grew by {(peak - baseline) / 2**20:.1f} MiB"


# --- the documented DAG example (docs/verify.rst includes it from here) ------------------------------


def build_verified_export_dag():
    # [START howto_verify_task]
    import pendulum
    from airflow.providers.common.compat.sdk import AirflowFailException  # on every Airflow 3 line
    from airflow.sdk import DAG, task

    try:
        from airflow.sdk import CronDataIntervalTimetable  # Airflow 3.2 and newer
    except ImportError:
        from airflow.timetables.interval import CronDataIntervalTimetable  # Airflow 3.1

    from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
    from airflow_provider_loyalty.verify import verify_manifest

    @task(retries=2)
    def verify_export(export: dict) -> dict:
        """Fail the run unless the landed export is exactly what its manifest lists."""
        report = verify_manifest(export)  # the export's XCom names its manifest (and bucket)
        print(report.to_text())
        if report.problems:  # a part missing, altered or unlisted: no retry can fix that
            raise AirflowFailException(report.to_text())
        if report.unchecked:  # e.g. access denied on a part: worth a retry
            raise RuntimeError(report.to_text())
        return {"manifest": report.manifest, "rows": report.rows, "bytes": report.bytes}

    # A data-interval timetable: each run exports its day (the export's default period).
    with DAG(
        "loyalty_export_verified",
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    ) as dag:
        export = LoyaltyTransactionsToS3Operator(
            task_id="export",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            s3_bucket="compliance",
            s3_key_prefix="loyalty/{{ data_interval_start | ds }}",
        )
        verify_export(export.output)
    # [END howto_verify_task]
    return dag


def test_documented_verify_task_fails_the_run_unless_intact(s3_bucket: str, s3_client) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    dag = build_verified_export_dag()
    verify_task = dag.get_task("verify_export")
    assert verify_task.upstream_task_ids == {"export"}
    # Each run has a day to export: with schedule=None (as the example once had) a run's data interval
    # is one instant, and the export refuses it (docs/data-intervals.rst).
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    land_s3(s3_client, s3_bucket, "loyalty/2023-09-01")
    xcom = {"manifest": "loyalty/2023-09-01/_manifest.json", "bucket": s3_bucket}  # as the S3 transfer returns it

    assert verify_task.python_callable(xcom)["rows"] == 123

    s3_client.put_object(Bucket=s3_bucket, Key="loyalty/2023-09-01/part-00003.csv", Body=HEADER.encode())
    with pytest.raises(AirflowFailException, match=r"stray +part-00003\.csv"):
        verify_task.python_callable(xcom)


def test_a_location_switched_while_it_is_verified_is_verified_as_it_is_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run switching the location (manifest, then each part) while loyalty-verify read it made
    the parts it read belong to two exports: NOT INTACT (exit 1) for a location that held a true
    export at every instant. The manifest is read again when problems are found; a changed one is
    verified afresh. The re-run happens when the first part is measured."""
    import airflow_provider_loyalty.verify as verify_module

    location = tmp_path / "location"
    land_local(location, parts=3, rows=40)
    real_measure = verify_module.measure_part
    switched: list[bool] = []

    def measured_during_a_switch(store: Any, path: str, output_format: str) -> Any:
        if not switched:
            switched.append(True)
            (location / "part-00002.csv").unlink()
            land_local(location, parts=2, rows=77)  # the re-run's export, in place
        return real_measure(store, path, output_format)

    monkeypatch.setattr(verify_module, "measure_part", measured_during_a_switch)
    report = verify_manifest(str(location))
    assert switched and report.intact, report.to_text()
    assert report.exit_code == 0 and "2 of 2 parts" in report.to_text()
