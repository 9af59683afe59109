"""Helpers for the emulator tests: a tiny real HTTP client of the loyalty API (``requests``)."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import pytest
import requests

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.testing.pytest_plugin import (  # noqa: F401 - fixtures under test
    loyalty_connection,
    loyalty_emulator,
    loyalty_emulator_config,
)

EXPORT = "/api/v1.1/loyalty/transactions_export"
STATUS = "/api/v1.1/tasks/status"
ACCOUNT = "/api/v1.1/loyalty/account/transactions"
PERIOD = {"date_from": "2023-09-01T00:00:00Z", "date_to": "2023-09-30T23:59:59Z"}
EXPORT_PARAMS: dict[str, Any] = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", **PERIOD}


def to_xml(params: dict[str, Any]) -> bytes:
    """Encode a flat request dict as the API's ``<xml>`` body."""
    parts = []
    for key, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"<{key}>{escape(text)}</{key}>")
    return ("<xml>" + "".join(parts) + "</xml>").encode()


def xml_to_obj(element: Any) -> Any:
    """Decode an XML response element (lists: repeated children of ``data``)."""
    children = list(element)
    if not children:
        return element.text or ""
    if element.tag == "data" and all(c.tag == "transaction" for c in children):
        return [xml_to_obj(c) for c in children]
    return {c.tag: xml_to_obj(c) for c in children}


def download_path(hashed_file: str) -> str:
    """Percent-encode each segment of a hashed_file (once: an encoded one is decoded first), as the provider does."""
    names = [segment if "%" in unquote(segment) else unquote(segment) for segment in hashed_file.split("/")]
    return "/api/download/" + "/".join(quote(name, safe="") for name in names)


def zip_members(content: bytes) -> list[tuple[str, bytes]]:
    """Return (name, bytes) of every member of a zip, in order, after a CRC check."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        return [(name, archive.read(name)) for name in archive.namelist()]


def csv_rows(data: bytes) -> list[list[str]]:
    """Every record of a CSV member (header included), as ``csv.reader`` reads it."""
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def read_csv_from_zip(content: bytes) -> tuple[list[str], list[list[str]], str]:
    """Return (header, rows, member name) of the single CSV member of an export zip."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None
        (name,) = archive.namelist()
        text = archive.read(name).decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    return header, list(reader), name


class Client:
    """Minimal client of the emulator over real HTTP (helpers attached for the test modules)."""

    EXPORT = EXPORT
    STATUS = STATUS
    ACCOUNT = ACCOUNT
    EXPORT_PARAMS = EXPORT_PARAMS
    to_xml = staticmethod(to_xml)
    download_path = staticmethod(download_path)
    read_csv_from_zip = staticmethod(read_csv_from_zip)
    zip_members = staticmethod(zip_members)
    csv_rows = staticmethod(csv_rows)

    def __init__(self, emulator: LoyaltyEmulator, fmt: str = "json") -> None:
        self.emulator = emulator
        self.fmt = fmt
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {emulator.token}"

    def close(self) -> None:
        self.session.close()

    def post(
        self, path: str, params: dict[str, Any], fmt: str | None = None, *, body_token: bool = True, **kw: Any
    ) -> requests.Response:
        """POST ``params``; the member-history endpoint also gets the body ``token`` unless
        ``params`` has one or ``body_token`` is false."""
        fmt = fmt or self.fmt
        if path == self.ACCOUNT and body_token and "token" not in params:
            params = {**params, "token": self.emulator.token}
        if fmt == "xml":
            return self.session.post(
                self.emulator.url + path,
                data=to_xml(params),
                headers={"Content-Type": "application/xml"},
                timeout=30,
                **kw,
            )
        return self.session.post(self.emulator.url + path, json=params, timeout=30, **kw)

    def call(
        self, path: str, params: dict[str, Any], fmt: str | None = None, *, body_token: bool = True
    ) -> tuple[int, dict[str, Any]]:
        """POST and decode the envelope (XML converted to a dict of strings)."""
        response = self.post(path, params, fmt, body_token=body_token)
        if (fmt or self.fmt) == "xml":
            assert response.headers["Content-Type"].startswith("application/xml")
            root = SafeET.fromstring(response.content)
            assert root.tag == "xml"
            return response.status_code, xml_to_obj(root)
        assert response.headers["Content-Type"].startswith("application/json")
        return response.status_code, response.json()

    def export(self, **overrides: Any) -> str:
        status, body = self.call(EXPORT, {**EXPORT_PARAMS, **overrides})
        assert status == 200, body
        return str(body["data"]["task_id"])

    def wait(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.call(STATUS, {"task_id": task_id})
            assert status == 200, body
            data: dict[str, Any] = body["data"]
            if data["status"] != "in_progress":
                return data
            assert time.monotonic() < deadline, f"task {task_id} still in progress"
            time.sleep(0.01)

    def download(self, hashed_file: str) -> requests.Response:
        return self.session.get(self.emulator.url + download_path(hashed_file), timeout=60)

    def export_batch(self, **overrides: Any) -> tuple[dict[str, Any], list[list[str]]]:
        """Run one export task to completion and return (result, csv rows)."""
        data = self.wait(self.export(**overrides))
        assert data["status"] == "completed", data
        result: dict[str, Any] = data["result"]
        response = self.download(result["hashed_file"])
        assert response.status_code == 200
        _, rows, _ = read_csv_from_zip(response.content)
        return result, rows


@pytest.fixture
def emulator_factory() -> Iterator[Any]:
    """Start emulators with given config fields; all are stopped after the test."""
    started: list[LoyaltyEmulator] = []

    def make(**fields: Any) -> LoyaltyEmulator:
        fields.setdefault("task_duration", 0.05)
        emulator = LoyaltyEmulator(EmulatorConfig(**fields)).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(emulator_factory: Any) -> LoyaltyEmulator:
    """A small emulator: 2,500 transactions, batches of 1,000, fast tasks."""
    return emulator_factory(transactions=2500, batch_size=1000)  # type: ignore[no-any-return]


@pytest.fixture(params=["json", "xml"])
def client(request: pytest.FixtureRequest, emulator: LoyaltyEmulator) -> Iterator[Client]:
    """A client of ``emulator`` in each content type."""
    c = Client(emulator, request.param)
    yield c
    c.close()


@pytest.fixture
def client_factory() -> Iterator[Any]:
    """Make clients of any emulator (``client_factory(emulator, fmt="json")``)."""
    made: list[Client] = []

    def make(emulator: LoyaltyEmulator, fmt: str = "json") -> Client:
        made.append(Client(emulator, fmt))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def json_client(emulator: LoyaltyEmulator) -> Iterator[Client]:
    """A JSON client of ``emulator``."""
    c = Client(emulator, "json")
    yield c
    c.close()
