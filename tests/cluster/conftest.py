"""The cluster suite: the provider on production-shaped Airflow (``make test-cluster``, issue 16).

PostgreSQL and Redis from Debian's packages, Airflow with the CeleryExecutor (api-server,
scheduler, dag-processor, two triggerers, two Celery workers), the loyalty API emulator and moto's
S3 server, all on loopback, started once per session and stopped at its end.

Not part of ``make test``: nothing here is collected unless ``LOYALTY_CLUSTER=1`` (the make target
sets it, after installing the Celery provider and psycopg2 into ``.venv`` and the Debian packages
with ``scripts/install-system-packages cluster``). Each test records the figures it measured with
the ``cluster_figures`` fixture; they are printed in the pytest summary, and a failing test
prints the tails of every process log (all logs stay in the session's temp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ENABLED = os.environ.get("LOYALTY_CLUSTER") == "1"

# Not collected at all by `make test`: the suite needs root-installed services and minutes.
collect_ignore_glob = [] if ENABLED else ["test_*.py"]

REPO = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).resolve().parent / "dags"
_FIGURES: list[tuple[str, list[str]]] = []


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``cluster`` marker (pyproject's list is not ours to edit)."""
    config.addinivalue_line(
        "markers", "cluster: production-shaped Airflow (Postgres, Celery, 2 workers, 2 triggerers); make test-cluster"
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say why tests/cluster ran nothing when the switch is off."""
    return None if ENABLED else "tests/cluster: not collected (set LOYALTY_CLUSTER=1, or run make test-cluster)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print every figure the cluster tests recorded, whatever their outcome."""
    if not _FIGURES:
        return
    terminalreporter.section("cluster figures")
    for title, lines in _FIGURES:
        terminalreporter.write_line(title)
        for line in lines:
            terminalreporter.write_line(f"    {line}")


@pytest.fixture
def cluster_figures(request: pytest.FixtureRequest) -> list[str]:
    """Lines a test wants in the pytest summary (``cluster figures`` section), under its name."""
    lines: list[str] = []
    _FIGURES.append((request.node.nodeid, lines))
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    """Store each phase's report on the item as ``rep_setup`` / ``rep_call`` / ``rep_teardown``."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# ---------------------------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def cluster_logs(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The session's log directory: services, Airflow processes and task logs. Outside pytest's
    numbered temp dirs (other pytest sessions prune those); kept when a test failed."""
    logs = Path(tempfile.mkdtemp(prefix="loyalty-cluster-logs-"))
    yield logs
    if request.session.testsfailed:
        print(f"cluster logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(cluster_logs: Path) -> Iterator[Any]:
    """A private PostgreSQL on loopback: the metadata database."""
    from tests.cluster.services import postgres_server

    with postgres_server(cluster_logs / "services") as server:
        yield server


@pytest.fixture(scope="session")
def redis(cluster_logs: Path) -> Iterator[Any]:
    """A private Redis on loopback: the Celery broker."""
    from tests.cluster.services import redis_server

    with redis_server(cluster_logs / "services") as server:
        yield server


@pytest.fixture(scope="session")
def s3(cluster_logs: Path) -> Iterator[Any]:
    """moto's S3 server on loopback."""
    from airflow_provider_loyalty.testing.s3 import moto_s3_server

    with moto_s3_server(log_path=cluster_logs / "services" / "moto-s3.log") as server:
        yield server


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    """The loyalty API emulator, in this process (tests reconfigure it; the workers reach it by URL)."""
    from airflow_provider_loyalty.testing import LoyaltyEmulator
    from tests.cluster.expectations import cluster_emulator_config

    with LoyaltyEmulator(cluster_emulator_config()) as server:
        yield server


@pytest.fixture(scope="session")
def cluster(postgres: Any, redis: Any, s3: Any, emulator: Any, cluster_logs: Path) -> Iterator[Any]:
    """The whole Airflow deployment, ready: every component up, both triggerers heartbeating,
    both workers ready, the test DAGs parsed."""
    from airflow_provider_loyalty.testing.s3 import aws_connection_json
    from tests.cluster.celery_cluster import CeleryAirflowCluster
    from tests.cluster.expectations import DAG_IDS, dag_environment

    loyalty_connection = {
        "conn_type": "loyalty",
        "host": emulator.url,
        "password": emulator.token,
        # Generous retries: the rate-limit test makes the API answer 429 on purpose.
        "extra": {"timeout": 30, "max_retries": 12, "retry_backoff": 0.2, "max_retry_wait": 5},
    }
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(loyalty_connection),
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(s3.url),
        "AWS_DEFAULT_REGION": "us-east-1",
        **dag_environment(),
    }
    home = cluster_logs / "airflow-home"
    home.mkdir()
    deployment = CeleryAirflowCluster(
        home=home, dags_folder=DAGS, env=env, database_url=postgres.url, broker_url=redis.url
    )
    started = time.monotonic()
    try:
        deployment.migrate()
        migrated = time.monotonic()
        for component in deployment.components:
            deployment.start_component(component.name)
        deployment.wait_until_ready()
        for dag_id in DAG_IDS:
            deployment.wait_for_dag(dag_id, timeout=120)
    except BaseException:
        print(deployment.dump_logs(tail_bytes=4000))
        deployment.stop()
        raise
    startup = [
        f"PostgreSQL {postgres.version} on :{postgres.port}, Redis on :{redis.port}, moto S3 at {s3.url}, "
        f"emulator at {emulator.url}",
        f"airflow db migrate on PostgreSQL: {migrated - started:.1f} s; 7 processes "
        f"({', '.join(c.name for c in deployment.components)}) ready after {time.monotonic() - migrated:.1f} s",
        f"logs: {cluster_logs}",
    ]
    _FIGURES.append(("cluster startup", startup))
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the tails of every process and task log when a cluster test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "cluster" in request.fixturenames:
        deployment = request.getfixturevalue("cluster")
        print(deployment.dump_logs(tail_bytes=3000))


@pytest.fixture
def s3_client(s3: Any) -> Any:
    """A boto3 client of the loopback S3 server."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3.url, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


@pytest.fixture
def fresh_bucket(s3_client: Any, request: pytest.FixtureRequest) -> str:
    """A new bucket for one test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3_client.create_bucket(Bucket=name)
    return name
