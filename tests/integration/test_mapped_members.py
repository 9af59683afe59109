"""Member histories mapped over members, under ``dag.test()``: one file per member, never one for all."""

from __future__ import annotations

import json

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.support.dag_runner import REPO, run_dag_test

DAG_FILE = REPO / "tests" / "dags" / "loyalty_mapped_members.py"


def test_mapped_members_never_share_one_history_file(airflow_db, tmp_path) -> None:
    """``.partial(output_path="x.jsonl").expand(member_email=[...])``: every mapped task wrote that
    one file and succeeded, the last one's history left (probe of 2026-12-05: 3 of 4 histories
    gone). Now each refuses before any request; a directory, or a path per task, works. So do an
    ObjectStoragePath of one file (or of a directory not made yet: it drops the trailing "/") and
    expand_kwargs with the path in partial() or the same in each dict (data lost the same way)."""
    with LoyaltyEmulator(EmulatorConfig(member_history_sizes=[250, 3, 0, 42])) as emulator:
        connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
        env = {"AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection), "LOYALTY_TEST_OUTPUT": str(tmp_path)}
        outcome = run_dag_test(DAG_FILE, "loyalty_mapped_members", env)
        pages_served = [entry for entry in emulator.stats()["request_log"] if entry["endpoint"] == "account"]
    assert outcome.tasks == {
        "one_file[0]": "failed",
        "one_file[1]": "failed",
        "directory[0]": "success",
        "directory[1]": "success",
        "one_file_osp[0]": "failed",
        "one_file_osp[1]": "failed",
        "new_dir_osp[0]": "failed",
        "new_dir_osp[1]": "failed",
        "kwargs_partial[0]": "failed",
        "kwargs_partial[1]": "failed",
        "kwargs_same[0]": "failed",
        "kwargs_same[1]": "failed",
        "file_each[0]": "success",
        "file_each[1]": "success",
        "in_a_group.history[0]": "failed",
        "in_a_group.history[1]": "failed",
    }, outcome.output[-4000:]
    assert "output_path: " in outcome.output and "other mapped tasks of 'one_file' write it too" in outcome.output
    for refused in ("one", "group", "osp", "osp-dir", "kwargs", "same"):
        assert not (tmp_path / refused).exists(), refused
    assert len(pages_served) == 2 * (3 + 1)  # directory and file_each: 250 + 42 records in pages of 100
    for directory in ("directory", "each"):
        histories = sorted(len(path.read_text().splitlines()) for path in (tmp_path / directory).iterdir())
        assert histories == [42, 250], directory
