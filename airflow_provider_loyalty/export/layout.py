"""The names of everything an export writes at its location.

::

    <location>/part-00000.csv, part-00001.csv, ...   the parts of the finished export
    <location>/_manifest.json                        written last: the completion marker
    <location>/_manifest.inprogress.json             the checkpoint while an export runs (small)
    <location>/_lease.json                           who writes here now, until when
    <location>/_parts/part-00000.json ...            one record per landed part, written once
    <location>/_staging/part-00000.csv ...           a re-run's parts, until they replace the old set
    <location>/_tmp-<hex>                            a local write in flight, renamed over its name when
                                                     complete (left only by a writer killed mid-write)

Names starting with ``_`` are bookkeeping, never data: a verifier reading the location ignores
them, and an export only ever deletes its own kinds of names.
"""

from __future__ import annotations

import re
import uuid

from airflow_provider_loyalty.export.part_formats import part_suffix

MANIFEST_NAME = "_manifest.json"
CHECKPOINT_NAME = "_manifest.inprogress.json"
LEASE_NAME = "_lease.json"
RECORDS_DIR = "_parts"
STAGING_DIR = "_staging"
TEMPORARY_PREFIX = "_tmp-"
#: The most bytes of a bookkeeping document read (lease, checkpoint, part record, manifest). What an
#: export writes stays far below (about 300 bytes a part in the manifest); a larger object at one of
#: those names is not ours, and reading it whole could exhaust the worker's memory.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024

_PART_NAME = re.compile(r"^part-\d{5,}\.(csv|csv\.gz|parquet|zip)$")


def is_reserved_location_name(name: str) -> bool:
    """Whether an export location named ``name`` would sit inside another location's bookkeeping
    (``<dir>/_staging``, ``<dir>/_parts``, ``<dir>/_tmp-…``), where an export at ``<dir>`` deletes.

    :param name: the location's last path segment.
    """
    return name in (RECORDS_DIR, STAGING_DIR) or name.startswith(TEMPORARY_PREFIX)


def part_name(index: int, output_format: str = "csv") -> str:
    """``part-00000.csv`` for batch 0 in CSV; ``part-00000.zip`` for a kept original archive."""
    suffix = "zip" if output_format == "zip" else part_suffix(output_format)
    return f"part-{index:05d}.{suffix}"


def is_part_name(name: str) -> bool:
    """Whether a file name is one of ours (a part in any format, or a kept archive)."""
    return bool(_PART_NAME.match(name))


def record_name(index: int) -> str:
    """Where the record of part ``index`` is kept while the export runs."""
    return f"{RECORDS_DIR}/part-{index:05d}.json"


def staged(name: str) -> str:
    """The staging name of a part of a re-run."""
    return f"{STAGING_DIR}/{name}"


def temporary_name() -> str:
    """A fresh name for a local write in flight (see the module docstring)."""
    return f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
