"""An isolated Airflow for a user's own tests: a temporary home with a migrated SQLite metadata DB.

``dag.test()`` needs a metadata DB with Airflow's tables, and it runs only DAGs it finds in the
DAGs folder (Airflow 3 stores the DAG from there before the run). :func:`migrate_airflow_home`
prepares a home once (``airflow db migrate``, in a subprocess); :func:`use_airflow_home` points
this process at it — environment, DB engine and DAGs folder — and back again afterwards. The pytest
fixture ``loyalty_airflow_db`` combines both, once per session.

Imports Airflow only inside the functions, so importing the testing package stays light.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AirflowTestDb", "airflow_home_environment", "migrate_airflow_home", "use_airflow_home"]


@dataclass(frozen=True)
class AirflowTestDb:
    """The isolated Airflow a test runs against.

    :param home: the ``AIRFLOW_HOME`` (a temporary directory).
    :param database_url: the SQLite metadata DB, ``sqlite:///<home>/airflow.db``.
    :param dags_folder: where ``dag.test()`` and :meth:`get_dag` read DAGs from.
    """

    home: Path
    database_url: str
    dags_folder: Path

    def get_dag(self, dag_id: str) -> Any:
        """Parse the DAGs folder as Airflow does and return the DAG ``dag_id`` (call ``.test()`` on it).

        :param dag_id: the DAG's id.
        :raises LookupError: the folder has import errors or no such DAG (both are named).
        """
        try:  # Airflow >= 3.2
            from airflow.dag_processing.dagbag import DagBag
        except ImportError:  # Airflow 3.1
            from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

        bag = DagBag(dag_folder=str(self.dags_folder))
        if dag_id in bag.dags:
            return bag.dags[dag_id]
        problems = "".join(f"\n  {path}: {error}" for path, error in bag.import_errors.items())
        found = ", ".join(sorted(bag.dags)) or "none"
        advice = (
            f"\nFix the import errors above: the DAG {dag_id!r} may be in a file that failed to import."
            if problems
            else ". Point the loyalty_dags_folder fixture at the folder that holds your DAG files."
        )
        raise LookupError(
            f"no DAG {dag_id!r} in the DAGs folder {self.dags_folder} (DAGs found: {found})"
            + (f"; import errors:{problems}" if problems else "")
            + advice
        )


def airflow_home_environment(home: Path, dags_folder: Path | None = None) -> dict[str, str]:
    """The environment variables that make Airflow use ``home`` and its SQLite DB.

    :param home: the ``AIRFLOW_HOME``.
    :param dags_folder: the DAGs folder (default: ``<home>/dags``).
    """
    database = home / "airflow.db"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"sqlite+aiosqlite:///{database}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder if dags_folder is not None else home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def migrate_airflow_home(home: Path, timeout: float = 600.0) -> float:
    """Create Airflow's tables in ``<home>/airflow.db`` (``airflow db migrate`` in a subprocess).

    :param home: the ``AIRFLOW_HOME`` to prepare (created if missing).
    :param timeout: seconds the migration may take.
    :return: the seconds it took.
    :raises RuntimeError: the migration failed; carries the end of Airflow's output.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "dags").mkdir(exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env={**os.environ, **airflow_home_environment(home)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"airflow db migrate failed in {home} (exit {done.returncode}):\n{output}")
    return time.monotonic() - started


@contextmanager
def use_airflow_home(home: Path, dags_folder: Path | None = None) -> Iterator[AirflowTestDb]:
    """Point this process's Airflow at ``home`` (migrated first) and back to what it was on exit.

    Sets ``AIRFLOW_HOME``, the metadata DB URLs, the DAGs folder and ``LOAD_EXAMPLES=False`` in the
    environment (so subprocesses agree), then re-reads them and opens a new DB engine.

    :param home: a home prepared by :func:`migrate_airflow_home`.
    :param dags_folder: the DAGs folder (default: ``<home>/dags``).
    """
    from airflow import settings

    wanted = airflow_home_environment(home, dags_folder)
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        settings.configure_vars()
        settings.reconfigure_orm()
        yield AirflowTestDb(
            home=home,
            database_url=wanted["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
            dags_folder=Path(wanted["AIRFLOW__CORE__DAGS_FOLDER"]),
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings.configure_vars()
        settings.reconfigure_orm()
