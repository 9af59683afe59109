"""End-to-end tests: make each test's outcome visible to fixtures (to dump process logs on failure)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """Store each phase's report on the item as ``rep_setup`` / ``rep_call`` / ``rep_teardown``."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
