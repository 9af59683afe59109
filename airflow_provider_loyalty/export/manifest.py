"""The manifest: what a finished export holds, per part; and its short form for XCom.

``_manifest.json`` is written last and is the completion marker: a manifest exists only for a
complete, verified export, and every part it lists is stored with the size and digest it gives.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_loyalty.export.layout import MANIFEST_NAME, part_name, staged
from airflow_provider_loyalty.export.progress import ExportProgress, PartRecord
from airflow_provider_loyalty.export.sinks import PartSink
from airflow_provider_loyalty.export.spec import ExportSpec

MANIFEST_FORMAT_VERSION = 1
#: Above this many parts, the XCom return carries the manifest without its ``parts`` list (the
#: manifest itself, at its location, always has it): XCom stays small whatever the export's size.
XCOM_PARTS_LIMIT = 100
_PART_FIELDS = ("rows", "bytes", "sha256", "export_task_id", "from_id", "next_from_id", "batch")


def starting_cursor(manifest: dict[str, Any]) -> str | None:
    """The ``from_id`` an export started from, as its manifest says (from its first part's, for a
    manifest written before the field existed; ``None`` for such a manifest without parts).

    :param manifest: a manifest document.
    """
    if "from_id" in manifest:
        return manifest["from_id"]  # type: ignore[no-any-return]
    parts = manifest.get("parts") or [{}]
    first = parts[0] if isinstance(parts[0], dict) else {}
    return first.get("from_id")


def build_manifest(
    spec: ExportSpec,
    progress: ExportProgress,
    records: list[PartRecord],
    sink: PartSink,
    *,
    completed_at: str,
    in_staging: bool = False,
    keep_zip: bool = False,
    written_by: str | None = None,
    written_by_try: int | None = None,
) -> dict[str, Any]:
    """The manifest document (metadata only, never rows).

    :param in_staging: list the parts where a re-run staged them (the switch-over manifest).
    :param keep_zip: each part also lists the batch's original archive kept beside it.
    :param written_by: the Airflow task instance that wrote it (``dag/run/task/map_index``), so that a
        retry of that task instance knows the finished export for its own.
    :param written_by_try: that task instance's try (a retry tells its run's export from a re-run's).
    """
    parts = []
    for record in records:
        stored = staged(record.name) if in_staging else record.name
        entry: dict[str, Any] = {"key": sink.key(stored), **{name: getattr(record, name) for name in _PART_FIELDS}}
        if keep_zip:
            archive = part_name(record.index, "zip")
            entry["archive_key"] = sink.key(staged(archive) if in_staging else archive)
        parts.append(entry)
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        **spec.period,
        "from_id": spec.from_id,
        "output_format": spec.output_format,
        "parts": parts,
        "total_rows": sum(record.rows for record in records),
        "total_bytes": sum(record.bytes for record in records),
        "batches": progress.batches_done,
        "duplicates_dropped": progress.duplicates_dropped,
        "started_at": progress.started_at,
        "completed_at": completed_at,
        "manifest": sink.url(MANIFEST_NAME),
        "written_by": written_by,
        "written_by_try": written_by_try,
    }


def xcom_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as an operator returns it: whole, or without ``parts`` once that list is long."""
    parts = manifest.get("parts", [])
    if len(parts) <= XCOM_PARTS_LIMIT:
        return manifest
    summary = {key: value for key, value in manifest.items() if key != "parts"}
    summary["parts_count"] = len(parts)
    summary["parts_omitted"] = f"{len(parts)} parts: read them from the manifest at {manifest.get('manifest')}"
    return summary
