"""The manifest's own consistency, for ``loyalty-verify``: part order, the cursor chain, copies.

What the stored objects say is checked part by part in :mod:`~airflow_provider_loyalty.verify`;
these checks read only the manifest. Each part names the batch it came from (empty batches land no
part but count), so adjacent batches must chain: a part's ``from_id`` is the previous batch's
``next_from_id``, the export's first batch starts at its starting cursor and its last batch has no
``next_from_id``. A manifest of an older export, without batch numbers, gets a note instead.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from airflow_provider_loyalty.export.layout import part_name
from airflow_provider_loyalty.export.manifest import starting_cursor

#: A problem found: ``(kind, the part's key, what is wrong)``.
ChainProblem = tuple[str, str, str]


def manifest_problems(document: dict[str, Any], output_format: str) -> Iterator[ChainProblem]:
    """Every inconsistency inside ``document`` (a manifest whose parts are objects with a ``key``).

    :param document: the manifest.
    :param output_format: the parts' format, for their names.
    """
    parts: list[dict[str, Any]] = document["parts"]
    digests: dict[str, int] = {}
    for index, part in enumerate(parts):
        expected = part_name(index, output_format)
        if posixpath.basename(part["key"]) != expected:
            yield "order", part["key"], f"parts[{index}] should be {expected}: parts are listed in batch order"
        first = digests.setdefault(str(part.get("sha256")).lower(), index)
        if first != index and parts[first]["key"] != part["key"]:  # one part listed twice is verify's "duplicate"
            yield "duplicate", part["key"], f"the same bytes (sha256) as parts[{first}]: its rows would count twice"
    yield from _chain_problems(document, parts)


def chain_notes(document: dict[str, Any]) -> list[str]:
    """What the chain check could not see: an older manifest, or batches without rows."""
    parts: list[dict[str, Any]] = document["parts"]
    batches = document.get("batches")
    if not _numbered(document, parts):
        return ["the manifest has no batch numbers (written by an older version): the cursor chain is not checked"]
    empty = int(batches) - len(parts)  # type: ignore[arg-type]
    return [f"{empty} batch(es) without rows landed no part: their cursors are not in the manifest"] if empty else []


def _numbered(document: dict[str, Any], parts: list[dict[str, Any]]) -> bool:
    return _is_count(document.get("batches")) and all(_is_count(part.get("batch")) for part in parts)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _chain_problems(document: dict[str, Any], parts: list[dict[str, Any]]) -> Iterator[ChainProblem]:
    if not _numbered(document, parts):
        return
    batches: int = document["batches"]
    previous: dict[str, Any] | None = None
    for part in parts:
        batch, key = part["batch"], part["key"]
        if batch >= batches or (previous is not None and batch <= previous["batch"]):
            yield "chain", key, f"batch {batch} is out of order (after batch {_batch_of(previous)}, of {batches})"
            return
        if batch == 0 and part.get("from_id") != starting_cursor(document):
            yield (
                "chain",
                key,
                (
                    f"the first batch starts at from_id {part.get('from_id')!r}, the export at "
                    f"{starting_cursor(document)!r}"
                ),
            )
        if (
            previous is not None
            and batch == previous["batch"] + 1
            and part.get("from_id") != previous.get("next_from_id")
        ):
            yield (
                "chain",
                key,
                (
                    f"from_id {part.get('from_id')!r} is not the previous batch's next_from_id "
                    f"{previous.get('next_from_id')!r}: a batch is missing or out of place"
                ),
            )
        previous = part
    if previous is not None and previous["batch"] == batches - 1 and previous.get("next_from_id"):
        yield (
            "chain",
            previous["key"],
            (f"the last batch has a next_from_id ({previous['next_from_id']!r}): the export would go on"),
        )


def _batch_of(part: dict[str, Any] | None) -> str:
    return "none" if part is None else str(part["batch"])
