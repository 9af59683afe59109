"""The local sink's moves: a staged part put under its final name, also when a retry redoes it."""

from __future__ import annotations

from pathlib import Path

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
