"""EmulatorConfig: validation of every field, atomic updates."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_loyalty.testing import EmulatorConfig


def test_config_validation() -> None:
    for bad in (
        {"cursor_mode": "sideways"},
        {"batch_size": 0},
        {"transactions": "5"},
        {"zip_compresslevel": 10},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EmulatorConfig(**bad)
    config = EmulatorConfig.from_dict({"batch_size": 5, "task_duration": 1})
    assert config.batch_size == 5
    assert config.to_dict()["task_duration"] == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"csv_style": "fancy"}, "csv_style"),
        ({"csv_bom": "yes"}, "csv_bom"),
        ({"csv_line_ending": "\r\n"}, "csv_line_ending"),
        ({"zip_members": 0}, "zip_members"),
        ({"empty_export_style": "nothing"}, "empty_export_style"),
        ({"file_ttl": -1}, "file_ttl"),
        ({"expired_file_status": 500}, "expired_file_status"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"concurrency_retry_after": -0.5}, "concurrency_retry_after"),
        ({"prebuilt_files": 1}, "prebuilt_files"),
        ({"progress_style": "percent"}, "progress_style"),
        ({"created_at_timeline": "2023-09-01T00:00:00Z"}, "created_at_timeline"),
        ({"transactions": 2, "created_at_timeline": ["2023-09-01T00:00:00Z"]}, "created_at_timeline"),
        ({"transactions": 1, "created_at_timeline": ["2023-09-01T00:00:00.5Z"]}, "created_at_timeline"),
        ({"transactions": 1, "created_at_timeline": ["2023-09-01"]}, "created_at_timeline"),
        ({"transactions": 1, "created_at_timeline": [5]}, "created_at_timeline"),
    ],
)
def test_new_fields_are_validated_atomically(changes: dict[str, Any], field: str) -> None:
    config = EmulatorConfig()
    before = config.to_dict()
    with pytest.raises(ValueError, match=f"EmulatorConfig.{field}"):
        config.update(changes)
    assert config.to_dict() == before


def test_optional_fields_accept_none_and_numbers() -> None:
    config = EmulatorConfig(file_ttl=1, max_concurrent_requests=3, concurrency_retry_after=2)
    config.update({"file_ttl": None, "max_concurrent_requests": None, "created_at_timeline": None})
    assert (config.file_ttl, config.max_concurrent_requests) == (None, None)
    timeline = ["2023-09-01T00:00:00Z", "2023-09-01T00:00:00Z", "2023-09-02T00:00:00+02:00"]
    config.update({"transactions": 3, "created_at_timeline": timeline})
    assert config.to_dict()["created_at_timeline"] == timeline
