"""Where ``loyalty-verify`` reads a landed export from: a local directory, S3, or any object store.

Only for internal usage of :mod:`airflow_provider_loyalty.verify`. :meta private:

A :class:`Store` names objects by a *path*: an absolute POSIX path for local files, ``bucket/key``
for S3 and for other object stores (fsspec's convention). Every read streams in chunks, so a part
of any size passes through a bounded amount of memory.
"""

from __future__ import annotations

import io
import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

CHUNK_BYTES = 1024 * 1024
DEFAULT_AWS_CONN_ID = "aws_default"
#: ``conn_id`` saying "no Airflow connection": the storage library's own credentials (boto3's
#: chain: an instance role, the environment), as an export written without a connection used.
NO_CONNECTION = ""
#: The scheme local paths belong to (``file://``; ``local://`` is the same).
LOCAL_SCHEME = "file"


class StorageError(Exception):
    """A read that did not succeed; the message is one line, without credentials."""


class ObjectMissing(StorageError):
    """The object does not exist."""


class AccessDenied(StorageError):
    """The store refused access to the object or the listing."""


class StorageUnavailable(StorageError):
    """The store cannot be used at all: unknown scheme, missing bucket or connection, network error."""


class Store(ABC):
    """One storage system, and how a part key of a manifest maps to a path in it."""

    #: URL schemes whose locations this store reads.
    schemes: tuple[str, ...]
    #: Whether a bare part key is a key in the manifest's bucket (object stores), not a relative path.
    keys_are_bucket_keys = True

    @property
    def family(self) -> str:
        """The scheme its paths belong to, as :func:`split_url` names it (``file`` for local files)."""
        return self.schemes[0]

    @abstractmethod
    def display(self, path: str) -> str:
        """The location as a person writes it (URL or local path), without credentials."""

    @abstractmethod
    def path_of_url(self, url: str) -> str:
        """The path of a URL of one of :attr:`schemes`."""

    @abstractmethod
    def path_of_bare_key(self, key: str, manifest_path: str) -> str:
        """The path a bare key (no scheme) of the manifest at ``manifest_path`` names: a key in the
        manifest's bucket on object stores, a path relative to the manifest's directory locally."""

    @abstractmethod
    def iter_chunks(self, path: str) -> Iterator[bytes]:
        """The object's bytes, in chunks of at most :data:`CHUNK_BYTES`."""

    @abstractmethod
    def open_random_access(self, path: str) -> BinaryIO:
        """A seekable binary file of the object (for Parquet footers); reads only what is asked."""

    @abstractmethod
    def list_paths(self, directory: str, descend_into: Callable[[str], bool]) -> Iterator[str]:
        """Paths of the objects directly in ``directory``, and of every object under those of its
        sub-directories that ``descend_into`` accepts; the other sub-directories are not listed.

        :param directory: the path to list.
        :param descend_into: whether a sub-directory of ``directory``, by its name, is listed too.
        """

    def is_directory_reference(self, path: str, raw: str) -> bool:
        """Whether a location given by a user names a directory/prefix rather than a manifest."""
        return raw.endswith("/") or not posixpath.basename(path).endswith(".json")


class FileLikeStore(Store):
    """A store whose objects open as binary files (:meth:`_open`): chunks and random access from there."""

    @abstractmethod
    def _open(self, path: str) -> BinaryIO:
        """The object as a binary file; :class:`ObjectMissing` if there is none."""

    @abstractmethod
    def read_failure(self, path: str, error: OSError) -> str:
        """What to say when reading fails."""

    def iter_chunks(self, path: str) -> Iterator[bytes]:
        with self._open(path) as handle:
            while True:
                try:
                    chunk = handle.read(CHUNK_BYTES)
                except OSError as error:
                    raise StorageUnavailable(self.read_failure(path, error)) from None
                if not chunk:
                    return
                yield chunk

    def open_random_access(self, path: str) -> BinaryIO:
        return self._open(path)


class LocalStore(FileLikeStore):
    """Local files: plain paths and ``file://`` URLs."""

    schemes = (LOCAL_SCHEME, "local")
    keys_are_bucket_keys = False

    def display(self, path: str) -> str:
        return path

    def path_of_url(self, url: str) -> str:
        rest = url.split("://", 1)[1]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        return posixpath.normpath(rest if rest.startswith("/") else "/" + rest)

    def path_of_bare_key(self, key: str, manifest_path: str) -> str:
        if key.startswith("/"):
            return posixpath.normpath(key)
        return posixpath.normpath(posixpath.join(posixpath.dirname(manifest_path), key))

    def is_directory_reference(self, path: str, raw: str) -> bool:
        if os.path.isdir(path) or os.path.isfile(path):
            return os.path.isdir(path)
        return super().is_directory_reference(path, raw)

    def read_failure(self, path: str, error: OSError) -> str:
        return f"reading {path} failed: {error.strerror or error}"

    def _open(self, path: str) -> BinaryIO:
        if os.path.exists(path) and not os.path.isfile(path):  # a device or FIFO named by a manifest: never read
            raise ObjectMissing(f"{path} is not a regular file")
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(f"no file at {path}") from None
        except PermissionError:
            raise AccessDenied(f"permission denied reading {path}") from None

    def list_paths(self, directory: str, descend_into: Callable[[str], bool]) -> Iterator[str]:
        def refuse(error: OSError) -> None:
            if isinstance(error, PermissionError):
                raise AccessDenied(f"permission denied listing {error.filename}") from None

        for root, dirs, files in os.walk(directory, onerror=refuse):
            dirs[:] = sorted(name for name in dirs if root != directory or descend_into(name))
            for name in sorted(files):
                yield posixpath.join(root, name)


class S3Store(Store):
    """S3 through the amazon provider's ``S3Hook`` (its connection: credentials, endpoint, region).

    :param conn_id: the AWS connection id (``None``: boto3's own credentials).
    """

    schemes = ("s3",)

    def __init__(self, conn_id: str | None) -> None:
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError:
            raise StorageUnavailable(
                "reading s3:// needs the amazon provider: pip install 'airflow-provider-loyalty[amazon]'"
            ) from None
        self.client: Any = S3Hook(aws_conn_id=conn_id).get_conn()

    def display(self, path: str) -> str:
        return f"s3://{path}"

    def path_of_url(self, url: str) -> str:
        return url.split("://", 1)[1]

    def path_of_bare_key(self, key: str, manifest_path: str) -> str:
        return f"{_split(manifest_path)[0]}/{key}"

    def iter_chunks(self, path: str) -> Iterator[bytes]:
        bucket, key = _split(path)
        with self._errors(path):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            with self._errors(path):
                yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def open_random_access(self, path: str) -> BinaryIO:
        bucket, key = _split(path)
        with self._errors(path):
            size = int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        return io.BufferedReader(_S3RangeReader(self, path, size), CHUNK_BYTES)  # type: ignore[return-value]

    def read_range(self, path: str, start: int, stop: int) -> bytes:
        """Bytes ``start`` .. ``stop - 1`` of an object (one ranged GET)."""
        bucket, key = _split(path)
        with self._errors(path):
            reply = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
            return bytes(reply["Body"].read())

    def list_paths(self, directory: str, descend_into: Callable[[str], bool]) -> Iterator[str]:
        bucket, prefix = _split(directory)
        prefix = f"{prefix.rstrip('/')}/" if prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors(directory, listing=True):
            # With a delimiter, what lies under a sub-prefix comes back as that one prefix, not its keys.
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                yield from _object_paths(bucket, page)
                for sub in page.get("CommonPrefixes", []):
                    if descend_into(sub["Prefix"][len(prefix) :].rstrip("/")):
                        for inner in paginator.paginate(Bucket=bucket, Prefix=sub["Prefix"]):
                            yield from _object_paths(bucket, inner)
                    else:
                        yield from self._object_at_prefix(bucket, sub["Prefix"])

    def _object_at_prefix(self, bucket: str, prefix: str) -> Iterator[str]:
        """The object whose key is ``prefix`` itself (``part-00009.csv/``), if it holds bytes: with a
        delimiter it is listed only as that sub-prefix, which is otherwise not looked into. One
        request per sub-prefix: the shortest key under a prefix, the prefix itself, comes first."""
        reply = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        yield from (path for path in _object_paths(bucket, reply) if path == f"{bucket}/{prefix}")

    def _errors(self, path: str, *, listing: bool = False) -> AbstractContextManager[None]:
        return _s3_errors(self.display(path), "listing" if listing else "reading")


def _object_paths(bucket: str, page: dict[str, Any]) -> Iterator[str]:
    """The ``bucket/key`` paths of the objects in one ``list_objects_v2`` page; zero-byte "folder"
    markers (keys ending in ``/``) are not objects, but such a key holding bytes is one."""
    for item in page.get("Contents", []):
        if not item["Key"].endswith("/") or item.get("Size", 0) > 0:
            yield f"{bucket}/{item['Key']}"


@contextmanager
def _s3_errors(where: str, action: str) -> Iterator[None]:
    """Turns botocore errors into :class:`StorageError` with a one-line message."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            raise StorageUnavailable(f"bucket of {where} does not exist") from None
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            raise ObjectMissing(f"no object at {where}") from None
        if code in {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"} or status == 403:
            raise AccessDenied(f"access denied {action} {where}") from None
        raise StorageUnavailable(f"S3 error {code or status} {action} {where}") from None
    except BotoCoreError as error:
        raise StorageUnavailable(f"S3 unavailable {action} {where}: {type(error).__name__}") from None


class _S3RangeReader(io.RawIOBase):
    """A seekable raw file over one S3 object, reading by ranged GETs (wrap it in a BufferedReader)."""

    def __init__(self, store: S3Store, path: str, size: int) -> None:
        self.store, self.path, self.size, self.position = store, path, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        stop = min(self.size, self.position + len(buffer))
        if stop <= self.position:
            return 0
        data = self.store.read_range(self.path, self.position, stop)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


class ObjectStorageStore(FileLikeStore):
    """Any other ``ObjectStoragePath`` scheme, through the fsspec filesystem Airflow attaches to it.

    :param scheme: the URL scheme (``gcs``, ``abfs``, ``s3a`` ...).
    :param conn_id: the Airflow connection of the filesystem (``None``: its default).
    """

    def __init__(self, scheme: str, conn_id: str | None) -> None:
        from airflow.sdk import ObjectStoragePath

        try:
            self.fs: AbstractFileSystem = ObjectStoragePath(f"{scheme}://", conn_id=conn_id).fs
        except (ValueError, ImportError):
            raise StorageUnavailable(f"unknown scheme {scheme!r}: no Airflow filesystem is registered for it") from None
        self.schemes = (scheme,)
        self.scheme = scheme

    def display(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def path_of_url(self, url: str) -> str:
        return url.split("://", 1)[1]

    def path_of_bare_key(self, key: str, manifest_path: str) -> str:
        return f"{_split(manifest_path)[0]}/{key}"

    def read_failure(self, path: str, error: OSError) -> str:
        return f"reading {self.display(path)} failed: {type(error).__name__}"

    def _open(self, path: str) -> BinaryIO:
        try:
            return self.fs.open(path, "rb")  # type: ignore[no-any-return]
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectMissing(f"no object at {self.display(path)}") from None
        except PermissionError:
            raise AccessDenied(f"access denied reading {self.display(path)}") from None

    def list_paths(self, directory: str, descend_into: Callable[[str], bool]) -> Iterator[str]:
        try:
            found: dict[str, Any] = self.fs.find(directory, detail=True)
        except FileNotFoundError:
            return
        except PermissionError:
            raise AccessDenied(f"access denied listing {self.display(directory)}") from None
        inside = directory.rstrip("/") + "/"
        for path, info in sorted(found.items()):
            path = path.split("://", 1)[-1]
            if path.endswith("/") and not (info.get("size") or 0):  # a zero-byte "folder" marker
                continue
            name = path[len(inside) :] if path.startswith(inside) else ""  # not under it: as found
            # ``part-00009.csv/`` holding bytes is an object here, not a sub-directory
            if "/" not in name.rstrip("/") or descend_into(name.split("/", 1)[0]):
                yield path


def open_store(location: str, conn_id: str | None) -> tuple[Store, str]:
    """The store of a user-given location, and the location's path in it.

    :param location: a local path, ``file://``, ``s3://`` or another ``ObjectStoragePath`` URL.
        ``scheme://conn_id@bucket/...`` names the connection as ``ObjectStoragePath`` does.
    :param conn_id: the connection to read with (for ``s3://``: default ``aws_default``;
        :data:`NO_CONNECTION`: none, the library's own credentials).
    """
    if location[:5].lower() == "file:" and location[5:7] != "//":  # file:/abs, RFC 8089's short form
        location = f"file://{location[5:]}"
    if "://" not in location:
        return LocalStore(), os.path.abspath(os.path.expanduser(location))
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        if ":" in userinfo:
            raise StorageUnavailable("credentials in the location are refused: name an Airflow connection instead")
        conn_id = conn_id or userinfo
        location = f"{scheme}://{host}{location.split(parts.netloc, 1)[1]}"
    if scheme in LocalStore.schemes:
        store: Store = LocalStore()
    elif scheme in S3Store.schemes:
        _require_connection(conn_id)
        store = S3Store(None if conn_id == NO_CONNECTION else conn_id or DEFAULT_AWS_CONN_ID)
    else:
        _require_connection(conn_id)
        store = ObjectStorageStore(scheme, conn_id or None)
    return store, store.path_of_url(location)


def split_url(url: str) -> tuple[str, str]:
    """``(scheme, path)`` of a URL, the path as a store of that scheme names it: ``file`` and a
    normalized absolute path for ``file://`` and ``local://``, else the lower-case scheme and
    ``bucket/key``. Compared with :attr:`Store.family` and a store's paths.

    :param url: ``scheme://...``.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme in LocalStore.schemes:
        return LOCAL_SCHEME, LocalStore().path_of_url(url)
    return scheme, url.split("://", 1)[1]


def _require_connection(conn_id: str | None) -> None:
    """A connection named explicitly must exist (no silent fallback to another identity)."""
    if not conn_id:
        return
    from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise StorageUnavailable(f"connection {conn_id!r} is not defined") from None


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key
