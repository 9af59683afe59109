"""Pre-built export files: built once on disk, served with Content-Length, removed on reset and stop."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_loyalty.testing import FaultRule, LoyaltyEmulator


@pytest.fixture
def prebuilt(emulator_factory: Any) -> LoyaltyEmulator:
    """An emulator of 3,000 rows in one batch, with pre-built files."""
    return emulator_factory(transactions=3000, batch_size=3000, prebuilt_files=True)  # type: ignore[no-any-return]


def _zip_files(emulator: LoyaltyEmulator) -> list[Path]:
    directory = emulator.api.prebuilt.directory
    return sorted(directory.glob("*.zip")) if directory is not None else []


def test_served_from_disk_with_content_length_and_the_same_bytes(
    prebuilt: LoyaltyEmulator, client_factory: Any
) -> None:
    c = client_factory(prebuilt)
    task_id = c.export()
    result = c.wait(task_id)["result"]
    assert [p.name for p in _zip_files(prebuilt)] == [f"{task_id}.zip"]  # on disk once the task completes
    response = c.download(result["hashed_file"])
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(response.content))
    assert "Transfer-Encoding" not in response.headers
    assert response.headers["Content-Disposition"].startswith('attachment; filename="Transactions_loyalty_')
    _, rows, _ = c.read_csv_from_zip(response.content)
    assert [r[0] for r in rows] == prebuilt.expected_ids()

    prebuilt.config.prebuilt_files = False  # the next task is streamed: same bytes
    streamed = c.download(c.wait(c.export())["result"]["hashed_file"])
    assert streamed.headers["Transfer-Encoding"] == "chunked"
    assert streamed.content == response.content
    assert c.download(result["hashed_file"]).content == response.content  # re-download from disk
    stats = prebuilt.stats()
    assert stats["prebuilt_files_built"] == 1
    assert stats["downloads_completed"] == 3
    assert stats["download_bytes"] == 3 * len(response.content)


def test_files_removed_on_reset_and_stop(prebuilt: LoyaltyEmulator, client_factory: Any) -> None:
    c = client_factory(prebuilt)
    hashed = c.wait(c.export())["result"]["hashed_file"]
    directory = prebuilt.api.prebuilt.directory
    assert directory is not None
    assert len(_zip_files(prebuilt)) == 1
    prebuilt.reset()
    assert not directory.exists()
    assert c.download(hashed).status_code == 404  # the task is forgotten too
    c.wait(c.export())
    second = prebuilt.api.prebuilt.directory
    assert second is not None
    assert second != directory
    assert len(_zip_files(prebuilt)) == 1
    prebuilt.stop()
    assert not second.exists()


def test_a_request_the_stopping_emulator_still_handles_leaves_no_files(
    prebuilt: LoyaltyEmulator, client_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() deleted the files while an export request was still being handled; that request then
    made the directory again and built its zip there, and nothing removed it (every stop of a
    busy emulator in a test session leaked one). Started again, the emulator builds files again."""
    import tempfile
    import threading

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prebuilt.set_faults([FaultRule(endpoint="export", kind="slow", params={"seconds": 0.5})])
    c = client_factory(prebuilt)
    replies: list[Any] = []
    request = threading.Thread(target=lambda: replies.append(_export_or_error(c)))
    request.start()
    deadline = time.monotonic() + 10
    while prebuilt.stats()["requests"].get("export", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the request is in the handler, in its slow fault
    assert prebuilt.stats()["requests"].get("export", 0) == 1
    prebuilt.stop()
    request.join(timeout=10)
    assert replies  # the client's side ended (the stopping server closed the connection)
    deadline = time.monotonic() + 10  # the handler wakes from its fault and creates the task
    while prebuilt.stats()["export_tasks_created"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert prebuilt.stats()["export_tasks_created"] == 1
    time.sleep(0.3)  # a build it had started would be on disk by now
    assert list(tmp_path.glob("loyalty-emulator-*")) == []

    prebuilt.set_faults([])
    prebuilt.start()
    client_factory(prebuilt).wait(client_factory(prebuilt).export())
    assert len(_zip_files(prebuilt)) == 1


def _export_or_error(client: Any) -> Any:
    try:
        return client.export()
    except Exception as error:  # the stopping server closed the connection
        return error


def test_truncate_and_slow_faults_on_a_prebuilt_file(prebuilt: LoyaltyEmulator, client_factory: Any) -> None:
    c = client_factory(prebuilt)
    hashed = c.wait(c.export())["result"]["hashed_file"]
    full = c.download(hashed).content
    prebuilt.set_faults([FaultRule(endpoint="download", kind="truncate", count=1, params={"after_bytes": 1000})])
    received = bytearray()
    with c.session.get(prebuilt.url + c.download_path(hashed), stream=True, timeout=30) as response:
        assert response.headers["Content-Length"] == str(len(full))
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
            for chunk in response.iter_content(100):  # small reads: a short read loses its bytes
                received += chunk
    assert bytes(received) == full[:1000]
    prebuilt.set_faults([FaultRule(endpoint="download", kind="slow", count=1, params={"seconds": 0, "during": 0.3})])
    started = time.monotonic()
    assert c.download(hashed).content == full
    assert time.monotonic() - started >= 0.3


def test_content_faults_stream_instead(prebuilt: LoyaltyEmulator, client_factory: Any) -> None:
    c = client_factory(prebuilt)
    hashed = c.wait(c.export())["result"]["hashed_file"]
    prebuilt.set_faults([FaultRule(endpoint="download", kind="short_batch", count=1)])
    response = c.download(hashed)
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert len(c.read_csv_from_zip(response.content)[1]) == 2999
    assert "Content-Length" in c.download(hashed).headers


def test_a_failed_build_falls_back_to_streaming(prebuilt: LoyaltyEmulator, client_factory: Any) -> None:
    c = client_factory(prebuilt)
    c.wait(c.export())  # makes the directory
    directory = prebuilt.api.prebuilt.directory
    assert directory is not None
    shutil.rmtree(directory)  # e.g. a temp cleaner: the next build cannot write its file
    result = c.wait(c.export())["result"]
    response = c.download(result["hashed_file"])
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert len(c.read_csv_from_zip(response.content)[1]) == 3000
    assert prebuilt.stats()["prebuilt_files_built"] == 1


def test_a_later_task_of_the_same_batch_is_served_the_file_already_built(
    prebuilt: LoyaltyEmulator, client_factory: Any
) -> None:
    """A second export of a period (a benchmark's next transfer, a retry) costs the emulator no
    build: its download is not paced by the server building the zip again."""
    c = client_factory(prebuilt)
    first = c.download(c.wait(c.export())["result"]["hashed_file"]).content
    second_task = c.export()
    second = c.download(c.wait(second_task)["result"]["hashed_file"])
    assert second.content == first and second.headers["Content-Length"] == str(len(first))
    assert prebuilt.stats()["prebuilt_files_built"] == 1
    assert len(_zip_files(prebuilt)) == 1

    prebuilt.config.zip_compresslevel = 0  # another layout: other bytes, another file
    third = c.download(c.wait(c.export())["result"]["hashed_file"]).content
    assert third != first
    _, rows, _ = c.read_csv_from_zip(third)
    assert [r[0] for r in rows] == prebuilt.expected_ids()
    assert prebuilt.stats()["prebuilt_files_built"] == 2

    prebuilt.reset()  # the files are gone: the next task builds again
    c.download(c.wait(c.export())["result"]["hashed_file"])
    assert prebuilt.stats()["prebuilt_files_built"] == 1
