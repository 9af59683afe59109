"""README.md as a user reads it: every Python block runs here, on whichever Airflow this suite runs on.

``make test`` runs it on Airflow 3.3, ``make test-mid`` on 3.2, ``make test-min`` on the newest 3.1 and
``make test-lowest`` on the declared floors (Airflow 3.1.2), so an example that works on one
supported Airflow only fails somewhere. The connection examples of the bash blocks are checked too:
they are what users paste first.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pendulum
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
FENCED_BLOCK = re.compile(r"^```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^## (?P<title>.+)$", re.MULTILINE)
CONN_EXPORT = re.compile(r"export AIRFLOW_CONN_LOYALTY_DEFAULT='(?P<value>[^']*)'")

DAG_SECTION = "A daily export DAG"
FIXTURE_SECTION = "Test your own DAGs offline"


def readme_blocks(lang: str) -> list[tuple[str, str]]:
    """``(section heading, code)`` of every fenced block in ``lang``, in README order."""
    text = README.read_text(encoding="utf-8")
    headings = [(match.start(), match.group("title").strip()) for match in HEADING.finditer(text)]
    blocks = []
    for block in FENCED_BLOCK.finditer(text):
        if block.group("lang") != lang:
            continue
        section = next((title for start, title in reversed(headings) if start < block.start()), "")
        blocks.append((section, block.group("code")))
    return blocks


def python_block(section: str) -> str:
    """The one Python block under ``## section``."""
    (code,) = [code for title, code in readme_blocks("python") if title == section]
    return code


def test_every_python_block_is_run_by_a_test_here():
    """A new Python block needs a test in this module; a renamed section must be renamed here too."""
    assert [title for title, _ in readme_blocks("python")] == [DAG_SECTION, FIXTURE_SECTION]


def _round_trip(dag: Any) -> Any:
    """The DAG as the scheduler gets it: serialized and deserialized (the class moved in Airflow 3.2)."""
    from airflow.serialization import serialized_objects

    serializer = getattr(serialized_objects, "DagSerialization", None) or serialized_objects.SerializedDAG
    return serializer.from_dict(serializer.to_dict(dag))


def _dag_bag(folder: Path) -> Any:
    """The DAG processor's parse of ``folder`` (``DagBag`` moved to ``airflow.dag_processing`` in 3.2)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=str(folder))  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES (tests/conftest.py)


def test_daily_export_dag_parses_and_schedules_whole_days(tmp_path):
    from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

    (tmp_path / "readme_dag.py").write_text(python_block(DAG_SECTION), encoding="utf-8")
    bag = _dag_bag(tmp_path)
    assert bag.import_errors == {}
    dag = bag.dags["loyalty_daily"]
    (task,) = dag.tasks
    assert isinstance(task, LoyaltyTransactionsToS3Operator)
    assert task.deferrable is True
    assert task.s3_bucket == "compliance"

    # What the README promises: each run's data interval is one whole day, not a zero-length one.
    scheduled = _round_trip(dag)
    interval = scheduled.timetable.infer_manual_data_interval(run_after=pendulum.datetime(2026, 3, 2, 12, tz="UTC"))
    assert (interval.start, interval.end) == (
        pendulum.datetime(2026, 3, 1, tz="UTC"),
        pendulum.datetime(2026, 3, 2, tz="UTC"),
    )


def test_fixture_example_passes_as_a_users_own_test_module(tmp_path):
    """Run as users would: a test file of their own, the fixtures from the installed pytest plugin."""
    test_file = tmp_path / "test_readme_example.py"
    test_file.write_text(python_block(FIXTURE_SECTION), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert re.search(r"\b1 passed\b", result.stdout), result.stdout[-2000:]


def _conn_exports() -> list[str]:
    return [match.group("value") for _, code in readme_blocks("bash") for match in CONN_EXPORT.finditer(code)]


def test_readme_shows_the_json_and_the_uri_form():
    values = _conn_exports()
    assert len(values) == 2
    assert values[0].lstrip().startswith("{")
    assert values[1].startswith("loyalty://")


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("json", {"content_type": "json", "timeout": 60, "verify": True, "max_retries": 5}),
        ("uri", {"content_type": "xml", "max_retries": 5}),
    ],
)
def test_connection_examples_give_the_documented_settings(monkeypatch, form, expected):
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    json_value, uri_value = _conn_exports()
    value = json_value if form == "json" else uri_value
    if form == "json":
        json.loads(value)  # the README's JSON is valid JSON, line breaks included
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", value)
    settings = LoyaltyHook().settings
    assert settings.base_url == "https://example.com"
    assert settings.token == "<API token>"
    for name, wanted in expected.items():
        assert getattr(settings, name) == wanted, name
