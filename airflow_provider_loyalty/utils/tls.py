"""The TLS client context of a connection's settings, shared by the sync and the async hook.

One context per (CA bundle, client certificate) for the whole process: building one reads and
parses a CA bundle, about 28 ms of CPU.
"""

from __future__ import annotations

import functools
import os
import ssl


@functools.lru_cache(maxsize=16)
def client_context(
    verify: bool | str, client_cert: str | tuple[str, str] | None, default_cafile: str | None
) -> ssl.SSLContext:
    """A client context: verifying against ``verify`` (a CA bundle file or directory), or against
    ``default_cafile`` (or the system's store when ``None``) when ``verify`` is ``True``; not verifying
    at all when ``verify`` is ``False``. A client certificate is presented when given.

    :param verify: ``True``, ``False``, or the path of a CA bundle file or directory.
    :param client_cert: a PEM path holding certificate and key, or (certificate path, key path).
    :param default_cafile: the CA bundle of ``verify=True`` (``certifi``'s, as ``requests`` uses).
    """
    if isinstance(verify, str):
        directory = os.path.isdir(verify)
        context = ssl.create_default_context(cafile=None if directory else verify, capath=verify if directory else None)
    else:
        context = ssl.create_default_context(cafile=default_cafile if verify else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert:
        certfile, keyfile = client_cert if isinstance(client_cert, tuple) else (client_cert, None)
        context.load_cert_chain(certfile, keyfile)
    return context
