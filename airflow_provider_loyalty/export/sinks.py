"""Where verified parts land, and the checkpoint that makes an export resumable.

A sink owns one output location (a directory, an object-storage prefix or an S3 prefix) laid out
as DESIGN.md fixes it::

    <location>/part-00000.csv, part-00001.csv, ...
    <location>/_manifest.json              written last: the completion marker
    <location>/_manifest.inprogress.json   checkpoint while an export is running

The export loop (:mod:`airflow_provider_loyalty.export.loop`) only speaks to this interface, so the
two export operators differ in nothing but the sink they build.
"""

from __future__ import annotations

import json
import re
import shutil
from abc import ABC, abstractmethod
from typing import Any

from airflow.sdk import ObjectStoragePath

MANIFEST_NAME = "_manifest.json"
CHECKPOINT_NAME = "_manifest.inprogress.json"
_PART_NAME = re.compile(r"^part-\d{5,}\.(csv|zip)$")
_COPY_CHUNK = 8 * 1024 * 1024


def part_name(index: int, suffix: str = "csv") -> str:
    """``part-00000.csv`` for batch 0 (the original archive: ``part-00000.zip``)."""
    return f"part-{index:05d}.{suffix}"


def is_part_name(name: str) -> bool:
    """Whether a file name is one of ours (a part or a kept archive)."""
    return bool(_PART_NAME.match(name))


class PartSink(ABC):
    """An output location for parts, the manifest and the in-progress checkpoint."""

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location for logs and errors (never with credentials)."""

    @abstractmethod
    def put_file(self, name: str, local_path: str) -> str:
        """Store a local file under ``name``; return its location (key or URI) for the manifest."""

    @abstractmethod
    def size_of(self, name: str) -> int | None:
        """Size of a stored object, or ``None`` when it does not exist."""

    @abstractmethod
    def read_json(self, name: str) -> dict[str, Any] | None:
        """A small JSON document stored under ``name``, or ``None`` when absent."""

    @abstractmethod
    def write_json(self, name: str, document: dict[str, Any]) -> str:
        """Store a small JSON document under ``name``; return its location."""

    @abstractmethod
    def delete(self, names: list[str]) -> None:
        """Delete stored objects (missing ones are ignored)."""

    @abstractmethod
    def list_names(self) -> list[str]:
        """Names of the objects directly under the location."""

    def stale_parts(self, keep: set[str]) -> list[str]:
        """Our part/archive files that the finished export did not produce."""
        return sorted(name for name in self.list_names() if is_part_name(name) and name not in keep)


class ObjectStorageSink(PartSink):
    """Parts in a local directory or any ``ObjectStoragePath`` URL (``file://``, ``s3://``, ...).

    :param output_path: a local directory, or an object storage URL / ``ObjectStoragePath``.
    :param conn_id: connection for the object store (e.g. ``aws_default`` for ``s3://``).
    """

    def __init__(self, output_path: str | ObjectStoragePath, conn_id: str | None = None) -> None:
        if isinstance(output_path, ObjectStoragePath):
            self.base = output_path
        elif "://" in str(output_path):
            self.base = ObjectStoragePath(str(output_path), conn_id=conn_id)
        else:
            self.base = ObjectStoragePath(f"file://{_absolute(str(output_path))}")
        self.base.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return object_location(self.base)

    def _path(self, name: str) -> ObjectStoragePath:
        return self.base / name

    def put_file(self, name: str, local_path: str) -> str:
        target = self._path(name)
        with open(local_path, "rb") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, _COPY_CHUNK)
        return object_location(target)

    def size_of(self, name: str) -> int | None:
        target = self._path(name)
        try:
            return int(target.stat().st_size) if target.exists() else None
        except FileNotFoundError:
            return None

    def read_json(self, name: str) -> dict[str, Any] | None:
        target = self._path(name)
        if not target.exists():
            return None
        with target.open("rb") as handle:
            document = json.loads(handle.read().decode("utf-8"))
        return document if isinstance(document, dict) else None

    def write_json(self, name: str, document: dict[str, Any]) -> str:
        target = self._path(name)
        payload = json.dumps(document, indent=2, sort_keys=False).encode("utf-8")
        with target.open("wb") as handle:
            handle.write(payload)
        return object_location(target)

    def delete(self, names: list[str]) -> None:
        for name in names:
            target = self._path(name)
            if target.exists():
                target.unlink()

    def list_names(self) -> list[str]:
        if not self.base.exists():
            return []
        return sorted(child.name for child in self.base.iterdir())


def object_location(path: ObjectStoragePath) -> str:
    """``protocol://path`` of a stored object, without the connection id ObjectStoragePath keeps."""
    return f"{path.protocol or 'file'}://{path.path}"


def _absolute(path: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(path))
