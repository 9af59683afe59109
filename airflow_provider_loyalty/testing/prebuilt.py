"""Pre-built export files: each task's zip built once, on disk, in the background.

With ``EmulatorConfig.prebuilt_files`` the emulator builds a task's zip into a temporary directory
while the task runs (the task completes only once its file is on disk) and serves downloads from
that file with ``Content-Length``, so a download is no longer paced by building the zip. A later
task of the same batch (the same rows, file name and zip layout) is served the file already
built: a second export of a period, a retry, or a benchmark's second transfer costs the emulator
no build at all. The files are removed on ``reset()`` and ``stop()``. Building streams to disk:
memory stays flat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from airflow_provider_loyalty.testing.archive import ZipSink

__all__ = ["PrebuiltFile", "PrebuiltFiles"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrebuiltFile:
    """A zip on disk.

    :param path: where it is.
    :param size: its size in bytes.
    :param csv_bytes: the CSV bytes inside.
    """

    path: Path
    size: int
    csv_bytes: int


class BuildCancelledError(Exception):
    """The files were cleared while this build was running."""


class _FileSink:
    """A write-only file writer (no ``seek``/``tell``, so the zip matches a streamed one)."""

    def __init__(self, handle: IO[bytes], cancelled: threading.Event) -> None:
        self._handle = handle
        self._cancelled = cancelled
        self.size = 0

    def write(self, data: bytes, /) -> int:
        if self._cancelled.is_set():
            raise BuildCancelledError()
        self._handle.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        """No-op: the caller closes the file."""


class PrebuiltFiles:
    """The temporary directory of pre-built zips and the threads that build them.

    :param on_built: called once per file, when it is on disk (before its build reports done).
    :param workers: builds that run at once.
    """

    def __init__(self, on_built: Callable[[], None] | None = None, workers: int = 2) -> None:
        self._on_built = on_built
        self._workers = workers
        self._lock = threading.Lock()
        self._directory: Path | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._cancelled = threading.Event()
        self._by_content: dict[Hashable, Future[PrebuiltFile]] = {}
        self._closed = False  # the emulator stopped: a request still being handled builds nothing

    @property
    def directory(self) -> Path | None:
        """The temporary directory of the current files (``None`` until a build starts)."""
        with self._lock:
            return self._directory

    def submit(
        self, name: str, build: Callable[[ZipSink], int], content: Hashable | None = None
    ) -> Future[PrebuiltFile] | None:
        """Start building file ``name``; ``build(sink)`` writes the zip and returns its CSV bytes.

        :param name: a file name unique among the current files (e.g. the task id).
        :param build: the zip writer.
        :param content: what identifies the zip's bytes: a file of the same ``content`` built (or
            building) already is returned instead of building another; ``None`` always builds.
        :return: the build, or ``None`` once :meth:`close` was called (the file is then streamed).
        """
        with self._lock:
            if self._closed:  # a request the stopping emulator still handles: no directory after the cleanup
                return None
            earlier = self._by_content.get(content) if content is not None else None
            if earlier is not None and not (earlier.done() and self.ready(earlier) is None):
                return earlier  # built or still building, not failed or removed
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="loyalty-emulator-"))
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="loyalty-emulator-build")
            target = self._directory / f"{name}.zip"
            future = self._executor.submit(self._build, target, build, self._cancelled)
            if content is not None:
                self._by_content[content] = future
            return future

    def _build(self, target: Path, build: Callable[[ZipSink], int], cancelled: threading.Event) -> PrebuiltFile:
        partial = target.with_suffix(".part")
        try:
            with partial.open("wb") as handle:
                sink = _FileSink(handle, cancelled)
                csv_bytes = build(sink)
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            if not cancelled.is_set():
                log.warning("loyalty emulator: building %s failed; it will be streamed", target.name, exc_info=True)
            raise
        if self._on_built is not None:
            self._on_built()
        return PrebuiltFile(target, sink.size, csv_bytes)

    @staticmethod
    def ready(build: Future[PrebuiltFile] | None) -> PrebuiltFile | None:
        """Return the built file, or ``None`` (no build, still running, failed or removed).

        :param build: the future :meth:`submit` returned.
        """
        if build is None or not build.done() or build.cancelled() or build.exception() is not None:
            return None
        built = build.result()
        return built if built.path.exists() else None

    def close(self) -> None:
        """Delete every file, and build none until :meth:`reopen` (the emulator stopped: a request
        it still handles made a directory again after the cleanup, left behind)."""
        with self._lock:
            self._closed = True
        self.clear()

    def reopen(self) -> None:
        """Build files again (the emulator started again)."""
        with self._lock:
            self._closed = False

    def clear(self) -> None:
        """Stop running builds and delete every file (the directory is made again when needed)."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, threading.Event()
            executor, self._executor = self._executor, None
            directory, self._directory = self._directory, None
            self._by_content = {}
        cancelled.set()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
