"""Test-wide setup: an isolated Airflow home, and helpers to point connections at loopback servers."""

from __future__ import annotations

import os
import tempfile

# Before anything imports Airflow: a private AIRFLOW_HOME (SQLite DB, logs) for this test session.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="loyalty-tests-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AIRFLOW_CONN_LOYALTY_DEFAULT", None)

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[str]:
    """A migrated SQLite metadata DB in the session's AIRFLOW_HOME (for ``dag.test()``)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield _AIRFLOW_HOME
