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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server in its own process, shared by the session; yields its URL."""
    from airflow_provider_loyalty.testing.s3 import moto_s3_server

    with moto_s3_server() as server:
        yield server.url


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the loopback S3 server, with ``aws_default`` pointing at it."""
    import re
    import uuid

    import boto3

    from airflow_provider_loyalty.testing.s3 import aws_connection_json

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_json(s3_server))
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_client(s3_server: str):
    """A boto3 client of the loopback S3 server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
