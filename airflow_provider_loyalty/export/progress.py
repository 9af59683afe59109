"""Where an export stands: the checkpoint, and the record of each landed part.

The checkpoint is small and does not grow with the export: the cursor, the export tasks created
but not landed yet, the boundary ids of the last part and running totals. Each landed part gets a
record of its own, written once (:class:`PartRecord`); the manifest is built from the records when
the export is sealed. So a batch's bookkeeping costs the same at batch 10,000 as at batch 10.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

CHECKPOINT_FORMAT_VERSION = 2
#: Cursors remembered to recognise a loop (a ``next_from_id`` already used).
RECENT_CURSORS = 4

EXPORTING, SEALING, CLEANUP = "exporting", "sealing", "cleanup"


@dataclass
class PendingTask:
    """An export task created for a batch and not landed yet.

    :param task_id: the export task.
    :param from_id: the cursor it was created with.
    :param created_in_try: the Airflow try that created it (``None``: another try's, adopted, or
        outside Airflow): its failure is that try's to report, not a batch to create again.
    :param created_by: the task instance that created it (``dag/run/task/map_index``): another
        task instance's try of the same number resuming this checkpoint did not create it.
    :param created_at: when it was created (epoch seconds; ``None`` in older checkpoints).
    """

    task_id: str
    from_id: str | None
    created_in_try: int | None = None
    created_by: str | None = None
    created_at: float | None = None


@dataclass
class PartRecord:
    """What the manifest says about one part; written once, when the part has landed.

    :param index: the part's number.
    :param name: its file name under the location (``part-00000.csv``).
    :param rows: data rows it holds.
    :param bytes: size of the stored object.
    :param sha256: digest of the stored object.
    :param export_task_id: the export task whose file it came from.
    :param from_id: the cursor the batch was created with.
    :param next_from_id: the cursor the API gave for the next batch ('' for the last).
    :param duplicates_dropped: boundary duplicates left out of it.
    :param batch: the batch it came from, counting empty batches (which land no part): adjacent
        numbers mean adjacent batches, whose cursors chain (``None`` in records of older exports).
    """

    index: int
    name: str
    rows: int
    bytes: int
    sha256: str
    export_task_id: str
    from_id: str | None
    next_from_id: str
    duplicates_dropped: int = 0
    batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> PartRecord:
        """Rebuild from :meth:`to_dict`'s output."""
        return cls(**{f.name: document[f.name] for f in fields(cls) if f.name in document})


@dataclass
class ExportProgress:
    """The checkpoint: primitives only, and of bounded size whatever the number of parts.

    :param spec: the export it belongs to (:meth:`ExportSpec.to_dict`).
    :param writer: who wrote it last (for people reading the location).
    :param staged: parts go to the staging area (a finished export of this period is at the
        location and must stay provable until this one is complete).
    :param phase: ``exporting``, ``sealing`` (manifest being switched) or ``cleanup``.
    :param started_at: when the export began (RFC3339).
    :param parts_landed: parts landed so far (their records are under ``_parts/``).
    :param batches_done: batches landed so far, empty ones included.
    :param cursor: ``from_id`` of the next batch to land.
    :param exhausted: the last batch landed had no ``next_from_id``: only sealing is left.
    :param pending: export tasks created and not landed yet, the next batch's first.
    :param recent_cursors: the last cursors used (loop detection).
    :param recreations: attempts at landing the batch at ``cursor`` that were given up.
    :param tail_ids: trailing transaction ids of the last part (boundary de-duplication).
    :param columns_sha256: digest of the CSV header of the parts landed so far (every later part
        must have that header).
    :param duplicates_dropped: boundary duplicates left out so far.
    :param rows: data rows landed so far.
    :param bytes: bytes stored so far.
    :param keep_zip: each part's archive is stored beside it (as the export began; sealing follows it).
    :param sealed_by: the task instance whose seal this is (set when sealing begins): the manifest
        names it, also when another try finishes the seal.
    :param sealed_by_try: its try.
    """

    spec: dict[str, Any]
    writer: str = ""
    staged: bool = False
    phase: str = EXPORTING
    started_at: str = ""
    parts_landed: int = 0
    batches_done: int = 0
    cursor: str | None = None
    exhausted: bool = False
    pending: list[PendingTask] = field(default_factory=list)
    recent_cursors: list[str] = field(default_factory=list)
    recreations: list[dict[str, str]] = field(default_factory=list)
    tail_ids: list[str] = field(default_factory=list)
    columns_sha256: str | None = None
    duplicates_dropped: int = 0
    rows: int = 0
    bytes: int = 0
    keep_zip: bool = False
    sealed_by: str | None = None
    sealed_by_try: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for the checkpoint document."""
        return {"format_version": CHECKPOINT_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ExportProgress:
        """Rebuild from :meth:`to_dict`'s output; ``ValueError``/``KeyError``/``TypeError`` if malformed."""
        if document.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(f"checkpoint format {document.get('format_version')!r}")
        values = {f.name: document[f.name] for f in fields(cls) if f.name in document}
        values["pending"] = [PendingTask(**item) for item in values.get("pending", [])]
        progress = cls(**values)
        if not isinstance(progress.spec, dict) or progress.phase not in (EXPORTING, SEALING, CLEANUP):
            raise ValueError("checkpoint spec/phase")
        return progress

    def remember_cursor(self, cursor: str | None) -> None:
        """Note a cursor as used (a later ``next_from_id`` equal to it is a loop)."""
        if cursor:
            self.recent_cursors = [*self.recent_cursors, cursor][-RECENT_CURSORS:]
