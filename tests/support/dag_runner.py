"""Run ``dag.test()`` for a DAG file in a subprocess and report the run's and tasks' states.

Airflow 3 writes the DAG from its bundle (the DAGs folder) to the metadata DB before a test run,
so the file's directory becomes ``AIRFLOW__CORE__DAGS_FOLDER``. Running in a subprocess keeps each
run's Airflow state and logs apart and lets the test read everything Airflow printed.

As a module: ``python -m tests.support.dag_runner <dag_file> <dag_id> [<logical_date>]`` prints one
``LOYALTY_DAG_RESULT <json>`` line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MARKER = "LOYALTY_DAG_RESULT "


@dataclass
class DagRunOutcome:
    """What a ``dag.test()`` subprocess reported."""

    state: str
    tasks: dict[str, str]
    output: str


def run_dag_test(
    dag_file: Path, dag_id: str, env: dict[str, str], logical_date: str | None = None, timeout: float = 300
) -> DagRunOutcome:
    """Run ``dag.test()`` of ``dag_id`` from ``dag_file``; fail the test with Airflow's output if it breaks."""
    full_env = {
        **os.environ,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dag_file.parent),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **env,
    }
    command = [sys.executable, "-m", "tests.support.dag_runner", str(dag_file), dag_id]
    if logical_date:
        command.append(logical_date)
    done = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"dag.test() of {dag_id} failed (exit {done.returncode}):\n{output[-8000:]}")
    result = json.loads(lines[-1].removeprefix(MARKER))
    return DagRunOutcome(state=result["state"], tasks=result["tasks"], output=output)


def _main(argv: list[str]) -> int:
    dag_file, dag_id = Path(argv[0]), argv[1]
    spec = importlib.util.spec_from_file_location(f"loyalty_test_dag_{dag_file.stem}", dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG

    dags = [value for value in vars(module).values() if isinstance(value, DAG) and value.dag_id == dag_id]
    if not dags:
        raise SystemExit(f"no DAG {dag_id!r} in {dag_file}")
    kwargs: dict[str, Any] = {}
    if len(argv) > 2:
        import pendulum

        kwargs["logical_date"] = pendulum.parse(argv[2])
    run = dags[0].test(**kwargs)
    states: dict[str, str] = {}
    for ti in run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        states[key] = str(ti.state)
    print(MARKER + json.dumps({"state": str(run.state), "tasks": states}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
