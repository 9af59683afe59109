"""The local sink's moves: a staged part put under its final name, also when a retry redoes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.export import sinks
from airflow_provider_loyalty.export.sinks import ObjectStorageSink


def test_a_move_redone_by_a_retry_leaves_no_temporary_name(tmp_path: Path) -> None:
    """The retry of a killed switch moves a part again onto the link the first move made: renaming a
    link over a link to the same file does nothing, and a ``_tmp-…`` name stayed for good."""
    sink = ObjectStorageSink(str(tmp_path))
    sink.write_bytes("_staging/part-00000.csv", b"transaction_id\r\nt1\r\n")
    sink.move("_staging/part-00000.csv", "part-00000.csv")
    sink.move("_staging/part-00000.csv", "part-00000.csv")  # redone after a crash
    names = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    assert names == ["_staging/part-00000.csv", "part-00000.csv"]
    assert (tmp_path / "part-00000.csv").read_bytes() == b"transaction_id\r\nt1\r\n"


def test_an_upload_interrupted_mid_copy_leaves_the_previous_object(
    s3_bucket: str, s3_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec commits a file when its ``with`` ends, also on an exception: a task killed while
    publishing stored a truncated history over the previous one. The kill cannot be timed against
    a loopback server, so the copy itself raises half-way, as a signal handler would."""
    from airflow.sdk import ObjectStoragePath

    previous = b'{"transaction_id": "old"}\n' * 3
    s3_client.put_object(Bucket=s3_bucket, Key="members/history.jsonl", Body=previous)
    local = tmp_path / "history.jsonl"
    local.write_bytes(b'{"transaction_id": "new"}\n' * 1000)

    def killed_half_way(source: Any, destination: Any, length: int = 0) -> None:
        destination.write(source.read(100))
        raise KeyboardInterrupt("the task was killed")

    monkeypatch.setattr(sinks.shutil, "copyfileobj", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        sinks.publish_file(str(local), ObjectStoragePath(f"s3://aws_default@{s3_bucket}/members/history.jsonl"))
    stored = s3_client.get_object(Bucket=s3_bucket, Key="members/history.jsonl")["Body"].read()
    assert stored == previous
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_object_too_large_to_be_a_document_is_unreadable_not_read_whole(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease, checkpoint, record or manifest is read whole into memory: an object at one of those
    names larger than any export writes is refused as unreadable (as one that is not JSON is),
    without reading it all."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_provider_loyalty.export.s3_sink import S3PartSink

    monkeypatch.setattr(sinks, "MAX_DOCUMENT_BYTES", 1024)
    sink: sinks.PartSink
    if where == "local":
        sink = ObjectStorageSink(str(tmp_path))
    else:
        sink = S3PartSink(S3Hook(aws_conn_id="aws_default"), request.getfixturevalue("s3_bucket"), "exports")
    sink.write_bytes("_manifest.json", b'{"padding": "' + b"x" * 2000 + b'"}')
    with pytest.raises(sinks.UnreadableDocument, match=r"_manifest.json is over 1,024 bytes"):
        sink.read_json("_manifest.json")
    sink.write_bytes("_manifest.json", b'{"padding": "' + b"x" * 1000 + b'"}')
    assert sink.read_json("_manifest.json") == {"padding": "x" * 1000}


# ------------------------------------------------------------------ a lease on an s3:// object store location


def _writer_between_check_and_write(sink: ObjectStorageSink, monkeypatch: pytest.MonkeyPatch, write: Any) -> None:
    """Run ``write`` (another writer) once, right before ``sink`` writes: the window of two
    writers taking one lease at the same instant, made certain instead of likely."""
    fs = sink._fs
    pending = [write]

    def first_the_other_writer() -> None:
        while pending:
            pending.pop()()

    real_pipe, real_open = fs.pipe_file, fs.open

    def pipe_file(path: str, value: bytes, **kwargs: Any) -> Any:
        first_the_other_writer()
        return real_pipe(path, value, **kwargs)

    def open_(path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            first_the_other_writer()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", pipe_file)
    monkeypatch.setattr(fs, "open", open_)


def _require_conditional_writes(s3_client: Any, bucket: str) -> None:
    """moto enforces If-None-Match / If-Match from 5.0.x on; the floor ``make test-lowest`` installs
    (5.0.0) takes every write, so there is nothing to test against."""
    s3_client.put_object(Bucket=bucket, Key="probe", Body=b"1")
    try:
        s3_client.put_object(Bucket=bucket, Key="probe", Body=b"2", IfNoneMatch="*")
    except Exception:
        return
    pytest.skip("this moto does not enforce S3's conditional writes")


def test_two_writers_cannot_both_create_a_document_on_s3(
    s3_bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LoyaltyExportOperator(output_path="s3://...")`` took its lease by check, write, read back:
    two runs starting together both saw no lease, both wrote, and each read its own back (the
    probe of 2026-12-05: 5 of 8 trials failed one run). S3's If-None-Match makes it exact."""
    _require_conditional_writes(s3_client, s3_bucket)
    sink = ObjectStorageSink(f"s3://{s3_bucket}/exports", conn_id="aws_default")
    other = {"Bucket": s3_bucket, "Key": "exports/_lease.json", "Body": b'{"task": "the other run"}'}
    _writer_between_check_and_write(sink, monkeypatch, lambda: s3_client.put_object(**other))
    assert sink.create_exclusive("_lease.json", b'{"task": "this run"}') is None
    assert s3_client.get_object(Bucket=s3_bucket, Key="exports/_lease.json")["Body"].read() == other["Body"]


def test_a_document_changed_after_it_was_read_is_not_replaced_on_s3(
    s3_bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_conditional_writes(s3_client, s3_bucket)
    sink = ObjectStorageSink(f"s3://{s3_bucket}/exports", conn_id="aws_default")
    tag = sink.create_exclusive("_lease.json", b'{"task": "this run", "renewed": 1}')
    assert tag is not None
    other = {"Bucket": s3_bucket, "Key": "exports/_lease.json", "Body": b'{"task": "a run that took it over"}'}
    _writer_between_check_and_write(sink, monkeypatch, lambda: s3_client.put_object(**other))
    assert sink.replace_if("_lease.json", b'{"task": "this run", "renewed": 2}', tag) is None
    assert s3_client.get_object(Bucket=s3_bucket, Key="exports/_lease.json")["Body"].read() == other["Body"]


def test_a_location_is_locked_by_exports_of_any_os_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock file of a local document's compare-and-replace was opened for appending: a worker
    running exports as another OS user (``run_as_user``) failed with PermissionError on the first
    user's file, and Linux refuses O_CREAT on another user's file in the sticky temporary directory
    (``fs.protected_regular``). Now it is made readable by all, whatever the umask, and opened
    read-only without O_CREAT once it exists (root, running the tests, is refused neither: the
    flags are what is checked)."""
    monkeypatch.setattr(sinks.tempfile, "tempdir", str(tmp_path))
    opened: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, *args: Any) -> int:
        if os.path.basename(path).startswith("loyalty-lock-"):
            opened.append(flags)
        return real_open(path, flags, *args)

    monkeypatch.setattr(sinks.os, "open", spy)
    sink = ObjectStorageSink(str(tmp_path / "exports"))
    previous = os.umask(0o077)
    try:
        with sink._locked("_lease.json"):  # the first export there makes the lock file
            pass
    finally:
        os.umask(previous)
    (lock_file,) = tmp_path.glob("loyalty-lock-*")
    assert lock_file.stat().st_mode & 0o777 == 0o644
    opened.clear()
    with sink._locked("_lease.json"):  # any later one, of any user, opens it read-only
        pass
    assert opened == [os.O_RDONLY]
