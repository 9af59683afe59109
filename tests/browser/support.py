"""Helpers of the browser tests (importable, unlike conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
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


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from its IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def side_by_side(context: Any, pictures: list[bytes], path: Path, gap: int = 24) -> None:
    """Write ``pictures`` next to each other, top-aligned on white, as one PNG at ``path``.

    Composed by the same browser (a page of ``<img>`` elements), so no imaging library is needed.

    :param context: the Playwright browser context.
    :param pictures: PNG screenshots, left to right.
    :param path: where the composed PNG goes.
    :param gap: pixels between two pictures (and around them).
    """
    sizes = [png_size(picture) for picture in pictures]
    width = sum(w for w, _ in sizes) + gap * (len(pictures) + 1)
    height = max(h for _, h in sizes) + 2 * gap
    images = "".join(
        f'<img style="display:block" src="data:image/png;base64,{base64.b64encode(picture).decode()}">'
        for picture in pictures
    )
    tab = context.new_page()
    try:
        tab.set_viewport_size({"width": width, "height": height})
        tab.set_content(
            f'<body style="margin:0;padding:{gap}px;display:flex;gap:{gap}px;align-items:flex-start;'
            f'background:#fff">{images}</body>'
        )
        tab.wait_for_function("Array.from(document.images).every(image => image.complete)")
        tab.screenshot(path=str(path))
    finally:
        tab.close()
