"""What a status word means: the documented ones, the synonyms task APIs use, any case and blanks."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyResponseError, LoyaltyTransientError, LoyaltyValidationError
from airflow_provider_loyalty.utils.export_status import ExportTaskState, ExportTaskStatus
from airflow_provider_loyalty.utils.protocol import check_reply
from airflow_provider_loyalty.utils.redaction import MAX_QUOTED_CHARS
from airflow_provider_loyalty.utils.validation import check_task_id

TOKEN = "s3cret-T0KEN-value-0123456789"


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("completed", ExportTaskState.COMPLETED),
        (" Completed\n", ExportTaskState.COMPLETED),
        *[(word, ExportTaskState.COMPLETED) for word in ("done", "DONE", "success", "succeeded", "finished")],
        *[(word, ExportTaskState.FAILED) for word in ("failed", "Error", "cancelled", "canceled", "aborted")],
        *[(word, ExportTaskState.FAILED) for word in ("failure", "rejected", "expired", "errored")],
        *[(word, ExportTaskState.RUNNING) for word in ("in_progress", "pending", "queued", "new", "", None, 3)],
    ],
)
def test_status_words(word: object, state: ExportTaskState) -> None:
    assert ExportTaskState.of(word) is state


def test_a_servers_long_texts_are_quoted_shortened_and_without_the_token() -> None:
    """A 100 KB error_text (or failure reason, or status word) went whole into the exception, the
    trigger event and the log. The token is masked before the cut, so no piece of it survives."""
    novel = "x" * (MAX_QUOTED_CHARS - 5) + TOKEN + "y" * 100_000
    body = json.dumps({"error": 1000, "error_text": novel}).encode()
    with pytest.raises(LoyaltyTransientError) as raised:
        check_reply(http_status=500, headers={"Content-Type": "application/json"}, body=body, token=TOKEN)
    text = str(raised.value)
    assert len(text) < MAX_QUOTED_CHARS + 100 and text.endswith("more characters)"), text[-200:]
    assert TOKEN[:8] not in text

    failed = ExportTaskStatus.from_reply("task_1", {"status": "failed", "error_text": novel}, TOKEN)
    assert failed.failure_text is not None and len(failed.failure_text) < MAX_QUOTED_CHARS + 40
    assert TOKEN[:8] not in failed.failure_text
    wordy = ExportTaskStatus.from_reply("task_1", {"status": "working " * 10_000, "progress": "9" * 10_000}, TOKEN)
    assert len(wordy.status) < 140 and len(str(wordy.progress)) < 140


def test_a_hashed_file_carrying_the_token_is_refused() -> None:
    """The file name goes into the download URL and the trigger's event: a server that echoes the
    token there would put it in both."""
    reply = {
        "status": "completed",
        "result": {"hashed_file": f"exports/{TOKEN}/f.zip", "total": 1, "next_from_id": None},
    }
    with pytest.raises(LoyaltyResponseError, match="carries the connection's token") as refused:
        ExportTaskStatus.from_reply("task_1", reply, TOKEN)
    assert TOKEN not in str(refused.value)
    fine = {"status": "completed", "result": {"hashed_file": "exports/abc/f.zip", "total": 1, "next_from_id": None}}
    assert ExportTaskStatus.from_reply("task_1", fine, TOKEN).result is not None


@pytest.mark.parametrize(
    ("token", "hashed_file"),
    [
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig-of-the-token", "eyJhbGciOiJIUzI1NiJ9.eyJmIjoiZXhwb3J0In0.x.zip"),
        ("loyalty_7c1e9a4b2d8f", "2023/10/Transactions_loyalty_1_1_20231001.zip"),
    ],
    ids=["jwt", "vendor-prefix"],
)
def test_a_hashed_file_sharing_only_the_start_of_the_token_is_taken(token: str, hashed_file: str) -> None:
    """Two JWTs share their first characters (``eyJhbGci``); a token and the documented file name can
    share a vendor prefix: only the whole token, in any form, is refused."""
    reply = {"status": "completed", "result": {"hashed_file": hashed_file, "total": 1, "next_from_id": None}}
    result = ExportTaskStatus.from_reply("task_1", reply, token).result
    assert result is not None and result.hashed_file == hashed_file


@pytest.mark.parametrize("encode", [quote, quote_plus], ids=["percent", "plus"])
def test_a_hashed_file_carrying_the_token_url_encoded_is_refused(encode: Any) -> None:
    """A token with ``+``, ``/`` or ``=`` (base64) goes into a path or a query encoded: a plain
    substring test let the encoded form into the download URL, the event and the logs."""
    token = "tok+en/with=base64chars"
    hashed_file = f"exports/f.zip?key={encode(token, safe='')}"
    assert token not in hashed_file
    reply = {"status": "completed", "result": {"hashed_file": hashed_file, "total": 1, "next_from_id": None}}
    with pytest.raises(LoyaltyResponseError, match="carries the connection's token"):
        ExportTaskStatus.from_reply("task_1", reply, token)


def test_the_token_echoed_beside_the_documented_result_fields_is_masked_in_what_goes_on() -> None:
    """``result`` as the API sent it is the sensor's XCom and rides in the trigger's event: a server
    that adds a download link with ``?token=`` (or the token as a key) must not put it there."""
    reply = {
        "status": "completed",
        "result": {
            "hashed_file": "exports/abc/f.zip",
            "total": 1,
            "next_from_id": "n-1",
            "download_url": f"https://api.example.com/api/download/exports/abc/f.zip?token={TOKEN}",
            "links": [{"href": f"/x?t={TOKEN}"}],
            TOKEN: "as a key",
            "is_api": True,
        },
    }
    result = ExportTaskStatus.from_reply("task_1", reply, TOKEN).completed_result()
    shown = json.dumps(result.raw)
    assert TOKEN[:8] not in shown
    assert result.raw["download_url"].startswith("https://api.example.com/api/download/exports/abc/f.zip?token=")
    assert (result.raw["is_api"], result.raw["total"], result.next_from_id) == (True, 1, "n-1")


@pytest.mark.parametrize("cursor", ["n\x00-1", "n-1\r\nX: y", "n" * 257, "c-\ud83d"])
def test_a_next_from_id_no_request_could_carry_is_the_replys_fault(cursor: str) -> None:
    """Control characters or an absurd length in the API's ``next_from_id`` are a malformed reply,
    reported as the reply's field, not as a bad ``from_id`` parameter at the next batch."""
    reply = {"status": "completed", "result": {"hashed_file": "exports/abc/f.zip", "total": 1, "next_from_id": cursor}}
    with pytest.raises(LoyaltyResponseError, match=r"result\.next_from_id"):
        ExportTaskStatus.from_reply("task_1", reply, TOKEN).completed_result()


def test_a_cursor_or_file_with_a_lone_surrogate_is_refused_in_every_mode_alike() -> None:
    """Half an emoji in ``next_from_id`` (legal JSON) was sent back as it came by a worker, but
    escaped in the trigger's event: a deferred export sent another cursor, without an error (review)."""
    reply = {"status": "completed", "result": {"hashed_file": "exports/\udc00.zip", "total": 1, "next_from_id": ""}}
    with pytest.raises(LoyaltyResponseError, match=r"result\.hashed_file .* holds a lone surrogate"):
        ExportTaskStatus.from_reply("task_1", reply, TOKEN).completed_result()
    with pytest.raises(LoyaltyValidationError, match="export_task_id"):
        check_task_id("task_\ud83d")
    assert check_task_id("task_\U0001f600") == "task_\U0001f600"  # a whole emoji is a character like any
