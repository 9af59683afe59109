"""One location, one writer (export/lease.py, and the staged switch of export/seal.py): concurrent and
repeated exports never corrupt or lose a complete export. Local directories and moto's S3 server,
against the emulator."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pendulum
import pytest

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyFinalError, LoyaltyLocationBusyError
from airflow_provider_loyalty.export.layout import CHECKPOINT_NAME, LEASE_NAME, MANIFEST_NAME
from airflow_provider_loyalty.export.spec import period_of
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from airflow_provider_loyalty.verify import verify_manifest
from tests.support.helpers import point_connection_at, wait_for
from tests.support.operator_driver import context_for, task_instance

SEPTEMBER = ("2023-09-01T00:00:00Z", "2023-10-01T00:00:00Z")
OCTOBER = ("2023-10-01T00:00:00Z", "2023-11-01T00:00:00Z")
PREFIX = "shared/location"


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=4000, batch_size=1000, task_duration=0.05, period_end="2023-10-31T23:59:59Z")


@pytest.fixture
def emulator(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator)
    return loyalty_emulator


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Operator arguments for one shared location, local or on the loopback S3 server."""
    if request.param == "local":
        return {"output_path": str(tmp_path / "location")}
    bucket = request.getfixturevalue("s3_bucket")
    return {"s3_bucket": bucket, "s3_key_prefix": PREFIX}


def make_operator(target: dict[str, Any], **kwargs: Any) -> Any:
    params = {
        "task_id": "export",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "poll_interval": 0.05,
        "deferrable": False,
        **target,
        **kwargs,
    }
    cls = LoyaltyTransactionsToS3Operator if "s3_bucket" in target else LoyaltyExportOperator
    return cls(**params)


def stored(
    target: dict[str, Any], request: pytest.FixtureRequest | None = None, s3_client: Any = None
) -> dict[str, bytes]:
    """Every object at the location, by name, with its bytes (a local file renamed or removed between
    the listing and its read, as a write's temporary file is, is not there)."""
    if "output_path" in target:
        root = Path(target["output_path"])
        files = {str(p.relative_to(root)): _read_if_there(p) for p in root.rglob("*") if p.is_file()}
        return {name: data for name, data in files.items() if data is not None}
    listing = s3_client.list_objects_v2(Bucket=target["s3_bucket"], Prefix=PREFIX + "/")
    return {
        item["Key"][len(PREFIX) + 1 :]: s3_client.get_object(Bucket=target["s3_bucket"], Key=item["Key"])["Body"].read()
        for item in listing.get("Contents", [])
    }


def _read_if_there(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def manifest_location(target: dict[str, Any]) -> str:
    if "output_path" in target:
        return f"{target['output_path']}/{MANIFEST_NAME}"
    return f"s3://{target['s3_bucket']}/{PREFIX}/{MANIFEST_NAME}"


def test_two_periods_at_one_location_at_once_one_wins_the_other_fails_fast(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    emulator.config.task_duration = 4.0  # the first export holds the location long enough on a busy machine
    outcome: dict[str, Any] = {}

    def september() -> None:
        try:
            outcome["manifest"] = make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="sep")))
        except BaseException as error:
            outcome["error"] = error

    writer = threading.Thread(target=september)
    writer.start()
    wait_for(lambda: LEASE_NAME in stored(target, s3_client=s3_client), what="the first export to take the location")
    with pytest.raises(LoyaltyLocationBusyError) as busy:
        make_operator(target).execute(context_for(*OCTOBER, ti=task_instance(run_id="oct")))
    assert "tests/sep/export" in str(busy.value) and busy.value.location in str(busy.value)
    writer.join(120)
    assert "error" not in outcome, outcome.get("error")
    report = verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None)
    assert report.intact, report.to_text()
    assert json.loads(stored(target, s3_client=s3_client)[MANIFEST_NAME])["date_to"] == "2023-09-30T23:59:59Z"


def test_a_re_run_killed_halfway_leaves_the_previous_export_byte_identical(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    make_operator(target).execute(context_for(*SEPTEMBER))
    before = stored(target, s3_client=s3_client)
    emulator.config.task_duration = 1.0
    emulator.config.batch_size = 700
    kwargs = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "poll_interval": 0.05, **target}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.export_process", json.dumps(kwargs)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: any(name.startswith("_staging/part-00001") for name in stored(target, s3_client=s3_client)),
            timeout=240,  # the worker process imports Airflow first: slow on a busy machine
            what="the re-run to stage two parts",
        )
    except AssertionError:
        worker.kill()
        raise AssertionError(worker.communicate(timeout=10)[1].decode()[-3000:]) from None
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    after = stored(target, s3_client=s3_client)
    assert {name: after[name] for name in before} == before  # old manifest and every part it lists
    report = verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None)
    assert report.intact, report.to_text()


def test_two_runs_of_the_same_period_at_once_end_with_the_same_true_manifest(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    emulator.config.task_duration = 0.5
    results: dict[str, Any] = {}

    def run(run_id: str) -> None:
        try:
            results[run_id] = make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id=run_id)))
        except BaseException as error:
            results[run_id] = error

    runs = [threading.Thread(target=run, args=(name,)) for name in ("manual", "scheduled")]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(180)
    assert all(isinstance(value, dict) for value in results.values()), results
    assert results["manual"]["parts"] == results["scheduled"]["parts"]
    final = json.loads(stored(target, s3_client=s3_client)[MANIFEST_NAME])
    assert final["parts"] == results["manual"]["parts"]
    assert verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None).intact


def test_replace_only_replaces_an_export_of_the_same_period(emulator: LoyaltyEmulator, target: dict[str, Any], request):
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    make_operator(target).execute(context_for(*SEPTEMBER))
    before = stored(target, s3_client=s3_client)
    with pytest.raises(LoyaltyFinalError, match="another period") as refused:
        make_operator(target, replace=True).execute(context_for(*OCTOBER))
    assert "2023-09-01" in str(refused.value) and "2023-10-01" in str(refused.value)
    assert stored(target, s3_client=s3_client) == before


@pytest.mark.parametrize(
    ("released", "max_tries", "adopted"),
    [
        (False, None, True),
        (True, 3, True),
        (True, 4, False),
        (False, 4, False),
        (True, None, False),
    ],
    ids=[
        "died-before-releasing",
        "retry-after-a-clean-finish",
        "re-run-after-a-clear",
        "re-run-after-a-clear-of-a-try-that-died-holding-the-lease",
        "context-without-max-tries",
    ],
)
def test_a_retry_adopts_the_export_its_earlier_try_finished_before_dying(
    emulator: LoyaltyEmulator,
    target: dict[str, Any],
    request: pytest.FixtureRequest,
    released: bool,
    max_tries: int | None,
    adopted: bool,
):
    """Try 1 writes the manifest and is killed before Airflow hears of its success: before it
    released the location, or after (the cluster backfill's worker kill landed in the XCom push).
    Try 2, its retry, must take that manifest with replace=True too, not export the period again.
    A re-run after the task instance was cleared (Airflow set max_tries to 1 + retries, so try 2
    begins a new run of the task) replaces the export as asked; so does a try whose context does
    not say which run it belongs to."""
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    first = make_operator(target, replace=True, retries=3).execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=1, max_tries=3))
    )
    assert first["written_by_try"] == 1
    created = emulator.stats()["export_tasks_created"]
    if not released:  # the lease try 1 held when it died: renewed just before it sealed
        leave_try_1s_lease(target, s3_client)
    before = stored(target, s3_client=s3_client)

    second = make_operator(target, replace=True, retries=3).execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=2, max_tries=max_tries))
    )

    if not adopted:
        assert emulator.stats()["export_tasks_created"] > created  # replaced, as replace=True asks
        assert second["written_by_try"] == 2 and second["completed_at"] > first["completed_at"]
    else:
        assert emulator.stats()["export_tasks_created"] == created  # nothing exported twice
        assert second == first
        after = stored(target, s3_client=s3_client)
        assert {k: v for k, v in after.items() if k != LEASE_NAME} == {
            k: v for k, v in before.items() if k != LEASE_NAME
        }  # the finished export untouched
        assert LEASE_NAME not in after  # and the location released
    report = verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None)
    assert report.intact, report.problems


def test_a_retry_verifies_the_export_it_returns_and_says_how_to_export_anew(emulator: LoyaltyEmulator, tmp_path: Path):
    """A retry returns its earlier try's finished export (replace=True too) and verify=True checks
    it: a part changed since fails the retry, saying that a clear exports the period anew."""
    target = {"output_path": str(tmp_path / "location")}
    make_operator(target, retries=2).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1, max_tries=2)))
    created = emulator.stats()["export_tasks_created"]
    with open(tmp_path / "location" / "part-00000.csv", "ab") as part:
        part.write(b"tampered\r\n")
    with pytest.raises(LoyaltyError, match=r"an earlier try of this task finished.*clear the task"):
        make_operator(target, retries=2, verify=True).execute(
            context_for(*SEPTEMBER, ti=task_instance(try_number=2, max_tries=2))
        )
    assert emulator.stats()["export_tasks_created"] == created


@pytest.mark.parametrize(("max_tries", "adopted"), [(1, True), (2, False)], ids=["retry", "re-run-after-a-clear"])
def test_a_seal_that_died_in_its_cleanup_is_finished_then_returned_or_replaced(
    emulator: LoyaltyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_tries: int, adopted: bool
):
    """Try 1 wrote its manifest and failed cleaning up (its checkpoint says ``cleanup``). Try 2
    finishes that cleanup; a retry then returns the export, but a re-run after a clear (Airflow set
    max_tries to 1 + retries) replaced nothing: it returned try 1's export as its own."""
    from airflow_provider_loyalty.export.seal import Sealer

    target = {"output_path": str(tmp_path / "location")}
    with monkeypatch.context() as patched:
        patched.setattr(Sealer, "_clean_up", lambda sealer, progress: (_ for _ in ()).throw(OSError("disk hiccup")))
        with pytest.raises(OSError):
            make_operator(target, retries=1).execute(context_for(*SEPTEMBER, ti=task_instance(max_tries=1)))
    assert json.loads(stored(target)[CHECKPOINT_NAME])["phase"] == "cleanup"
    created = emulator.stats()["export_tasks_created"]

    second = make_operator(target, retries=1).execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=2, max_tries=max_tries))
    )

    assert (second["written_by_try"], emulator.stats()["export_tasks_created"] == created) == (
        (1, True) if adopted else (2, False)
    )
    assert sorted(name for name in stored(target) if name.startswith("_")) == [MANIFEST_NAME]
    assert verify_manifest(manifest_location(target)).intact


def test_another_run_resuming_a_checkpoint_does_not_take_its_failed_task_for_its_own(
    emulator: LoyaltyEmulator, tmp_path: Path
):
    """Run A's try 1 created an export task and was stopped; the API then failed that task. Run B's
    try 1, resuming A's checkpoint, failed the task as if it had created it (same try number);
    it must create the batch again, as for any task another try created."""
    target = {"output_path": str(tmp_path / "location")}
    emulator.set_faults([FaultRule(endpoint="export", kind="task_never_finishes")])
    run_a = make_operator(target, retries=0)
    failures: list[BaseException] = []

    def export_a() -> None:
        try:
            run_a.execute(context_for(*SEPTEMBER, ti=task_instance(run_id="a", max_tries=0)))
        except BaseException as error:  # stopped by on_kill, as intended
            failures.append(error)

    worker = threading.Thread(target=export_a)
    worker.start()
    wait_for(lambda: json.loads(stored(target).get(CHECKPOINT_NAME, b"{}") or b"{}").get("pending"), what="A's task")
    run_a.on_kill()
    worker.join(30)
    assert failures and not worker.is_alive()
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", count=1)])

    manifest = make_operator(target, retries=0).execute(
        context_for(*SEPTEMBER, ti=task_instance(run_id="b", max_tries=0))
    )

    assert verify_manifest(manifest_location(target)).intact and manifest["total_rows"] > 0


def test_a_retry_asking_for_archives_does_not_return_an_export_without_them(emulator: LoyaltyEmulator, tmp_path):
    """The DAG gained keep_zip=True between tries: the earlier try's export has no archives, so it is
    not the export this try asks for (as its checkpoint would not be)."""
    target = {"output_path": str(tmp_path / "location")}
    make_operator(target, retries=2).execute(context_for(*SEPTEMBER, ti=task_instance(max_tries=2)))
    manifest = make_operator(target, retries=2, keep_zip=True).execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=2, max_tries=2))
    )
    assert manifest["written_by_try"] == 2 and all("archive_key" in part for part in manifest["parts"])


def test_an_export_adopted_from_another_run_that_does_not_verify_is_not_called_this_tasks(
    emulator: LoyaltyEmulator, tmp_path: Path
):
    """Run A waited for run B's lease, took B's finished export, and verify=True found a part changed:
    the error said "an earlier try of this task finished" it; that was run B."""
    target = {"output_path": str(tmp_path / "location")}
    waiting = make_operator(target, verify=True)
    waiting.on_manifest = lambda context, manifest: (tmp_path / "location" / "part-00000.csv").open("ab").write(b"x")
    failures: list[BaseException] = []

    def export_a() -> None:
        try:
            waiting.execute(context_for(*SEPTEMBER, ti=task_instance(run_id="a")))
        except BaseException as error:  # the failure is what is checked
            failures.append(error)

    location = tmp_path / "location"
    location.mkdir()
    make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="b")))
    json_manifest = json.loads((location / MANIFEST_NAME).read_text())
    (location / MANIFEST_NAME).unlink()
    write_document(
        target,
        LEASE_NAME,
        {
            "writer_id": "b",
            "task": "tests/b/export/-1",
            "try_number": 1,
            "host": "worker:1",
            **period_of(json_manifest),
            "expires_at": time.time() + 3600,
        },
        None,
    )
    worker = threading.Thread(target=export_a)
    worker.start()
    wait_for(lambda: waiting._loop is not None and waiting._loop.lease.waited_since is not None, what="A waiting")
    json_manifest["completed_at"] = pendulum.now("UTC").add(seconds=1).to_iso8601_string()
    (location / MANIFEST_NAME).write_text(json.dumps(json_manifest))
    (location / LEASE_NAME).unlink()  # B released the location
    worker.join(60)
    assert len(failures) == 1 and "does not verify" in str(failures[0]), failures
    assert "earlier try of this task" not in str(failures[0])


def test_a_try_whose_location_was_taken_over_stops_before_writing_where_the_export_stands(
    emulator: LoyaltyEmulator, tmp_path: Path
):
    """Airflow gave up on try 1 (a missed heartbeat) while it still ran, and try 2 took the location
    over. Try 1 renews its lease only every 200 s: until then it went on writing checkpoints over
    try 2's. Now it checks the lease before each checkpoint and before its seal, and stops."""
    target = {"output_path": str(tmp_path / "location")}
    first = make_operator(target, retries=2).export_loop(context_for(*SEPTEMBER, ti=task_instance(max_tries=2)))
    second = make_operator(target, retries=2).export_loop(
        context_for(*SEPTEMBER, ti=task_instance(try_number=2, max_tries=2))
    )
    try:
        started = first.begin()
        resumed = second.begin()  # the same task instance: takes the location over at once
        before = stored(target)
        with pytest.raises(LoyaltyLocationBusyError, match="stops rather than write over it"):
            first.run(started)
        assert stored(target) == before  # not a byte of bookkeeping from try 1
        manifest = second.run(resumed)
    finally:
        first.close()
        second.close()
    assert manifest["written_by_try"] == 2 and verify_manifest(manifest_location(target)).intact


@pytest.mark.parametrize("stalls_in", ["seal", "part upload"])
def test_a_writer_that_stalled_past_its_lease_stops_at_its_next_write(
    emulator: LoyaltyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stalls_in: str
):
    """Writer A (September) stalls past its lease: in its seal, after the last check before it, or
    in a part upload. Writer B (October, another run) takes the expired lease over and finishes its
    export. A resumes: it must write nothing more (no manifest, no record, no cleanup over B's), as
    every write now checks the lease first (and a part upload again after it). Before, A's seal
    wrote its manifest over B's and deleted B's last part."""
    from airflow_provider_loyalty.export import lease as lease_module
    from airflow_provider_loyalty.export.seal import Sealer
    from airflow_provider_loyalty.export.sinks import ObjectStorageSink

    monkeypatch.setattr(lease_module.LocationLease.__init__, "__kwdefaults__", {"seconds": 0.3, "stop": None})
    target = {"output_path": str(tmp_path / "location")}
    other: list[dict[str, Any]] = []

    def another_export_takes_over() -> None:
        if not other:  # A's first stall only: B's own export runs straight through
            other.append({})
            time.sleep(0.5)  # A's lease runs out
            other[0] = make_operator(target).execute(context_for(*OCTOBER, ti=task_instance(run_id="october")))

    if stalls_in == "seal":
        original_seal = Sealer.seal

        def stalling_seal(self: Sealer, progress: Any) -> dict[str, Any]:
            another_export_takes_over()
            return original_seal(self, progress)

        monkeypatch.setattr(Sealer, "seal", stalling_seal)
    else:
        original_put = ObjectStorageSink.put_file

        def stalling_put(self: ObjectStorageSink, name: str, local_path: str, sha256: str | None = None) -> None:
            if name == "part-00001.csv":
                another_export_takes_over()
            original_put(self, name, local_path, sha256)

        monkeypatch.setattr(ObjectStorageSink, "put_file", stalling_put)

    with pytest.raises(LoyaltyLocationBusyError):
        make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="september")))
    manifest = json.loads((tmp_path / "location" / MANIFEST_NAME).read_text())
    assert (manifest["date_from"], manifest["total_rows"]) == (other[0]["date_from"], other[0]["total_rows"])
    assert manifest["date_from"].startswith("2023-10-01")
    report = verify_manifest(manifest_location(target))
    if stalls_in == "seal":
        assert report.intact, report.to_text()
    else:  # a write A had begun before B took over lands late: found, never passed off as B's
        assert not report.intact and "part-00001.csv" in report.to_text()
    assert not (tmp_path / "location" / "_parts").exists()  # A recorded nothing after losing the lease


def test_a_seal_longer_than_the_lease_keeps_it(
    emulator: LoyaltyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A re-run's seal moves every staged part into place; with no batch left, nothing renewed the
    lease, and a seal outlasting it (thousands of parts, slow copies) let another export take the
    location over in its middle: the re-run failed with its new manifest in place, the other with
    a final error. Now each of the seal's writes renews the lease once a third of it has passed."""
    from airflow_provider_loyalty.export import lease as lease_module
    from airflow_provider_loyalty.export.sinks import ObjectStorageSink

    target = {"output_path": str(tmp_path / "location")}
    make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="first")))
    monkeypatch.setattr(lease_module.LocationLease.__init__, "__kwdefaults__", {"seconds": 0.6, "stop": None})
    original_move = ObjectStorageSink.move
    moves: list[str] = []
    other: dict[str, Any] = {}

    def slow_move(self: ObjectStorageSink, source: str, target_name: str) -> None:
        moves.append(target_name)
        time.sleep(0.4)  # a server-side copy of a large part
        if len(moves) == 2:  # the lease of 0.6 s has run out by now unless the seal renewed it
            try:
                make_operator(target).execute(context_for(*OCTOBER, ti=task_instance(run_id="october")))
            except BaseException as error:
                other["error"] = error
        original_move(self, source, target_name)

    monkeypatch.setattr(ObjectStorageSink, "move", slow_move)
    rerun = make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="rerun")))
    assert len(moves) >= 2
    assert isinstance(other.get("error"), LoyaltyLocationBusyError), other
    assert "tests/rerun/export" in str(other["error"])  # the other export was told who holds the location
    manifest = json.loads((tmp_path / "location" / MANIFEST_NAME).read_text())
    assert manifest["date_from"].startswith("2023-09-01") and manifest["total_rows"] == rerun["total_rows"]
    report = verify_manifest(manifest_location(target))
    assert report.intact, report.to_text()


def test_a_finished_export_in_another_output_format_is_not_adopted(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    """Try 1 (csv) finished and died holding the location; try 2 asks for csv.gz: it must get csv.gz."""
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    make_operator(target, replace=True).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))
    leave_try_1s_lease(target, s3_client)

    second = make_operator(target, replace=True, output_format="csv.gz").execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=2))
    )

    assert second["output_format"] == "csv.gz"
    final = json.loads(stored(target, s3_client=s3_client)[MANIFEST_NAME])
    assert final["output_format"] == "csv.gz" and all(part["key"].endswith(".csv.gz") for part in final["parts"])
    report = verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None)
    assert report.intact, report.problems


def test_a_finished_export_from_another_from_id_is_not_adopted(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    """Try 1 exported the period from a cursor (a part of it) and died holding the location; try 2
    asks for the whole period: it must get the whole period, not the part (it took the part, and
    loyalty-verify called it INTACT)."""
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    ids = emulator.expected_ids(SEPTEMBER[0], "2023-09-30T23:59:59Z")
    partial = make_operator(target, replace=True, from_id=ids[999]).execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=1))
    )
    assert partial["total_rows"] == len(ids) - 1000 and partial["from_id"] == ids[999]
    leave_try_1s_lease(target, s3_client)

    whole = make_operator(target, replace=True).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=2)))

    assert (whole["total_rows"], whole["from_id"]) == (len(ids), None)
    report = verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None)
    assert report.intact and report.rows == len(ids), report.problems


class _Killed(BaseException):
    """A worker killed in the middle of a call (no handler of ours catches a BaseException)."""


@pytest.mark.parametrize("kill_at_move", [1, 2])
def test_a_rerun_killed_while_switching_is_finished_before_anything_clears_its_staging(
    emulator: LoyaltyEmulator,
    target: dict[str, Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    kill_at_move: int,
):
    """Run 2 (a re-run) dies copying its staged parts into place: its switch-over manifest lists
    ``_staging/``. Run 3 (resume=False, then failing at the API) must not delete what that manifest
    lists: it finishes the switch first, so the location holds a true manifest all along."""
    from airflow_provider_loyalty.export.s3_sink import S3PartSink
    from airflow_provider_loyalty.export.sinks import ObjectStorageSink
    from airflow_provider_loyalty.testing import FaultRule

    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    emulator.config.batch_size = 40  # several parts, so the kill falls between two copies
    make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))
    sink_class = S3PartSink if s3_client else ObjectStorageSink
    real_move = sink_class.move
    moves = {"count": 0}

    def dying_move(self: Any, source: str, destination: str) -> None:
        moves["count"] += 1
        if moves["count"] == kill_at_move:
            raise _Killed
        real_move(self, source, destination)

    monkeypatch.setattr(sink_class, "move", dying_move)
    with pytest.raises(_Killed):
        make_operator(target, replace=True).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))
    monkeypatch.setattr(sink_class, "move", real_move)
    assert "_staging/" in stored(target, s3_client=s3_client)[MANIFEST_NAME].decode()
    write_document(target, LEASE_NAME, {"writer_id": "gone", "expires_at": 0}, s3_client)  # the dead writer's

    emulator.set_faults([FaultRule(endpoint="export", kind="api_error", params={"code": 1001, "text": "quota"})])
    with pytest.raises(LoyaltyError):
        make_operator(target, replace=True, resume=False).execute(
            context_for(*SEPTEMBER, ti=task_instance(try_number=1))
        )

    manifest = json.loads(stored(target, s3_client=s3_client)[MANIFEST_NAME])
    assert not any("_staging/" in part["key"] for part in manifest["parts"])
    report = verify_manifest(manifest_location(target), conn_id="aws_default" if s3_client else None)
    assert report.intact, report.problems


def test_loyalty_verify_finds_the_export_intact_at_every_step_of_a_re_runs_switch(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """A reader verifying while a re-run switches over (parts being moved out of ``_staging/``, then
    the old set's extra parts not yet removed) sees a true export, not a missing part or strays."""
    from airflow_provider_loyalty.export.s3_sink import S3PartSink
    from airflow_provider_loyalty.export.seal import Sealer
    from airflow_provider_loyalty.export.sinks import ObjectStorageSink

    s3 = "s3_bucket" in target
    conn_id = "aws_default" if s3 else None
    emulator.config.batch_size = 400  # run 1: 5 parts of September (about 2,000 transactions)
    first = make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))
    emulator.config.batch_size = 1000  # the re-run: 2 parts, so 3 of the old set go at the clean-up
    reports = []

    def verify_now(step: str) -> None:
        report = verify_manifest(manifest_location(target), conn_id=conn_id)
        reports.append((step, report.intact, [str(problem) for problem in report.problems], report.notes))

    sink_class = S3PartSink if s3 else ObjectStorageSink
    real_move, real_clean_up = sink_class.move, Sealer._clean_up

    def move_and_verify(self: Any, source: str, destination: str) -> None:
        verify_now(f"before moving {source}")
        real_move(self, source, destination)

    def verify_then_clean_up(self: Any, progress: Any) -> None:
        verify_now("before the clean-up")
        real_clean_up(self, progress)

    monkeypatch.setattr(sink_class, "move", move_and_verify)
    monkeypatch.setattr(Sealer, "_clean_up", verify_then_clean_up)
    make_operator(target, replace=True).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))

    final = verify_manifest(manifest_location(target), conn_id=conn_id)
    assert (len(first["parts"]), final.parts_checked) == (5, 2)
    assert [step for step, *_ in reports] == [
        "before moving _staging/part-00000.csv",
        "before moving _staging/part-00001.csv",
        "before the clean-up",
    ]
    assert all(intact for _, intact, _, _ in reports), [(step, problems) for step, _, problems, _ in reports]
    assert all(any("switch" in note for note in notes) for *_, notes in reports), reports
    assert final.intact and not any("switch" in note for note in final.notes), final.notes


def leave_try_1s_lease(target: dict[str, Any], s3_client: Any) -> None:
    """The lease try 1 held when it died: renewed just before it sealed the manifest now stored."""
    manifest = json.loads(stored(target, s3_client=s3_client)[MANIFEST_NAME])
    lease = {
        "writer_id": "try-1",
        "task": "tests/run/export/-1",
        "try_number": 1,
        "host": "worker-2:4242",
        **period_of(manifest),
        "acquired_at": manifest["started_at"],
        "expires_at": time.time() + 3600,
    }
    write_document(target, LEASE_NAME, lease, s3_client)


def write_document(target: dict[str, Any], name: str, document: dict[str, Any], s3_client: Any) -> None:
    payload = json.dumps(document).encode()
    if "output_path" in target:
        (Path(target["output_path"]) / name).write_bytes(payload)
    else:
        s3_client.put_object(Bucket=target["s3_bucket"], Key=f"{PREFIX}/{name}", Body=payload)


def test_a_stale_lease_of_a_crashed_writer_expires(emulator: LoyaltyEmulator, tmp_path):
    location = tmp_path / "location"
    location.mkdir()
    (location / LEASE_NAME).write_text(
        json.dumps({"writer_id": "gone", "task": "tests/other/export/-1", "loyalty_program_id": 1, "expires_at": 0})
    )
    manifest = make_operator({"output_path": str(location)}).execute(context_for(*SEPTEMBER, ti=task_instance()))
    assert manifest["total_rows"] > 0 and not (location / LEASE_NAME).exists()


def test_a_retry_with_replace_false_returns_its_earlier_trys_finished_export(
    emulator: LoyaltyEmulator, target: dict[str, Any]
):
    """With replace=False, a retry of the task instance whose earlier try wrote the manifest and
    released the location (then failed after it, or its worker was lost) returns that export instead
    of refusing its own output; another task instance's finished export is still refused."""
    first = make_operator(target, replace=False).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))
    created = emulator.stats()["export_tasks_created"]
    retried = make_operator(target, replace=False, verify=True).execute(
        context_for(*SEPTEMBER, ti=task_instance(try_number=2))
    )
    assert retried == first and retried["written_by"] == "tests/run/export/-1"
    assert emulator.stats()["export_tasks_created"] == created  # nothing exported twice
    with pytest.raises(LoyaltyFinalError, match="replace=True"):
        make_operator(target, replace=False).execute(
            context_for(*SEPTEMBER, ti=task_instance(run_id="another_run", try_number=1))
        )
    with pytest.raises(LoyaltyFinalError, match="replace=True"):  # outside Airflow nothing says whose it is
        make_operator(target, replace=False).execute(context_for(*SEPTEMBER))


def test_a_run_that_returns_a_finished_export_writes_nothing_a_later_rerun_could_resume(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    """A retry that returns its earlier try's finished export while given ``export_task_id`` (a
    sensor's hand-off) left a checkpoint beside that export, not staged; a later replace=True re-run
    resumed it and wrote its parts over the finished ones in place, so when it failed the location's
    manifest listed parts whose bytes had changed."""
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    september = {"date_from": "2023-09-01T00:00:00Z", "date_to": "2023-09-30T23:59:59Z"}
    handed_over = LoyaltyHook().create_transactions_export(
        loyalty_program_id=123, points_currency_eid="bonus_points", **september
    )
    first = make_operator(target, replace=False, export_task_id=handed_over, **september).execute(
        context_for(ti=task_instance(try_number=1))
    )
    before = stored(target, request, s3_client)
    again = make_operator(target, replace=False, export_task_id=handed_over, **september).execute(
        context_for(ti=task_instance(try_number=2))
    )
    assert again == first and stored(target, request, s3_client) == before  # nothing written
    emulator.config.batch_size = 700  # the re-run's batches differ from the finished export's parts
    with pytest.raises(LoyaltyFinalError, match="max_batches"):
        make_operator(target, replace=True, max_batches=1, **september).execute(
            context_for(ti=task_instance(run_id="rerun"))
        )
    report = verify_manifest(manifest_location(target))
    assert report.intact, report.to_text()


def test_replace_false_neither_resumes_nor_finishes_another_runs_staged_re_run(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest
):
    """A re-run (replace=True) that failed after staging parts left its checkpoint; an export of the
    period with replace=False resumed it and switched the location over to its own manifest."""
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    first = make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="r1")))
    with pytest.raises(LoyaltyFinalError, match="max_batches"):
        make_operator(target, max_batches=1).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="r2")))
    manifest_before = stored(target, request, s3_client)[MANIFEST_NAME]
    with pytest.raises(LoyaltyFinalError, match="replace=True"):
        make_operator(target, replace=False).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="r3")))
    assert stored(target, request, s3_client)[MANIFEST_NAME] == manifest_before
    assert json.loads(manifest_before)["completed_at"] == first["completed_at"]
    assert verify_manifest(manifest_location(target)).intact


@pytest.mark.parametrize("over_a_finished_export", [False, True], ids=["first-export", "re-run"])
def test_a_retry_that_changes_keep_zip_lists_only_archives_it_stored(
    emulator: LoyaltyEmulator, target: dict[str, Any], request: pytest.FixtureRequest, over_a_finished_export: bool
):
    """Try 1 (keep_zip=False) failed after landing a part; try 2 asked keep_zip=True and resumed: its
    manifest listed an archive never stored, and a re-run's switch failed moving it on every try."""
    s3_client = request.getfixturevalue("s3_client") if "s3_bucket" in target else None
    if over_a_finished_export:
        make_operator(target).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="earlier")))
    with pytest.raises(LoyaltyFinalError, match="max_batches"):
        make_operator(target, max_batches=1).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=1)))
    manifest = make_operator(target, keep_zip=True).execute(context_for(*SEPTEMBER, ti=task_instance(try_number=2)))
    objects = stored(target, request, s3_client)
    archives = [part["archive_key"].rsplit("/", 1)[1] for part in manifest["parts"]]
    assert archives and all(name in objects for name in archives), sorted(objects)
    report = verify_manifest(manifest_location(target))
    assert report.intact, report.to_text()
    assert manifest["total_rows"] == len(emulator.expected_ids("2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z"))


def test_staged_parts_a_manifest_lists_are_never_deleted_by_a_later_export(emulator: LoyaltyEmulator, tmp_path):
    """A re-run's switch that cannot be finished (its manifest lists staged parts, one of them gone)
    was given up, and the next export then cleared the whole staging area: the manifest listed
    three parts that were gone instead of one. A later export (which failed here) keeps them."""
    location = tmp_path / "location"
    manifest = make_operator({"output_path": str(location)}).execute(context_for(*SEPTEMBER))
    (location / "_staging").mkdir()
    for part in manifest["parts"]:
        name = part["key"].rsplit("/", 1)[1]
        (location / name).rename(location / "_staging" / name)
        part["key"] = part["key"].replace(f"/{name}", f"/_staging/{name}")
    (location / MANIFEST_NAME).write_text(json.dumps(manifest))
    gone, *kept = sorted((location / "_staging").iterdir())
    gone.unlink()
    with pytest.raises(LoyaltyFinalError, match="max_batches"):
        make_operator({"output_path": str(location)}, output_format="csv.gz", max_batches=1).execute(
            context_for(*SEPTEMBER, ti=task_instance(run_id="later"))
        )
    assert all(path.exists() for path in kept)


def test_torn_bookkeeping_documents_are_typed_errors_or_a_fresh_start(emulator: LoyaltyEmulator, tmp_path):
    """A half-written checkpoint is logged and the export starts afresh; a half-written manifest is
    replaced with replace=True and a clear error otherwise — never a raw JSONDecodeError."""
    location = tmp_path / "location"
    target = {"output_path": str(location)}
    make_operator(target).execute(context_for(*SEPTEMBER))
    (location / CHECKPOINT_NAME).write_bytes(b'{"format_version": 2, "spec": {"loyalty_pro')
    (location / MANIFEST_NAME).write_bytes(b'{"format_version": 1, "parts": [{"key": "par')
    with pytest.raises(LoyaltyError, match="unreadable") as refused:
        make_operator(target, replace=False).execute(context_for(*SEPTEMBER))
    assert "JSONDecodeError" not in type(refused.value).__name__
    manifest = make_operator(target, replace=True).execute(context_for(*SEPTEMBER))
    assert verify_manifest(str(location / MANIFEST_NAME)).intact
    assert hashlib.sha256((location / MANIFEST_NAME).read_bytes()).hexdigest()
    assert manifest["total_rows"] == len(emulator.expected_ids("2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z"))


def test_a_first_export_refuses_a_location_holding_part_names_no_export_wrote(emulator: LoyaltyEmulator, tmp_path):
    """A directory with no manifest and no checkpoint, holding the user's ``part-00007.csv`` and a
    ``part-00000.parquet`` of another tool: the export overwrote part-00000 names and its seal
    deleted every other part name it did not list. Refused before any request, files untouched."""
    from tests.support.helpers import requests_seen

    location = tmp_path / "busy"
    location.mkdir()
    theirs = {"notes.txt": "mine", "part-00000.parquet": "another tool", "part-00007.csv": "id\nmy data\n"}
    for name, text in theirs.items():
        (location / name).write_text(text)
    with pytest.raises(LoyaltyFinalError, match=r"2 file\(s\) named like export parts .*part-00000.parquet"):
        make_operator({"output_path": str(location)}).execute(context_for(*SEPTEMBER))
    assert {path.name: path.read_text() for path in location.iterdir() if not path.name.startswith("_")} == theirs
    assert requests_seen(emulator, "export") == 0


def test_a_wait_that_runs_out_says_what_to_do(emulator: LoyaltyEmulator, tmp_path: Path) -> None:
    """It said "waited 1 s for task ... lease valid until ...", no more: the other-period conflict
    says to delete the lease if its writer is gone; a writer killed while deferred holds its lease
    until its deadline (up to a day)."""
    target = {"output_path": str(tmp_path / "location")}
    (tmp_path / "location").mkdir()
    period = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "points_currency_iid": None}
    period.update({"date_from": "2023-09-01T00:00:00Z", "date_to": "2023-09-30T23:59:59Z"})
    lease = {"writer_id": "b", "task": "tests/b/export/-1", "try_number": 1, "host": "worker:1", **period}
    write_document(target, LEASE_NAME, {**lease, "expires_at": time.time() + 3600}, None)
    with pytest.raises(LoyaltyLocationBusyError) as busy:
        make_operator(target, batch_timeout=0.5).execute(context_for(*SEPTEMBER, ti=task_instance(run_id="a")))
    message = str(busy.value)
    assert "tests/b/export/-1" in message and "A retry waits again" in message
    assert f"delete file://{tmp_path / 'location' / LEASE_NAME}." in message
