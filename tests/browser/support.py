"""Helpers of the browser tests (importable, unlike conftest.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.airflow_cluster import AirflowCluster


@contextlib.contextmanager
def diagnostics(page: Any, cluster: AirflowCluster, artifacts: Path) -> Iterator[None]:
    """On any failure inside: save a screenshot and print the page text and the api-server log tail."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            shot = artifacts / "failure.png"
            page.screenshot(path=str(shot))
            print(f"screenshot of the failing page: {shot}")
            print(f"----- page text ({page.url}) -----\n{page.inner_text('body')[-3000:]}")
        print(cluster.dump_logs(tail_bytes=8000))
        raise


# Airflow 3.3.1 / 3.3.2: the connections list's Test button posts ``port: Number(conn.port)``, i.e.
# ``0`` for a connection without a port, and ``POST /api/v2/connections/test`` takes ``0 != NULL``
# for "a different destination": 400 "The host or port to test differs from the stored connection"
# for every port-less connection (ours hides the port). Upstream: apache/airflow#73298 (fix, after
# #72348 fixed the same for host). Not fixed in any release on PyPI yet (3.3.2 is the newest).
_PORT_BUG_DETAIL = "differs from the stored connection"


@dataclass
class PortlessTestShim:
    """Re-sends a Test request with ``port: null`` only when Airflow rejects its ``port: 0`` as above.

    Self-disabling: on an Airflow with the fix the first answer is not that 400 and nothing is
    rewritten. :attr:`rewrites` counts the requests that needed it (reported by the tests).
    """

    rewrites: int = 0

    def install(self, page: Any) -> PortlessTestShim:
        page.route("**/api/v2/connections/test", self._handle)
        return self

    def _handle(self, route: Any) -> None:
        response = route.fetch()
        body = route.request.post_data_json
        if (
            response.status == 400
            and _PORT_BUG_DETAIL in response.text()
            and isinstance(body, dict)
            and body.get("port") == 0
        ):
            self.rewrites += 1
            response = route.fetch(post_data=json.dumps({**body, "port": None}))
        route.fulfill(response=response)
