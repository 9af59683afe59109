"""moto's S3 server as a child process that ends with its parent.

``python -m airflow_provider_loyalty.testing.s3_server_child <moto.server arguments>``, started by
:func:`airflow_provider_loyalty.testing.s3.moto_s3_server` with a pipe on its standard input whose
write end only the parent holds. However the parent ends (its context exits, a SIGTERM from a CI
cancellation or ``timeout``, a SIGKILL, a crash), the pipe closes, the read here returns, and the
server exits: no S3 server is left running, orphaned, after the test session that started it.
"""

from __future__ import annotations

import os
import sys
import threading


def _exit_when_the_parent_goes() -> None:
    sys.stdin.buffer.read()  # returns at end of file: the parent closed the pipe or is gone
    os._exit(0)


def main(argv: list[str]) -> None:
    """Run ``moto.server`` with ``argv`` until it stops or the parent goes.

    :param argv: the arguments of ``python -m moto.server``.
    """
    threading.Thread(target=_exit_when_the_parent_goes, name="parent-watch", daemon=True).start()
    from moto.server import main as moto_server

    moto_server(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
