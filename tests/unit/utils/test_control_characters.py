"""One test of control characters for every value that must not hold one (ids, names, keys, tokens)."""

from __future__ import annotations

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.utils.validation import check_task_id, first_control_character


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("task_abc", None),
        ("with space and ünïcødé \u0080", None),  # C1 and non-ASCII letters are not C0 controls
        ("line\nbreak", "\n"),
        ("tab\there", "\t"),
        ("nul\x00", "\x00"),
        ("del\x7f", "\x7f"),
        ("unit\x1fsep\x01", "\x1f"),  # the first one
        ("", None),
    ],
)
def test_first_control_character(text: str, found: str | None):
    assert first_control_character(text) == found


def test_an_export_task_id_with_a_control_character_is_refused_naming_it():
    with pytest.raises(LoyaltyValidationError, match="export_task_id"):
        check_task_id("task_\x7f1")
    assert check_task_id("task_1") == "task_1"
