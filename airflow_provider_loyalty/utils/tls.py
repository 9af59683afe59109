"""The TLS client context of a connection's settings, shared by the sync and the async hook.

One context per (CA bundle, client certificate) for the whole process: building one reads and
parses a CA bundle, about 28 ms of CPU. A file renewed in place (a rotated CA bundle, a short-lived
client certificate) is read again: the files' size and modification time are part of the key.
A file that cannot be used is a :class:`~airflow_provider_loyalty.exceptions.LoyaltyValidationError`
naming where its path came from.
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import TYPE_CHECKING

from airflow_provider_loyalty.exceptions import LoyaltyValidationError

if TYPE_CHECKING:
    from airflow_provider_loyalty.utils.connection import LoyaltyConnectionSettings

#: Where requests looks for a CA bundle when a connection simply verifies (see
#: :meth:`~airflow_provider_loyalty.utils.connection.LoyaltyConnectionSettings.effective_verify`).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")

Stamp = tuple[int, int] | None


def reads_files(verify: bool | str, client_cert: str | tuple[str, str] | None) -> bool:
    """Whether the context of these settings is built from files named by the user (checking
    them touches the file system: an async caller does it off its event loop)."""
    return isinstance(verify, str) or bool(client_cert)


def settings_context(settings: LoyaltyConnectionSettings, default_cafile: str | None) -> ssl.SSLContext:
    """The client context of a connection's settings (see :func:`client_context`).

    :param settings: the connection's settings.
    :param default_cafile: the CA bundle of ``verify=True``.
    """
    return client_context(
        settings.effective_verify(), settings.client_cert, default_cafile, settings.ca_bundle_source()
    )


def client_context(
    verify: bool | str,
    client_cert: str | tuple[str, str] | None,
    default_cafile: str | None,
    verify_source: str = "ca_bundle",
) -> ssl.SSLContext:
    """A client context: verifying against ``verify`` (a CA bundle file or directory), or against
    ``default_cafile`` (or the system's store when ``None``) when ``verify`` is ``True``; not verifying
    at all when ``verify`` is ``False``. A client certificate is presented when given.

    :param verify: ``True``, ``False``, or the path of a CA bundle file or directory.
    :param client_cert: a PEM path holding certificate and key, or (certificate path, key path).
    :param default_cafile: the CA bundle of ``verify=True`` (``certifi``'s, as ``requests`` uses).
    :param verify_source: what named ``verify``'s path, for errors (an extra, an environment variable).
    :raises LoyaltyValidationError: a file is missing or holds no usable certificate or key.
    """
    certs = (client_cert,) if isinstance(client_cert, str) else client_cert or ()
    stamps = (_stamp(verify) if isinstance(verify, str) else None, tuple(_stamp(path) for path in certs))
    return _built(verify, client_cert, default_cafile, verify_source, stamps)


def _stamp(path: str) -> Stamp:
    try:
        status = os.stat(path)
    except OSError:
        return None  # reported, with its field, when the context is built
    return (status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=16)
def _built(
    verify: bool | str,
    client_cert: str | tuple[str, str] | None,
    default_cafile: str | None,
    verify_source: str,
    stamps: tuple[Stamp, tuple[Stamp, ...]],
) -> ssl.SSLContext:
    del stamps  # part of the cache key only
    try:
        if isinstance(verify, str):
            directory = os.path.isdir(verify)
            context = ssl.create_default_context(
                cafile=None if directory else verify, capath=verify if directory else None
            )
        else:
            context = ssl.create_default_context(cafile=default_cafile if verify else None)
    except (ssl.SSLError, OSError) as error:
        raise _unusable(verify_source, verify, "CA certificates (PEM)", error) from None
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert:
        certfile, keyfile = client_cert if isinstance(client_cert, tuple) else (client_cert, None)
        try:
            context.load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as error:
            shown = certfile if keyfile is None else f"{certfile} + {keyfile}"
            raise _unusable("client_cert", shown, "a certificate and its private key (PEM)", error) from None
    return context


def _unusable(field: str, path: object, expected: str, error: BaseException) -> LoyaltyValidationError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return LoyaltyValidationError(field, f"{path} cannot be used: expected {expected}; {reason}")
