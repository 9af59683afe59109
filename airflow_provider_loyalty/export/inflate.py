"""Open a batch archive's members for reading, deflated ones inflated by ISA-L.

Only for internal usage of :mod:`airflow_provider_loyalty.export.archive`. :meta private:

Inflating is the largest single cost of verifying a batch. ISA-L (the ``isal`` package) inflates
deflate streams to the same bytes as zlib in about half the CPU time. ``zipfile`` has no way to
choose its inflater, so :func:`open_member` opens the member with ``zipfile`` as before (its local
header, name, size and CRC checks stay ``zipfile``'s) and, for a deflated member nothing has been
read from yet, gives its reads an ISA-L decompressor in place of zlib's. That decompressor has
zlib's interface (``decompress(data, max_length)``, ``unconsumed_tail``, ``eof``, ``flush``), so a
read inflates at most what it asks for, as before: the zip bomb caps hold the same way.

Should a Python version lay ``zipfile``'s reader out differently, the member is read with zlib:
slower, the same bytes.
"""

from __future__ import annotations

import zipfile
import zlib
from typing import IO, cast

from isal import isal_zlib

#: What a broken deflate stream raises when ISA-L inflates it (zlib's is ``zlib.error``).
InflateError = cast("type[Exception]", isal_zlib.error)  # its stub calls it an instance

_ZLIB_DECOMPRESSOR = type(zlib.decompressobj(-zlib.MAX_WBITS))
# zipfile stores a deflated member as a raw deflate stream (no header, no trailer).
_RAW_DEFLATE = -zlib.MAX_WBITS


def open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> IO[bytes]:
    """Open ``info`` of ``archive`` for reading; a deflated member is inflated by ISA-L.

    :param archive: the open archive.
    :param info: the member.
    """
    member = archive.open(info)
    if info.compress_type == zipfile.ZIP_DEFLATED and type(getattr(member, "_decompressor", None)) is (
        _ZLIB_DECOMPRESSOR
    ):
        member._decompressor = isal_zlib.decompressobj(_RAW_DEFLATE)  # type: ignore[attr-defined]
    return member


def inflated_by_isal(member: IO[bytes]) -> bool:
    """Whether :func:`open_member` gave ``member`` ISA-L's inflater (for tests and benchmarks)."""
    return type(getattr(member, "_decompressor", None)).__module__.startswith(("isal", "igzip"))


__all__ = ["InflateError", "inflated_by_isal", "open_member"]
