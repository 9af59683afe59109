"""Sealing an export: check what is stored, switch the manifest, clean up.

At every instant the location holds either the previous true manifest or the new one:

* first export at a location: parts were written under their final names; the manifest is
  written once every stored part has been checked against its record;
* a re-run over a finished export of the same period: parts were staged under ``_staging/``. The
  switch-over manifest (listing the staged parts) replaces the old one in one write; the staged
  parts are then moved to their final names and the final manifest written; only then are the
  old set's extra parts and the staging area removed.

Every step is recorded in the checkpoint (``phase``), so a crash anywhere is resumed by the retry.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pendulum

from airflow_provider_loyalty.exceptions import LoyaltyEmptyExportError, LoyaltyError, LoyaltyVerificationError
from airflow_provider_loyalty.export.layout import (
    CHECKPOINT_NAME,
    MANIFEST_NAME,
    RECORDS_DIR,
    STAGING_DIR,
    is_part_name,
    part_name,
    record_name,
    staged,
)
from airflow_provider_loyalty.export.manifest import build_manifest
from airflow_provider_loyalty.export.progress import CLEANUP, EXPORTING, SEALING, ExportProgress, PartRecord
from airflow_provider_loyalty.export.sinks import PartSink, UnreadableDocument
from airflow_provider_loyalty.export.spec import ExportSpec

_READERS = 8


class Sealer:
    """Seals one export at its sink.

    :param sink: the location.
    :param spec: the export.
    :param fail_on_empty: an export without a single transaction is an error, not an empty manifest.
    :param log: logger.
    :param written_by: the Airflow task instance sealing it (recorded in the manifest).
    :param written_by_try: its try (recorded in the manifest).
    """

    def __init__(
        self,
        sink: PartSink,
        spec: ExportSpec,
        *,
        fail_on_empty: bool,
        log: Any,
        written_by: str | None = None,
        written_by_try: int | None = None,
    ) -> None:
        self.sink = sink
        self.written_by = written_by
        self.written_by_try = written_by_try
        self.spec = spec
        self.fail_on_empty = fail_on_empty
        self.log = log

    def seal(self, progress: ExportProgress) -> dict[str, Any]:
        """Finish the export; return the final manifest."""
        if progress.phase == CLEANUP:
            manifest = self.sink.read_json(MANIFEST_NAME)
            if manifest is not None:
                self._clean_up(progress)
                return manifest
        if progress.phase == EXPORTING:  # this writer's seal: its manifest names it, whoever finishes it
            progress.sealed_by, progress.sealed_by_try = self.written_by, self.written_by_try
        records = self.read_records(progress)
        self._check_stored(progress, records)
        if self.fail_on_empty and not any(record.rows for record in records):
            self.discard(progress)
            raise LoyaltyEmptyExportError(
                f"the period ({self.spec.describe_period()}) holds no transactions and fail_on_empty=True; "
                "no manifest was written"
            )
        completed_at = pendulum.now("UTC").to_iso8601_string()
        if progress.staged:
            progress.phase = SEALING
            self._checkpoint(progress)
            self._write_manifest(progress, records, completed_at, in_staging=True)  # the switch
            for record in records:
                for name in self._names_of(record, progress):
                    self.sink.move(staged(name), name)
        manifest = self._write_manifest(progress, records, completed_at, in_staging=False)
        progress.phase = CLEANUP
        self._checkpoint(progress)
        self._clean_up(progress)
        return manifest

    def read_records(self, progress: ExportProgress) -> list[PartRecord]:
        """The records of every landed part, in order (read in parallel: there may be thousands)."""
        names = [record_name(index) for index in range(progress.parts_landed)]
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            documents = list(pool.map(self.sink.read_json, names))
        missing = [name for name, document in zip(names, documents, strict=True) if document is None]
        if missing:
            raise LoyaltyError(f"{self.sink.describe()}: the records {missing[:3]} of landed parts are gone")
        return [PartRecord.from_dict(document) for document in documents if document is not None]

    @staticmethod
    def _names_of(record: PartRecord, progress: ExportProgress) -> list[str]:
        """The objects a landed part stored: the part, and its archive when the export keeps them
        (as its checkpoint says: a retry with another ``keep_zip`` seals what was stored)."""
        return [record.name, part_name(record.index, "zip")] if progress.keep_zip else [record.name]

    def _check_stored(self, progress: ExportProgress, records: list[PartRecord]) -> None:
        """Every part is stored with the size its record gives (one listing, no downloads)."""
        area = STAGING_DIR if progress.staged else ""  # staged parts stay until the cleanup
        stored = self.sink.sizes(area)
        for record in records:
            name = f"{area}/{record.name}" if area else record.name
            if stored.get(name) != record.bytes:
                self.discard(progress)
                raise LoyaltyVerificationError(
                    f"{self.sink.url(name)} is stored with {stored.get(name)} bytes, but {record.bytes} were "
                    "written: the location was changed while the export ran. No manifest was written; the "
                    "next try starts the export afresh"
                )

    def _write_manifest(
        self, progress: ExportProgress, records: list[PartRecord], completed_at: str, *, in_staging: bool
    ) -> dict[str, Any]:
        manifest = build_manifest(
            self.spec,
            progress,
            records,
            self.sink,
            completed_at=completed_at,
            in_staging=in_staging,
            keep_zip=progress.keep_zip,
            written_by=progress.sealed_by if progress.sealed_by is not None else self.written_by,
            written_by_try=progress.sealed_by_try if progress.sealed_by_try is not None else self.written_by_try,
        )
        self.sink.write_json(MANIFEST_NAME, manifest)
        return manifest

    def _clean_up(self, progress: ExportProgress) -> None:
        """Remove what the finished export does not list: old parts, staging, records, checkpoint."""
        keep = {name for index in range(progress.parts_landed) for name in self._index_names(index, progress)}
        stale = [name for name in self.sink.sizes() if is_part_name(name) and name not in keep]
        if stale:
            self.log.info("Deleting %d part(s) the new manifest does not list: %s", len(stale), ", ".join(stale[:5]))
        self.sink.delete(stale + list(self.sink.sizes(STAGING_DIR)) + list(self.sink.sizes(RECORDS_DIR)))
        self.sink.delete([CHECKPOINT_NAME])

    def _index_names(self, index: int, progress: ExportProgress) -> list[str]:
        names = [part_name(index, self.spec.output_format)]
        return [*names, part_name(index, "zip")] if progress.keep_zip else names

    def discard(self, progress: ExportProgress) -> None:
        """Forget the unfinished export (its parts, records and checkpoint), so the next try starts
        afresh: no manifest lists its parts, and without its checkpoint nothing would say whose
        they are (the next export refuses part names no export wrote)."""
        names = [name for index in range(progress.parts_landed) for name in self._index_names(index, progress)]
        parts = [staged(name) for name in names] if progress.staged else names
        self.sink.delete([*parts, *(record_name(index) for index in range(progress.parts_landed)), CHECKPOINT_NAME])

    def _checkpoint(self, progress: ExportProgress) -> None:
        self.sink.write_json(CHECKPOINT_NAME, progress.to_dict())


def finish_interrupted_switch(sink: PartSink, log: Any) -> set[str]:
    """Finish a re-run's switch that died half-way, from its manifest alone; return the staged keys
    the manifest still lists (none once finished: a switch that cannot be, some of its parts gone).

    A re-run of a period writes a manifest listing its staged parts, then copies each to its final
    name, then writes the final manifest, then deletes the old set's parts it does not list. A
    writer killed in between leaves a manifest listing ``_staging/`` (true: those objects are
    there), or old parts beside the final manifest. Any later export of the location, whatever it
    asks for, first completes that switch (copies the staged parts to their names, lists them
    there, and, as its checkpoint says it was sealing, deletes the parts the manifest does not
    list), so that clearing the staging area never takes a listed part away, and a later export
    that fails leaves no part the manifest does not list. No export may delete the staged keys
    returned (the manifest would list what is gone).
    """
    try:
        manifest = sink.read_json(MANIFEST_NAME)
    except UnreadableDocument:
        return set()
    if manifest is None:
        return set()
    moves = _staged_entries(sink, manifest)
    if moves:
        in_staging = {sink.key(name): name for name in sink.sizes(STAGING_DIR)}
        if any(key not in in_staging for _, _, key in moves):
            log.warning("%s lists staged parts that are gone; leaving it as it is", sink.url(MANIFEST_NAME))
            return {key for _, _, key in moves}
        log.info("A re-run at %s died switching to its parts; finishing the switch first", sink.describe())
        for entry, field, key in moves:
            name = in_staging[key].removeprefix(STAGING_DIR + "/")
            sink.move(in_staging[key], name)
            entry[field] = sink.key(name)
        sink.write_json(MANIFEST_NAME, manifest)
    if _seal_died(sink):
        _delete_unlisted_parts(sink, manifest, log)
    return set()


def _seal_died(sink: PartSink) -> bool:
    """Whether the checkpoint at the location (of any export) says its writer died sealing."""
    try:
        checkpoint = sink.read_json(CHECKPOINT_NAME)
    except UnreadableDocument:
        return False
    return checkpoint is not None and checkpoint.get("phase") in (SEALING, CLEANUP)


def _delete_unlisted_parts(sink: PartSink, manifest: dict[str, Any], log: Any) -> None:
    """The cleanup of a seal that died: delete the parts at the location its manifest does not list
    (the old set's extra parts). Only when every part it lists is there under the name it gives:
    a manifest that names its parts otherwise is left as it is."""
    listed: set[str] = set()
    for entry in manifest.get("parts") or []:
        if isinstance(entry, dict):
            listed.update(key for key in (entry.get("key"), entry.get("archive_key")) if isinstance(key, str))
    stored = {sink.key(name): name for name in sink.sizes() if is_part_name(name)}
    if not listed <= stored.keys():
        return
    stale = sorted(name for key, name in stored.items() if key not in listed)
    if stale:
        log.info("Deleting %d part(s) a finished export's manifest does not list: %s", len(stale), ", ".join(stale[:5]))
        sink.delete(stale)


def _staged_entries(sink: PartSink, manifest: Any) -> list[tuple[dict[str, Any], str, str]]:
    """``(part entry, field, key)`` of every ``key`` / ``archive_key`` of ``manifest`` in the staging area."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        return []
    marker = sink.key(staged("part-"))[: -len("part-")]  # how the manifest names the staging area
    entries: list[tuple[dict[str, Any], str, str]] = []
    for entry in manifest["parts"]:
        for field in ("key", "archive_key"):
            key = entry.get(field) if isinstance(entry, dict) else None
            if isinstance(key, str) and key.startswith(marker):
                entries.append((entry, field, key))
    return entries
