"""Re-check a landed export against its manifest: :func:`verify_manifest` and ``loyalty-verify``.

Every part the manifest lists is read again, as a stream, and its stored bytes, SHA-256 and data
rows are compared with the manifest; the export location is listed for objects the manifest does not
list (strays). Files whose names start with ``_`` (the manifest, the in-progress checkpoint, a
lease, staging areas) are bookkeeping and only reported as notes; other sub-directories of the
location are not listed (another export's location, or not the export's at all). Parts the
manifest does not list are strays, unless a re-run is switching the location over right now (its
checkpoint says so and its writer holds the lease): then they are counted as awaiting its clean-up.

Exit codes of ``loyalty-verify``: 0 intact, 1 not intact, 2 cannot check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Importing Airflow may log (e.g. its configuration in unit-test mode) before any logging is set up;
# the command's stdout is its report, so those lines go to stderr.
with contextlib.redirect_stdout(sys.stderr):
    from airflow_provider_loyalty.exceptions import LoyaltyError
from airflow_provider_loyalty.export.layout import (
    CHECKPOINT_NAME,
    LEASE_NAME,
    MANIFEST_NAME,
    MAX_DOCUMENT_BYTES,
    STAGING_DIR,
    TEMPORARY_PREFIX,
    is_part_name,
)
from airflow_provider_loyalty.export.lease import is_live
from airflow_provider_loyalty.export.part_formats import OUTPUT_FORMATS
from airflow_provider_loyalty.export.progress import CLEANUP, SEALING, ExportProgress
from airflow_provider_loyalty.export.spec import period_of
from airflow_provider_loyalty.verify_chain import chain_notes, manifest_problems
from airflow_provider_loyalty.verify_parts import measure_part
from airflow_provider_loyalty.verify_storage import (
    LOCAL_SCHEME,
    ObjectMissing,
    StorageError,
    Store,
    open_store,
    split_url,
)

__all__ = ["CannotVerifyError", "PartProblem", "VerifyReport", "main", "verify_manifest"]

EXIT_INTACT, EXIT_NOT_INTACT, EXIT_CANNOT_CHECK = 0, 1, 2
#: A manifest is metadata (about 300 bytes a part): anything larger is not one.
MAX_MANIFEST_BYTES = MAX_DOCUMENT_BYTES
_SHA256_HEX = frozenset("0123456789abcdef")
_BOOKKEEPING_MEANING = {
    "_manifest.inprogress.json": "an export is in progress here, or one stopped before finishing (its checkpoint)",
    "_lease.json": "an export holds this location's lease (one is writing, or one stopped without releasing it)",
    "_staging": "parts staged by an export or a re-run that has not switched over yet",
    "_parts": "parts of an export in progress",
    f"{TEMPORARY_PREFIX}*": "local writes cut off mid-write by a stopped writer (never a part; safe to delete)",
}


class CannotVerifyError(LoyaltyError):
    """The export cannot be checked: manifest missing, unreadable or not a manifest; access denied;
    unknown scheme; missing bucket or connection. ``loyalty-verify`` exits 2."""


@dataclass(frozen=True)
class PartProblem:
    """One reason an export is not intact.

    :param kind: ``missing``, ``bytes``, ``sha256``, ``rows``, ``unreadable`` (the part does not
        parse as its format), ``stray`` (an object the manifest does not list), ``duplicate`` (a
        part listed twice, or two parts of the same bytes), ``foreign`` (a part on another storage
        system), ``totals``, ``order`` (a part not listed in batch order) or ``chain`` (cursors of
        adjacent batches that do not follow on).
    :param part: the part's key as the manifest writes it (for a stray: its name under the location).
    :param detail: what was expected and what was found, for people.
    :param expected: the manifest's value, when there is one.
    :param actual: the stored value, when there is one.
    :param location: where the part was read, when that is not where its key says: beside a
        manifest copied or moved elsewhere, or at its final name after a re-run's switch moved it
        out of ``_staging/``. The report's lines name it instead of the key.
    """

    kind: str
    part: str
    detail: str
    expected: int | str | None = None
    actual: int | str | None = None
    location: str | None = None

    @property
    def named(self) -> str:
        """What the report's line names: where the part was read, else its key."""
        return self.location or self.part

    def __str__(self) -> str:
        return f"{self.kind} {self.named}: {self.detail}"


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_manifest`.

    :param manifest: where the manifest was read (URL or local path, without credentials).
    :param output_format: the parts' format (``csv``, ``csv.gz`` or ``parquet``).
    :param intact: every listed part is stored as the manifest says and nothing else is there.
    :param problems: why it is not intact, one entry per part and kind.
    :param unchecked: what could not be checked (access denied on a part, no pyarrow for Parquet rows).
    :param notes: bookkeeping found at the location (an export in progress, a lease ...).
    :param parts_listed: parts the manifest lists.
    :param parts_checked: parts read to the end.
    :param rows: data rows counted in the parts read.
    :param bytes: bytes of the parts read.
    :param awaiting_cleanup: part-named objects the manifest does not list, left beside it while a
        re-run switches the location over (its checkpoint says so and it holds the lease): the
        replaced export's, gone when its clean-up is done. Not strays while the switch lasts.
    """

    manifest: str
    output_format: str
    intact: bool = False
    problems: list[PartProblem] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts_listed: int = 0
    parts_checked: int = 0
    rows: int = 0
    bytes: int = 0
    awaiting_cleanup: int = 0

    @property
    def exit_code(self) -> int:
        """0 intact, 1 not intact, 2 cannot check (something unchecked and nothing found wrong)."""
        if self.problems:
            return EXIT_NOT_INTACT
        return EXIT_CANNOT_CHECK if self.unchecked else EXIT_INTACT

    @property
    def status(self) -> str:
        """``intact``, ``not intact`` or ``cannot check``."""
        return {EXIT_INTACT: "intact", EXIT_NOT_INTACT: "not intact"}.get(self.exit_code, "cannot check")

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with ``status`` and ``exit_code``."""
        return {"status": self.status, "exit_code": self.exit_code, **asdict(self)}

    def to_text(self) -> str:
        """One line per problem, unchecked item and note, then a summary line."""
        lines = [f"  {problem.kind:<10} {problem.named}: {problem.detail}" for problem in self.problems]
        lines += [f"  {'unchecked':<10} {item}" for item in self.unchecked]
        lines += [f"  {'note':<10} {note}" for note in self.notes]
        read = f"{self.parts_checked} of {self.parts_listed} parts read, {self.rows:,} rows, {_mib(self.bytes)}"
        if self.problems:
            kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(p.kind for p in self.problems).items())
            summary = f"NOT INTACT: {self.manifest}: {len(self.problems)} problem(s) ({kinds}); {read}"
        elif self.unchecked:
            summary = f"CANNOT CHECK: {self.manifest}: {len(self.unchecked)} item(s) unchecked; {read}"
        elif self.awaiting_cleanup:
            summary = (
                f"INTACT: {self.manifest}: {read}, as the manifest says; {self.awaiting_cleanup} unlisted part(s) "
                "left until a re-run's switch finishes (see the notes): verify again once it has"
            )
        else:
            summary = f"INTACT: {self.manifest}: {read}, as the manifest says; no stray objects"
        return "\n".join([*lines, summary])


@dataclass(frozen=True)
class _ListedPart:
    index: int
    key: str
    rows: int
    bytes: int
    sha256: str


def verify_manifest(location: Any, *, conn_id: str | None = None) -> VerifyReport:
    """Re-read every part of a landed export and compare it with the export's manifest.

    Streams every part (memory stays flat for any size), so it can run in a worker right after the
    export. Raises :class:`CannotVerifyError` when the manifest cannot be read or is not one.

    :param location: the manifest's location, or its directory / prefix (then ``_manifest.json``
        under it): a local path, ``file://``, ``s3://bucket/prefix`` or any ``ObjectStoragePath``
        URL; an ``ObjectStoragePath``; or an export operator's return value (its ``manifest`` and,
        for the S3 transfer, ``bucket``).
    :param conn_id: the connection to read with (``s3://`` defaults to ``aws_default``).
    """
    raw_location, conn_id = _location_of(location, conn_id)
    try:
        store, path = open_store(raw_location, conn_id)
        if store.is_directory_reference(path, raw_location):
            path = posixpath.join(path.rstrip("/"), MANIFEST_NAME)
        document = _read_manifest(store, path)
    except ObjectMissing as missing:
        raise CannotVerifyError(f"no manifest: {missing}") from None
    except StorageError as error:
        raise CannotVerifyError(str(error)) from None
    for _attempt in range(_SWITCHES_FOLLOWED):
        listed, output_format = _parse_manifest(document, store.display(path))
        report = _Verification(store, path, document, listed, output_format).run()
        if report.intact:
            return report
        # A re-run may have switched the location while its parts were read (its manifest first,
        # then each part): what was read belongs to two exports. The manifest says whether it did.
        current = _manifest_now(store, path)
        if current is None or current == document:
            return report
        document = current
    raise CannotVerifyError(
        f"{store.display(path)} changed {_SWITCHES_FOLLOWED} times while it was verified (exports replacing "
        "it one after another): verify again once they are done"
    )


#: Manifests a verification follows when the location is switched while it reads (see verify_manifest).
_SWITCHES_FOLLOWED = 3


def _manifest_now(store: Store, path: str) -> Any:
    """The manifest as it is now, or ``None`` when it cannot be read (then the report stands)."""
    try:
        return _read_manifest(store, path)
    except (StorageError, CannotVerifyError):
        return None


def _location_of(location: Any, conn_id: str | None) -> tuple[str, str | None]:
    if isinstance(location, Mapping):
        where = location.get("manifest")
        if not isinstance(where, str) or not where:
            raise CannotVerifyError("the export result given has no 'manifest' location")
        bucket = location.get("bucket")
        if isinstance(bucket, str) and bucket and "://" not in where:
            where = f"s3://{bucket}/{where.lstrip('/')}"
        return where, conn_id
    protocol, path = getattr(location, "protocol", None), getattr(location, "path", None)
    if isinstance(protocol, str) and isinstance(path, str):  # an ObjectStoragePath
        conn_id = conn_id or getattr(location, "conn_id", None)
        return (path if protocol in ("", "file", "local") else f"{protocol}://{path}"), conn_id
    return os.fspath(location), conn_id


def _read_manifest(store: Store, path: str) -> Any:
    buffer = bytearray()
    for chunk in store.iter_chunks(path):
        buffer += chunk
        if len(buffer) > MAX_MANIFEST_BYTES:
            raise CannotVerifyError(f"{store.display(path)} is larger than {_mib(MAX_MANIFEST_BYTES)}: not a manifest")
    try:
        return json.loads(bytes(buffer))
    except (ValueError, RecursionError):
        raise CannotVerifyError(f"{store.display(path)} is not JSON: not a manifest") from None


def _parse_manifest(document: Any, where: str) -> tuple[list[_ListedPart], str]:
    def refuse(reason: str) -> CannotVerifyError:
        return CannotVerifyError(f"{where} is not a manifest: {reason}")

    if not isinstance(document, dict):
        raise refuse(f"a JSON {type(document).__name__} instead of an object")
    if "format_version" not in document:
        raise refuse("no format_version")
    if document["format_version"] != 1 or isinstance(document["format_version"], bool):
        raise CannotVerifyError(f"{where}: format_version {document['format_version']!r} is not supported (1 is)")
    output_format = document.get("output_format") or "csv"
    if output_format not in OUTPUT_FORMATS:
        raise refuse(f"output_format {output_format!r}, expected one of {', '.join(OUTPUT_FORMATS)}")
    parts = document.get("parts")
    if not isinstance(parts, list):
        raise refuse("parts is missing or not a list")
    listed = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise refuse(f"parts[{index}] is not an object")
        key, sha256 = part.get("key"), part.get("sha256")
        if not isinstance(key, str) or not key:
            raise refuse(f"parts[{index}].key is missing or not a string")
        if not isinstance(sha256, str) or len(sha256) != 64 or not set(sha256.lower()) <= _SHA256_HEX:
            raise refuse(f"parts[{index}].sha256 is not a hex SHA-256")
        counts = [part.get(name) for name in ("rows", "bytes")]
        for name, value in zip(("rows", "bytes"), counts, strict=True):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise refuse(f"parts[{index}].{name} is {value!r}, expected a whole number >= 0")
        listed.append(_ListedPart(index, key, int(part["rows"]), int(part["bytes"]), sha256.lower()))
    return listed, output_format


class _Verification:
    """One run of the checks over one manifest; collects the report."""

    def __init__(
        self, store: Store, manifest_path: str, document: dict[str, Any], listed: list[_ListedPart], fmt: str
    ) -> None:
        self.store, self.manifest_path, self.document, self.listed = store, manifest_path, document, listed
        self.directory = posixpath.dirname(manifest_path)
        self.report = VerifyReport(manifest=store.display(manifest_path), output_format=fmt, parts_listed=len(listed))
        self.recorded_directory = self._recorded_directory()
        self.switch_phase = self._switch_phase()
        self.switch_holder = self._switch_holder() if self.switch_phase is not None else None
        self.moved_parts = 0  # listed in _staging/, read at their final names (a switch moved them)

    def run(self) -> VerifyReport:
        seen: dict[str, int] = {}
        for part in self.listed:
            path = self._resolve(part.key)
            if path is None:
                self._problem("foreign", part.key, f"not on the manifest's storage ({self.report.manifest})")
            elif self._outside_location(path):
                where = self.store.display(self.directory)
                self._problem("foreign", part.key, f"outside the export's location ({where}/): not its part")
            elif path in seen:
                self._problem("duplicate", part.key, f"listed twice: parts[{seen[path]}] and parts[{part.index}]")
            else:
                seen[path] = part.index
                read = self._check_part(part, path)
                if read is not None:  # a staged part read at its final name is listed there too
                    seen.setdefault(read, part.index)
        self._check_totals()
        for kind, key, detail in manifest_problems(self.document, self.report.output_format):
            self._problem(kind, key, detail)
        self.report.notes.extend(chain_notes(self.document))
        self._look_for_strays(set(seen))
        self.report.intact = not self.report.problems and not self.report.unchecked
        return self.report

    def _recorded_directory(self) -> tuple[str, str] | None:
        """Where the manifest says it was written, when it was read somewhere else (copied or moved
        since): the scheme and the path of its directory, as :func:`split_url` names them."""
        recorded = self.document.get("manifest")
        if not isinstance(recorded, str) or "/" not in recorded:
            return None
        if "://" in recorded:
            family, path = split_url(recorded)
        elif self.store.keys_are_bucket_keys:  # a bare key: in the manifest's bucket
            family, path = self.store.family, self.store.path_of_bare_key(recorded, self.manifest_path)
        elif recorded.startswith("/"):
            family, path = self.store.family, posixpath.normpath(recorded)
        else:
            return None
        if (family, path) == (self.store.family, self.manifest_path):
            return None
        self.report.notes.append(f"the manifest records its location as {recorded}: parts are read beside it here")
        return family, posixpath.dirname(path)

    def _switch_phase(self) -> str | None:
        """``sealing`` or ``cleanup`` when the location's checkpoint is this export's (its period and
        format) and says its seal switches the location over: the previous set's parts may then
        still sit beside the new ones. ``None`` otherwise, also for a document at the checkpoint's
        name that is not one an export writes."""
        document = self._bookkeeping_document(CHECKPOINT_NAME)
        try:
            progress = ExportProgress.from_dict(document) if isinstance(document, dict) else None
        except (ValueError, KeyError, TypeError):
            return None
        if progress is None or progress.phase not in (SEALING, CLEANUP):
            return None
        spec = progress.spec
        if period_of(spec) != period_of(self.document) or spec.get("output_format") != self.report.output_format:
            return None
        return progress.phase

    def _switch_holder(self) -> str | None:
        """Who holds the location's lease for the export's period now (the writer switching it
        over, at work), or ``None``: nobody does, so a switch the checkpoint tells of has stopped."""
        lease = self._bookkeeping_document(LEASE_NAME)
        if not isinstance(lease, dict) or period_of(lease) != period_of(self.document) or not is_live(lease):
            return None
        who = lease.get("task") or "an export outside Airflow"
        return f"{who} (try {lease.get('try_number')}) on {lease.get('host')} until {lease.get('expires')}"

    def _bookkeeping_document(self, name: str) -> Any:
        """The JSON document ``name`` at the location, or ``None`` when there is none that reads."""
        try:
            return _read_manifest(self.store, posixpath.join(self.directory, name))
        except (ObjectMissing, StorageError, CannotVerifyError):
            return None

    def _resolve(self, key: str) -> str | None:
        """A listed part's path: beside the manifest when its key names a place under the directory
        the manifest records (an export copied or moved since), else where the key says."""
        if self.recorded_directory is not None:
            family, directory = self.recorded_directory
            key_family, path = _recorded_path(key, family, directory)
            inside = directory.rstrip("/") + "/"
            if key_family == family and path.startswith(inside):
                return posixpath.join(self.directory, path[len(inside) :])
        return self._resolve_plainly(key)

    def _resolve_plainly(self, key: str) -> str | None:
        if "://" not in key:
            return self.store.path_of_bare_key(key, self.manifest_path)
        if key.split("://", 1)[0].lower() not in self.store.schemes:
            return None
        return self.store.path_of_url(key)

    def _outside_location(self, path: str) -> bool:
        """Whether a part's path leaves the manifest's directory (``../other/part-00000.csv``, an
        absolute path, a key under another prefix): an export's parts are all beside its manifest.
        Local paths are compared normalized; object keys as they are (S3 keeps ``..`` literally)."""
        if not self.store.keys_are_bucket_keys:
            path = posixpath.normpath(path)
        return not path.startswith(self.directory.rstrip("/") + "/")

    def _problem(
        self, kind: str, part: str, detail: str, expected: Any = None, actual: Any = None, location: str | None = None
    ) -> None:
        self.report.problems.append(PartProblem(kind, part, detail, expected, actual, location))

    def _read_elsewhere(self, part: _ListedPart, path: str) -> str | None:
        """Where ``path`` is, for the report, when it is not where the part's key says (``None``)."""
        return None if path == self._resolve_plainly(part.key) else self.store.display(path)

    def _check_part(self, part: _ListedPart, path: str) -> str | None:
        """Read one listed part at ``path`` and compare it with its entry; the path read, or ``None``
        when it was not (missing, unreadable storage)."""
        location = self._read_elsewhere(part, path)
        try:
            measured = measure_part(self.store, path, self.report.output_format)
        except ObjectMissing:
            final = _final_name_of_staged(self.directory, path)
            if final is None:
                detail = (
                    f"listed in the manifest as {part.key}, not found"
                    if location
                    else f"listed in the manifest, not found at {self.store.display(path)}"
                )
                self._problem("missing", part.key, detail, location=location)
                return None
            read = self._check_part(part, final)  # a switch moved it: the same bytes, or the checks say not
            if read is not None:
                self.moved_parts += 1
            return read
        except StorageError as error:
            self.report.unchecked.append(f"{location or part.key}: {error}")
            return None
        if measured.rows_unchecked is not None and measured.rows_unchecked not in self.report.unchecked:
            self.report.unchecked.append(measured.rows_unchecked)
        self.report.parts_checked += 1
        self.report.bytes += measured.bytes
        self.report.rows += measured.rows or 0
        if measured.bytes != part.bytes:
            detail = f"{measured.bytes:,} bytes stored, the manifest says {part.bytes:,}"
            self._problem("bytes", part.key, detail, part.bytes, measured.bytes, location)
        if measured.sha256 != part.sha256:
            detail = f"sha256 {measured.sha256[:12]}… stored, the manifest says {part.sha256[:12]}…"
            self._problem("sha256", part.key, detail, part.sha256, measured.sha256, location)
        if measured.unreadable is not None:
            detail = f"not a valid {self.report.output_format} part: {measured.unreadable}"
            self._problem("unreadable", part.key, detail, location=location)
        elif measured.rows is not None and measured.rows != part.rows:
            detail = f"{measured.rows:,} data rows stored, the manifest says {part.rows:,}"
            self._problem("rows", part.key, detail, part.rows, measured.rows, location)
        return path

    def _check_totals(self) -> None:
        for total, name in (
            (sum(p.rows for p in self.listed), "total_rows"),
            (sum(p.bytes for p in self.listed), "total_bytes"),
        ):
            claimed = self.document.get(name)
            if claimed is None:  # every manifest an export writes has both: one without was edited
                self._problem("totals", name, f"the manifest has no {name}; its parts add up to {total:,}", None, total)
            elif claimed != total:
                self._problem(
                    "totals", name, f"the manifest says {claimed!r}, its parts add up to {total:,}", claimed, total
                )

    def _look_for_strays(self, listed: set[str]) -> None:
        parts = self.document.get("parts")
        # Archives kept with keep_zip are those the manifest names (``archive_key``), nothing else.
        kept_archives = {
            posixpath.basename(entry["archive_key"])
            for entry in (parts if isinstance(parts, list) else [])
            if isinstance(entry, dict) and isinstance(entry.get("archive_key"), str)
        }
        switching = self.switch_holder is not None
        bookkeeping: Counter[str] = Counter()
        folders: set[str] = set()
        archives = unlisted_parts = 0
        try:
            for path in self.store.list_paths(self.directory, descend_into=_is_bookkeeping):
                if path == self.manifest_path or path in listed:
                    continue
                name = path[len(self.directory) + 1 :] if path.startswith(self.directory + "/") else path
                top = name.split("/", 1)[0]
                if _is_bookkeeping(top):
                    bookkeeping[f"{TEMPORARY_PREFIX}*" if top.startswith(TEMPORARY_PREFIX) else top] += 1
                    if "/" in name:
                        folders.add(top)
                elif "/" not in name and name in kept_archives:
                    archives += 1
                else:
                    unlisted_part = "/" not in name and is_part_name(name)
                    unlisted_parts += int(unlisted_part)
                    if not (switching and unlisted_part):  # while switching: the replaced set's, until its clean-up
                        self._problem(
                            "stray",
                            name or self.store.display(path),
                            f"not listed in the manifest: {self.store.display(path)}",
                        )
        except StorageError as error:
            self.report.unchecked.append(f"objects not listed in the manifest cannot be looked for: {error}")
        for top, count in sorted(bookkeeping.items()):
            what = f"{top}/ ({count} object(s))" if top in folders else top
            what = f"{top} ({count} object(s))" if top.endswith("*") else what
            self.report.notes.append(f"{what}: {_BOOKKEEPING_MEANING.get(top, 'bookkeeping, not a part')}")
        if archives:
            self.report.notes.append(f"{archives} part-NNNNN.zip archive(s) kept as downloaded (keep_zip), not parts")
        if self.moved_parts:
            self.report.notes.append(
                f"{self.moved_parts} part(s) the manifest lists in {STAGING_DIR}/ were read at their final names: "
                "a re-run's switch has moved them there"
            )
        self._note_switch(unlisted_parts)

    def _note_switch(self, unlisted_parts: int) -> None:
        """Say what the checkpoint tells of a re-run's switch: under way (its writer holds the lease),
        the unlisted parts left until it is done; or stopped, those parts strays until an export of
        the location finishes it."""
        if self.switch_phase is None:
            return
        phase = f"checkpoint phase {self.switch_phase!r}"
        if self.switch_holder is not None:
            self.report.awaiting_cleanup = unlisted_parts
            self.report.notes.append(
                f"a re-run is switching this location over ({phase}, lease held by {self.switch_holder}): "
                f"{unlisted_parts} part(s) the manifest does not list (the replaced export's, or being moved into "
                "place) are left until it is done"
            )
            return
        strays = (
            f": its {unlisted_parts} part(s) the manifest does not list are strays until an export of this "
            "location runs again and finishes the switch"
            if unlisted_parts
            else ""
        )
        self.report.notes.append(
            f"a re-run's switch stopped before its clean-up ({phase}, no writer holds the lease){strays}"
        )


def _recorded_path(key: str, family: str, directory: str) -> tuple[str, str]:
    """The scheme and path a part's key named where its manifest was written: a URL as it says; a
    bare key, a key in that manifest's bucket (locally: a path relative to its directory).

    :param key: the part's key, as the manifest lists it.
    :param family: the scheme of the manifest's recorded location (:func:`split_url`).
    :param directory: the path of the recorded location's directory.
    """
    if "://" in key:
        return split_url(key)
    if family == LOCAL_SCHEME:
        return family, posixpath.normpath(posixpath.join(directory, key))  # an absolute key stays itself
    return family, f"{directory.split('/', 1)[0]}/{key}"


def _final_name_of_staged(directory: str, path: str) -> str | None:
    """Where a re-run's switch moves a part staged at ``path`` (it copies each staged part to its
    final name, then deletes it); ``None`` when ``path`` is not in the location's staging area.

    :param directory: the export's location.
    :param path: a part's path, as the manifest lists it.
    """
    staging = posixpath.join(directory, STAGING_DIR) + "/"
    if not path.startswith(staging) or "/" in path[len(staging) :]:
        return None
    return posixpath.join(directory, path[len(staging) :])


def _is_bookkeeping(name: str) -> bool:
    """Whether a name directly under an export's location is the exports' bookkeeping (``_staging``,
    ``_lease.json`` ...); a sub-directory without the ``_`` is another location, not this export's.

    :param name: a file or sub-directory name, one level under the location.
    """
    return name.startswith("_")


def _mib(size: int) -> str:
    return f"{size:,} bytes" if size < 2**20 else f"{size / 2**20:,.1f} MiB"


def _quiet_airflow_logs() -> None:
    """Airflow and the AWS hooks log to stdout; the command's stdout is its report (--json)."""
    try:
        from airflow.sdk.log import configure_logging

        configure_logging(log_level="ERROR", output=sys.stderr, colored_console_log=False)
    except (ImportError, TypeError):  # older Airflow: its stdlib loggers only
        import logging

        logging.getLogger("airflow").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """``loyalty-verify <location> [--aws-conn-id ID | --conn-id ID] [--json]``; returns the exit code.

    :param argv: the arguments. ``None`` means the program itself runs (console script,
        ``python -m``): it reads ``sys.argv[1:]`` and, owning the process, keeps Airflow's log lines
        below ERROR out of the way. Called with arguments (tests, other programs), it leaves the
        process's logging set-up alone.
    """
    parser = argparse.ArgumentParser(
        prog="loyalty-verify",
        description="Re-check a landed loyalty export against its manifest. "
        "Exit 0 intact, 1 not intact, 2 cannot check.",
    )
    parser.add_argument(
        "location", help="the manifest, or the export's directory / prefix (local, file://, s3://, ...)"
    )
    connection = parser.add_mutually_exclusive_group()
    connection.add_argument(
        "--aws-conn-id", dest="conn_id", metavar="ID", help="AWS connection for s3:// (default aws_default)"
    )
    connection.add_argument("--conn-id", dest="conn_id", metavar="ID", help="Airflow connection of the object store")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if argv is None:
        _quiet_airflow_logs()
    try:
        report = verify_manifest(args.location, conn_id=args.conn_id)
    except CannotVerifyError as error:
        return _cannot_check(str(error), as_json=args.json)
    except Exception as error:
        return _cannot_check(f"unexpected {type(error).__name__}: {error}", as_json=args.json)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return report.exit_code


def _cannot_check(message: str, *, as_json: bool) -> int:
    print(f"loyalty-verify: cannot check: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"status": "cannot check", "exit_code": EXIT_CANNOT_CHECK, "error": message}))
    return EXIT_CANNOT_CHECK


if __name__ == "__main__":
    sys.exit(main())
