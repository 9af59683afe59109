"""The pytest fixtures users get with the package: the emulator, a loopback S3, a metadata DB.

The metadata DB and the missing-moto message are checked as a user meets them: a test file of their
own in a fresh directory, run by pytest in a subprocess, with the fixtures from the installed plugin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from airflow_provider_loyalty.testing import LoyaltyEmulator
from airflow_provider_loyalty.testing.s3 import LoopbackS3


def test_plugin_fixtures(loyalty_connection: LoyaltyEmulator) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_LOYALTY_DEFAULT"])
    assert conn == {
        "conn_type": "loyalty",
        "host": loyalty_connection.url,
        "password": loyalty_connection.token,
        "extra": {"content_type": "json"},
    }
    assert requests.get(conn["host"] + "/_emulator/health", timeout=5).status_code == 200


def test_s3_bucket_is_new_and_aws_default_writes_there(loyalty_s3: LoopbackS3, loyalty_s3_bucket: str) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    connection = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    assert connection["extra"]["endpoint_url"] == loyalty_s3.url
    client = loyalty_s3.client()
    assert client.list_objects_v2(Bucket=loyalty_s3_bucket).get("KeyCount") == 0
    assert loyalty_s3_bucket.startswith("test-s3-bucket-is-new")

    S3Hook(aws_conn_id="aws_default").load_string("written by S3Hook", "probe.txt", bucket_name=loyalty_s3_bucket)

    assert client.get_object(Bucket=loyalty_s3_bucket, Key="probe.txt")["Body"].read() == b"written by S3Hook"


def _run_users_pytest(project: Path, *, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """pytest in ``project`` as a user runs it there: the plugin from the installed package, nothing else."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "PYTEST_"))}
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


_USERS_DAG = """
import pendulum
from airflow.sdk import DAG, task

with DAG("users_dag", schedule=None, start_date=pendulum.datetime(2023, 9, 1, tz="UTC")):

    @task
    def count() -> dict:
        return {"rows": 3}

    count()
"""

_USERS_TESTS = """
import os
import sqlite3

import pytest

ORIGINAL_HOME = os.environ["AIRFLOW_HOME"]


def test_dag_test_runs_on_the_migrated_db(loyalty_airflow_db):
    from airflow import settings

    assert loyalty_airflow_db.home != ORIGINAL_HOME
    assert os.environ["AIRFLOW_HOME"] == str(loyalty_airflow_db.home)
    assert settings.SQL_ALCHEMY_CONN == loyalty_airflow_db.database_url
    with sqlite3.connect(loyalty_airflow_db.home / "airflow.db") as db:
        assert db.execute("SELECT count(*) FROM task_instance").fetchone() == (0,)

    run = loyalty_airflow_db.get_dag("users_dag").test()

    assert run.state == "success"
    assert run.get_task_instance("count").xcom_pull(task_ids="count") == {"rows": 3}
    with pytest.raises(LookupError, match="no DAG 'nope' in the DAGs folder .*dags .DAGs found: users_dag."):
        loyalty_airflow_db.get_dag("nope")


def test_everything_is_restored_afterwards():
    from airflow import settings

    assert os.environ["AIRFLOW_HOME"] == ORIGINAL_HOME
    assert "AIRFLOW__CORE__DAGS_FOLDER" not in os.environ
    assert settings.SQL_ALCHEMY_CONN == f"sqlite:///{ORIGINAL_HOME}/airflow.db"
"""


@pytest.mark.timeout(900)  # a migration and a whole dag.test() in a new process: slow on a busy machine
def test_dag_test_works_in_a_fresh_project_with_no_setup(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "dags").mkdir(parents=True)
    (project / "dags" / "users_dag.py").write_text(textwrap.dedent(_USERS_DAG), encoding="utf-8")
    (project / "tests").mkdir()
    (project / "tests" / "test_users_dag.py").write_text(textwrap.dedent(_USERS_TESTS), encoding="utf-8")
    never_migrated = tmp_path / "airflow-home"  # what a newcomer has: `no such table: task_instance`
    never_migrated.mkdir()

    result = _run_users_pytest(project, extra_env={"AIRFLOW_HOME": str(never_migrated)})

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"\b2 passed\b", result.stdout), output[-3000:]


def test_missing_moto_fails_the_fixture_saying_what_to_install(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "moto").mkdir(parents=True)  # shadows the installed moto, as if it were missing
    (project / "moto" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'moto'\")\n")
    (project / "test_users_s3.py").write_text("def test_export(loyalty_s3_bucket):\n    pass\n")

    result = _run_users_pytest(project, extra_env={"PYTHONPATH": str(project)})

    assert result.returncode == 1, result.stdout[-3000:]
    assert re.search(r"\b1 error\b", result.stdout), result.stdout[-3000:]
    assert "loyalty_s3: moto's S3 server is not installed here" in result.stdout
    assert "pip install 'airflow-provider-loyalty[testing]'" in result.stdout
    assert "Traceback" not in result.stdout


def test_a_dag_file_that_fails_to_import_is_named_with_the_right_advice(tmp_path: Path) -> None:
    """The folder was right and the import error listed, yet the advice said to re-point the
    folder fixture: the fix is in the DAG file."""
    from airflow_provider_loyalty.testing import AirflowTestDb

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "broken.py").write_text("from airflow.sdk import DAG\nraise RuntimeError('typo in my DAG')\n")
    with pytest.raises(LookupError) as missing:
        AirflowTestDb(home=tmp_path, database_url="sqlite://", dags_folder=dags).get_dag("broken")
    message = str(missing.value)
    assert "typo in my DAG" in message and "broken.py" in message
    assert "Fix the import errors" in message and "Point the loyalty_dags_folder" not in message
    with pytest.raises(LookupError, match="Point the loyalty_dags_folder fixture"):
        AirflowTestDb(home=tmp_path, database_url="sqlite://", dags_folder=tmp_path / "empty").get_dag("x")
