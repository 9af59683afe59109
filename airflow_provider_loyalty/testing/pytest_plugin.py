"""Pytest fixtures for testing DAGs and code offline: the loyalty API emulator, a loopback S3, a metadata DB.

Loaded automatically once the package is installed (``pytest11`` entry point ``loyalty_emulator``);
with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p loyalty_emulator``.

The loyalty API:

* ``loyalty_emulator_config``: the :class:`EmulatorConfig` used by ``loyalty_emulator``; override
  this fixture to change the data, batch size, cursor mode...
* ``loyalty_emulator``: a started :class:`LoyaltyEmulator` on a free loopback port (function scope).
* ``loyalty_connection``: the same emulator, with ``AIRFLOW_CONN_LOYALTY_DEFAULT`` set to a JSON
  connection pointing at it (``content_type`` ``json``).

S3 (needs the ``testing`` extra: moto's server):

* ``loyalty_s3``: moto's S3 server on a free loopback port, one per session
  (:class:`~airflow_provider_loyalty.testing.s3.LoopbackS3`: ``url``, ``client()``).
* ``loyalty_s3_bucket``: the name of a new, empty bucket there, with ``AIRFLOW_CONN_AWS_DEFAULT``
  pointing ``aws_default`` at the server (function scope).

Airflow's metadata DB, for ``dag.test()``:

* ``loyalty_dags_folder``: the folder ``dag.test()`` reads DAGs from; override it. Default:
  ``AIRFLOW__CORE__DAGS_FOLDER`` if set, else ``<pytest rootdir>/dags``.
* ``loyalty_airflow_home``: a temporary ``AIRFLOW_HOME`` with a migrated SQLite DB, made once per
  session (``airflow db migrate``).
* ``loyalty_airflow_db``: this process pointed at that home and the DAGs folder for one test, and
  back afterwards (:class:`~airflow_provider_loyalty.testing.airflow_db.AirflowTestDb`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_loyalty.testing.airflow_db import AirflowTestDb, migrate_airflow_home, use_airflow_home
from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.s3 import (
    LoopbackS3,
    S3ServerUnavailable,
    aws_connection_json,
    moto_s3_server,
    require_moto_server,
    unique_bucket_name,
)
from airflow_provider_loyalty.testing.server import LoyaltyEmulator

__all__ = [
    "loyalty_airflow_db",
    "loyalty_airflow_home",
    "loyalty_connection",
    "loyalty_dags_folder",
    "loyalty_emulator",
    "loyalty_emulator_config",
    "loyalty_s3",
    "loyalty_s3_bucket",
]


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    """Return the configuration for :func:`loyalty_emulator` (fast tasks: ``task_duration=0.05``)."""
    return EmulatorConfig(task_duration=0.05)


@pytest.fixture
def loyalty_emulator(loyalty_emulator_config: EmulatorConfig) -> Iterator[LoyaltyEmulator]:
    """Yield a running emulator on ``127.0.0.1`` and a free port; stopped after the test.

    :param loyalty_emulator_config: the config fixture.
    """
    with LoyaltyEmulator(loyalty_emulator_config) as emulator:
        yield emulator


@pytest.fixture
def loyalty_connection(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    """Point the ``loyalty_default`` Airflow connection at :func:`loyalty_emulator`.

    :param loyalty_emulator: the emulator fixture.
    :param monkeypatch: pytest's monkeypatch (restores the environment afterwards).
    """
    connection = {
        "conn_type": "loyalty",
        "host": loyalty_emulator.url,
        "password": loyalty_emulator.token,
        "extra": {"content_type": "json"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    return loyalty_emulator


@pytest.fixture(scope="session")
def loyalty_s3() -> Iterator[LoopbackS3]:
    """Yield moto's S3 server on a free loopback port, shared by the session; stopped at its end.

    Fails the test with what to install when moto's server is missing (the ``testing`` extra).
    """
    try:
        require_moto_server()
    except S3ServerUnavailable as err:
        pytest.fail(f"loyalty_s3: {err}", pytrace=False)
    with moto_s3_server() as server:
        yield server


@pytest.fixture
def loyalty_s3_bucket(loyalty_s3: LoopbackS3, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """Create a new, empty bucket on :func:`loyalty_s3` and point ``aws_default`` at the server.

    Returns the bucket's name (the test's name and a random suffix). ``AIRFLOW_CONN_AWS_DEFAULT`` is
    set for the test's duration, so ``S3Hook`` and the S3 transfer operator write there.

    :param loyalty_s3: the S3 server fixture.
    :param monkeypatch: pytest's monkeypatch (restores the environment afterwards).
    :param request: pytest's request (the test's name).
    """
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_json(loyalty_s3.url))
    bucket = unique_bucket_name(request.node.name)
    loyalty_s3.client().create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def loyalty_dags_folder(request: pytest.FixtureRequest) -> Path:
    """Return the folder holding the DAG files under test; override this fixture to point elsewhere.

    Default: ``AIRFLOW__CORE__DAGS_FOLDER`` when set, else ``<pytest rootdir>/dags``.

    :param request: pytest's request (the session's rootdir).
    """
    configured = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    return Path(configured) if configured else Path(request.config.rootpath) / "dags"


@pytest.fixture(scope="session")
def loyalty_airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a temporary ``AIRFLOW_HOME`` with a migrated SQLite metadata DB (made once per session).

    :param tmp_path_factory: pytest's session temporary directories.
    """
    home = tmp_path_factory.mktemp("loyalty-airflow-home")
    migrate_airflow_home(home)
    return home


@pytest.fixture
def loyalty_airflow_db(loyalty_airflow_home: Path, loyalty_dags_folder: Path) -> Iterator[AirflowTestDb]:
    """Run this test against the session's migrated metadata DB and the DAGs folder, so ``dag.test()`` works.

    Sets ``AIRFLOW_HOME``, the DB URL, ``AIRFLOW__CORE__DAGS_FOLDER`` and ``LOAD_EXAMPLES=False`` and
    re-opens Airflow's DB engine; all of it is restored after the test.

    :param loyalty_airflow_home: the migrated home fixture.
    :param loyalty_dags_folder: the DAGs folder fixture.
    """
    with use_airflow_home(loyalty_airflow_home, loyalty_dags_folder) as airflow_db:
        yield airflow_db
