"""Where verified parts land: the storage primitives an export needs, for every kind of location.

A sink owns one output location (a local directory, an object-storage prefix or an S3 prefix; the
names under it are in :mod:`~airflow_provider_loyalty.export.layout`). The export loop only speaks
to :class:`PartSink`, so the two export operators differ in nothing but the sink they build.

What the loop relies on:

* small JSON documents are replaced atomically (a reader sees the old or the new one, never half);
* :meth:`PartSink.create_exclusive` creates a document only if it does not exist, and
  :meth:`PartSink.replace_if` replaces one only if it is still the version read (the lease);
* a document that is not valid JSON reads as :class:`UnreadableDocument`, never a parser error.

Local directories and ``file://`` get all three exactly (temporary name + rename, ``link``, and a
lock file); S3 gets them from conditional writes (``If-None-Match`` / ``If-Match``); other object
stores get atomic single-object writes and best-effort conditions (write, then read back).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import IO, Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyStorageError
from airflow_provider_loyalty.export.layout import MAX_DOCUMENT_BYTES, TEMPORARY_PREFIX, temporary_name

_COPY_CHUNK = 8 * 1024 * 1024
_DOCUMENT_CHUNK = 64 * 1024


class UnreadableDocument(LoyaltyError):
    """A stored JSON document exists but cannot be read (half-written, not JSON, not an object)."""


def encode_document(document: dict[str, Any]) -> bytes:
    """How JSON documents are stored."""
    return json.dumps(document, indent=2).encode("utf-8")


def decode_document(name: str, payload: bytes) -> dict[str, Any]:
    """A stored document, or :class:`UnreadableDocument` naming it."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UnreadableDocument(f"{name} is not valid JSON ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(document, dict):
        raise UnreadableDocument(f"{name} holds {type(document).__name__}, expected a JSON object")
    return document


def read_document_bytes(name: str, handle: IO[bytes] | Any) -> bytes:
    """A stored document's bytes from an open ``handle``: :class:`UnreadableDocument` beyond
    :data:`MAX_DOCUMENT_BYTES` (read no further). Read in small chunks: ``read(n)`` of a file
    allocates ``n`` bytes up front, whatever the document's size."""
    chunks: list[bytes] = []
    size = 0
    while chunk := handle.read(_DOCUMENT_CHUNK):
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise UnreadableDocument(f"{name} is over {MAX_DOCUMENT_BYTES:,} bytes: not a document an export writes")
        chunks.append(chunk)
    return b"".join(chunks)


def content_tag(payload: bytes) -> str:
    """A version tag of a document's bytes (what :meth:`PartSink.replace_if` compares)."""
    return hashlib.sha256(payload).hexdigest()


class PartSink(ABC):
    """An output location: parts, the manifest, the checkpoint, records and the lease."""

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location for logs and errors (never with credentials)."""

    @abstractmethod
    def url(self, name: str) -> str:
        """The full URL of a stored object (``s3://bucket/key``, ``file:///dir/name``)."""

    def key(self, name: str) -> str:
        """How the manifest names a part (the S3 sink: the key in its bucket; otherwise the URL)."""
        return self.url(name)

    @abstractmethod
    def put_file(self, name: str, local_path: str, sha256: str | None = None) -> None:
        """Store a local file under ``name`` (replacing what is there).

        :param sha256: the file's hex SHA-256 when known (a verified part): a store that checks
            uploads against a checksum is given it.
        """

    @abstractmethod
    def read_bytes(self, name: str) -> bytes | None:
        """A small stored object's bytes, or ``None`` when absent."""

    @abstractmethod
    def write_bytes(self, name: str, payload: bytes) -> None:
        """Store a small object atomically (replacing what is there)."""

    @abstractmethod
    def create_exclusive(self, name: str, payload: bytes) -> str | None:
        """Create a small object only if none exists; its tag, or ``None`` when one existed."""

    @abstractmethod
    def replace_if(self, name: str, payload: bytes, tag: str) -> str | None:
        """Replace a small object only if it still has ``tag``; the new tag, or ``None`` if it changed."""

    @abstractmethod
    def delete(self, names: list[str]) -> None:
        """Delete stored objects (missing ones are ignored)."""

    @abstractmethod
    def sizes(self, directory: str = "") -> dict[str, int]:
        """Names (relative to the location) and sizes of the objects directly under ``directory``."""

    @abstractmethod
    def move(self, source: str, target: str) -> None:
        """Put the object ``source`` under the name ``target`` too; ``source`` stays until deleted."""

    def tagged(self, name: str) -> tuple[dict[str, Any], str] | None:
        """A JSON document and its tag, or ``None`` when absent; :class:`UnreadableDocument` if broken."""
        payload = self.read_bytes(name)
        if payload is None:
            return None
        return decode_document(name, payload), content_tag(payload)

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON document, or ``None`` when absent; :class:`UnreadableDocument` if broken."""
        found = self.tagged(name)
        return None if found is None else found[0]

    def write_json(self, name: str, document: dict[str, Any]) -> str:
        """Store a JSON document atomically; return its URL."""
        self.write_bytes(name, encode_document(document))
        return self.url(name)


class DelegatingSink(PartSink):
    """A sink in front of another: every call goes to ``inner``; a subclass adds to the ones it
    overrides (the lease's check before each write, a benchmark's count of bytes written).

    :param inner: the location itself.
    """

    def __init__(self, inner: PartSink) -> None:
        self.inner = inner

    def describe(self) -> str:
        return self.inner.describe()

    def url(self, name: str) -> str:
        return self.inner.url(name)

    def key(self, name: str) -> str:
        return self.inner.key(name)

    def put_file(self, name: str, local_path: str, sha256: str | None = None) -> None:
        self.inner.put_file(name, local_path, sha256)

    def read_bytes(self, name: str) -> bytes | None:
        return self.inner.read_bytes(name)

    def tagged(self, name: str) -> tuple[dict[str, Any], str] | None:
        return self.inner.tagged(name)

    def read_json(self, name: str) -> dict[str, Any] | None:
        return self.inner.read_json(name)

    def write_bytes(self, name: str, payload: bytes) -> None:
        self.inner.write_bytes(name, payload)

    def write_json(self, name: str, document: dict[str, Any]) -> str:
        return self.inner.write_json(name, document)

    def create_exclusive(self, name: str, payload: bytes) -> str | None:
        return self.inner.create_exclusive(name, payload)

    def replace_if(self, name: str, payload: bytes, tag: str) -> str | None:
        return self.inner.replace_if(name, payload, tag)

    def delete(self, names: list[str]) -> None:
        self.inner.delete(names)

    def sizes(self, directory: str = "") -> dict[str, int]:
        return self.inner.sizes(directory)

    def move(self, source: str, target: str) -> None:
        self.inner.move(source, target)


def _open_lock_file(path: str) -> int:
    """A descriptor of the lock file ``path``, made readable by all when new. Opened read-only (all
    ``flock`` needs) and without ``O_CREAT`` once it exists: a worker running exports as another OS
    user (``run_as_user``) could not open the first user's file for writing, and in a sticky
    temporary directory Linux refuses ``O_CREAT`` on another user's file (``protected_regular``)."""
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue  # made by another process meanwhile: open that one
        os.fchmod(descriptor, 0o644)  # whatever the umask: every user's exports share this lock
        return descriptor


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
            self.base = ObjectStoragePath(f"file://{os.path.abspath(os.path.expanduser(str(output_path)))}")
        self.local_root: str | None = (
            str(self.base.path) if (self.base.protocol or "file") in ("file", "local") else None
        )
        # Every object-store call goes through this one filesystem, by path: the path's own methods
        # (exists, iterdir, stat) may use another instance, with its own cache of listings (without
        # a conn_id, Airflow 3.3 hands the inner path a filesystem of its own), so a part written
        # through one was not listed by the other and the seal took it for missing.
        self._fs: Any = self.base.fs
        self._root = str(self.base.path).rstrip("/")
        # S3 (s3fs) writes a document only if absent (If-None-Match) or unchanged (If-Match): the
        # lease is exact there, as on the S3 transfer; other stores check, write and read back.
        self._conditional = bool({"s3", "s3a"} & set(_protocols(self._fs)))
        with self._storage("create the output location"):
            if self.local_root is not None:
                os.makedirs(self.local_root, exist_ok=True)
            else:
                make_directory(self.base)

    @contextlib.contextmanager
    def _storage(self, what: str) -> Iterator[None]:
        try:
            yield
        except LoyaltyError:
            raise
        except Exception as err:
            raise LoyaltyStorageError(f"could not {what} at {self.describe()}: {type(err).__name__}: {err}") from err

    def describe(self) -> str:
        return object_location(self.base)

    def url(self, name: str) -> str:
        return object_location(self.base / name)

    def _local(self, name: str) -> str:
        assert self.local_root is not None
        return os.path.join(self.local_root, *name.split("/"))

    def _remote(self, name: str) -> str:
        """The object store path of ``name`` (for :attr:`_fs`), its listings read afresh."""
        path = f"{self._root}/{name.strip('/')}" if name else self._root
        self._fs.invalidate_cache(path)
        return path

    def put_file(self, name: str, local_path: str, sha256: str | None = None) -> None:
        with self._storage(f"store {name}"):
            publish_file(local_path, self.base / name)  # through the same filesystem as self._fs

    def read_bytes(self, name: str) -> bytes | None:
        with self._storage(f"read {name}"):
            if self.local_root is not None:
                try:
                    with open(self._local(name), "rb") as handle:
                        return read_document_bytes(name, handle)
                except FileNotFoundError:
                    return None
            return self._tagged_remote(name)[0]

    def _tagged_remote(self, name: str) -> tuple[bytes | None, str | None]:
        """A remote document's bytes and the ETag they were read at (``None`` where the store has
        none); read again when the object is replaced while it is read (s3fs's ``FileExpired``)."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                with self._fs.open(self._remote(name), "rb") as handle:
                    tag = (getattr(handle, "details", None) or {}).get("ETag")
                    return read_document_bytes(name, handle), tag
            except FileNotFoundError:
                return None, None
            except Exception as err:
                if type(err).__name__ != "FileExpired" or attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def write_bytes(self, name: str, payload: bytes) -> None:
        with self._storage(f"write {name}"):
            if self.local_root is not None:
                self._write_local(self._local(name), payload)
                return
            with whole_object(self._fs, self._remote(name)) as handle:
                handle.write(payload)

    @staticmethod
    def _write_local(target: str, payload: bytes) -> None:
        """Write to a temporary name in the same directory, flush it to disk, rename it over."""
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        descriptor, temporary = _temporary_file(directory)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """An exclusive lock on a local document, for compare-and-replace across processes. The lock
        file lives in the temporary directory, so nothing but data and documents is at the location."""
        digest = hashlib.sha256(self._local(name).encode()).hexdigest()[:32]
        descriptor = _open_lock_file(os.path.join(tempfile.gettempdir(), f"loyalty-lock-{digest}"))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def create_exclusive(self, name: str, payload: bytes) -> str | None:
        with self._storage(f"create {name}"):
            if self.local_root is not None:
                target = self._local(name)
                descriptor, temporary = _temporary_file(os.path.dirname(target))
                try:
                    with os.fdopen(descriptor, "wb") as handle:
                        handle.write(payload)
                    os.link(temporary, target)  # atomic, and fails if the name exists
                except FileExistsError:
                    return None
                finally:
                    os.unlink(temporary)
                return content_tag(payload)
            if self._conditional:
                try:
                    self._fs.pipe_file(self._remote(name), payload, IfNoneMatch="*")
                except Exception as err:
                    if _precondition_failed(err):
                        return None
                    raise
                return content_tag(payload)
            if self._fs.exists(self._remote(name)):
                return None
            self.write_bytes(name, payload)
            return content_tag(payload) if self.read_bytes(name) == payload else None

    def replace_if(self, name: str, payload: bytes, tag: str) -> str | None:
        with self._storage(f"replace {name}"):
            if self.local_root is not None:
                with self._locked(name):
                    current = self.read_bytes(name)
                    if current is None or content_tag(current) != tag:
                        return None
                    self._write_local(self._local(name), payload)
                return content_tag(payload)
            current, etag = self._tagged_remote(name)
            if current is None or content_tag(current) != tag:
                return None
            if self._conditional and etag:
                try:
                    self._fs.pipe_file(self._remote(name), payload, IfMatch=etag)
                except Exception as err:
                    if _precondition_failed(err):
                        return None
                    raise
                return content_tag(payload)
            self.write_bytes(name, payload)
            return content_tag(payload)

    def delete(self, names: list[str]) -> None:
        with self._storage("delete files"):
            for name in names:
                if self.local_root is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._local(name))
                    if "/" in name:  # a bookkeeping folder (_parts/, _staging/) goes once empty
                        with contextlib.suppress(OSError):
                            os.rmdir(os.path.dirname(self._local(name)))
                    continue
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm_file(self._remote(name))

    def sizes(self, directory: str = "") -> dict[str, int]:
        prefix = f"{directory.strip('/')}/" if directory else ""
        with self._storage("list files"):
            if self.local_root is not None:
                root = self._local(directory) if directory else self.local_root
                try:
                    entries = list(os.scandir(root))
                except FileNotFoundError:
                    return {}
                return {prefix + entry.name: entry.stat().st_size for entry in entries if _is_stored_file(entry)}
            root = self._remote(directory)
            try:
                entries = self._fs.ls(root, detail=True)
            except FileNotFoundError:
                return {}
            return {
                prefix + entry["name"].rstrip("/").rpartition("/")[2]: int(entry["size"])
                for entry in entries
                if entry.get("type") == "file" and entry["name"].rstrip("/") != root
            }

    def move(self, source: str, target: str) -> None:
        with self._storage(f"move {source} to {target}"):
            if self.local_root is not None:  # a hard link: no copy, and the source stays until deleted
                temporary = os.path.join(os.path.dirname(self._local(target)), temporary_name())
                os.link(self._local(source), temporary)
                # Renaming a link over another link to the same file does nothing (POSIX), which
                # left the temporary name behind when a retry redid a move already done.
                os.replace(temporary, self._local(target))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                return
            with (
                self._fs.open(self._remote(source), "rb") as reader,
                whole_object(self._fs, self._remote(target)) as writer,
            ):
                shutil.copyfileobj(reader, writer, _COPY_CHUNK)


#: Reads of a document replaced while it is read, before giving up.
_READ_ATTEMPTS = 5


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _precondition_failed(err: BaseException) -> bool:
    """Whether a conditional write was refused: the object exists (If-None-Match), or changed or
    is gone (If-Match). s3fs turns botocore's error into an ``OSError``, the original its cause."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return any(
        isinstance(item, FileExistsError)
        or storage_error_code(item) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey")
        for item in chain
    )


_CODE_IN_TEXT = re.compile(r"\((\w+)\) when calling")


def storage_error_code(err: BaseException) -> str:
    """The S3 error code of a botocore error (``NoSuchKey``, ``PreconditionFailed``...), or ``""``."""
    response = getattr(err, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Code"):
        return str(response["Error"]["Code"])
    found = _CODE_IN_TEXT.search(str(err))  # boto3's transfer errors wrap the ClientError as text
    return found.group(1) if found else ""


def _temporary_file(directory: str) -> tuple[int, str]:
    """A new file beside its final name, with the mode a plain write gets (``mkstemp`` gives 0600)."""
    path = os.path.join(directory, temporary_name())
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path


#: Object stores whose paths start with a bucket (container): they have no directories to make, and
#: their filesystems' ``mkdir`` of a missing bucket creates the bucket.
_BUCKET_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})


def make_directory(directory: ObjectStoragePath) -> None:
    """Make ``directory`` in a store that has directories; in a bucket store, check the bucket exists.

    s3fs's ``mkdir`` of a path in a bucket that does not exist creates the bucket (with the account's
    defaults: no encryption, lifecycle or access policy chosen for the data): a mistyped bucket would
    receive the export. Exports never create buckets.
    """
    if (directory.protocol or "file") not in _BUCKET_STORES:
        directory.mkdir(parents=True, exist_ok=True)
        return
    bucket = str(getattr(directory, "bucket", "") or "").rpartition("@")[2]  # Airflow 3.1 keeps "conn_id@"
    try:
        exists = bool(bucket) and directory.fs.exists(bucket)
    except PermissionError:  # may write objects without reading the bucket's metadata: let the write tell
        return
    if not exists:
        raise LoyaltyStorageError(
            f"the bucket {bucket!r} of {object_location(directory)} does not exist: exports do not create "
            "buckets (is its name right?)"
        )


def publish_file(local_path: str, target: ObjectStoragePath) -> None:
    """Put a finished local file at ``target`` in one step: a rename on local disk, a single upload
    (an object appears only once complete) elsewhere. What was at ``target`` stays until then."""
    if (target.protocol or "file") in ("file", "local"):
        destination = str(target.path)
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        temporary = os.path.join(os.path.dirname(destination) or ".", temporary_name())
        try:
            shutil.copyfile(local_path, temporary)
            os.replace(temporary, destination)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return
    make_directory(target.parent)
    with open(local_path, "rb") as source, whole_object(target.fs, target.path) as sink:
        shutil.copyfileobj(source, sink, _COPY_CHUNK)


@contextlib.contextmanager
def whole_object(fs: Any, path: str) -> Iterator[IO[bytes]]:
    """A handle writing ``path`` in the object store ``fs`` (an fsspec filesystem), committed only
    if the block ends normally; the filesystem's cached listings of it are dropped afterwards.

    An fsspec file commits what it holds when closed, also when leaving its ``with`` on an exception
    (the task killed or timed out mid-copy): the object would be stored truncated, over the previous
    one. Here an interrupted write is thrown away instead (``discard()``: s3fs aborts the multipart
    upload; a smaller object was never sent) and the handle is marked closed so nothing commits it.
    """
    handle = fs.open(path, "wb")  # the fsspec file itself, not Airflow's wrapper of it
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(Exception):
            handle.discard()
        with contextlib.suppress(Exception):
            handle.closed = True  # fsspec's buffered files allow it; close() then does nothing
        raise
    handle.close()
    fs.invalidate_cache(path)


def _is_stored_file(entry: os.DirEntry[str]) -> bool:
    """A stored object, not a local write in flight."""
    return entry.is_file() and not entry.name.startswith(TEMPORARY_PREFIX)


def object_location(path: ObjectStoragePath) -> str:
    """``protocol://path`` of a stored object, without the connection id ObjectStoragePath keeps."""
    return f"{path.protocol or 'file'}://{path.path}"
