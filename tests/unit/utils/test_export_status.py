"""What a status word means: the documented ones, the synonyms task APIs use, any case and blanks."""

from __future__ import annotations

import pytest

from airflow_provider_loyalty.utils.export_status import ExportTaskState


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
