"""The export loop against the emulator: retries that recover, empty periods, on_kill, pipelining.

Each test would have failed on 2c35e55 (the first round's loop).
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from pathlib import Path

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyEmptyExportError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyVerificationError,
)
from airflow_provider_loyalty.export.layout import CHECKPOINT_NAME, MANIFEST_NAME
from airflow_provider_loyalty.export.loop import columns_digest
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.testing import EMPTY_EXPORT_STYLES, EmulatorConfig, FaultRule, LoyaltyEmulator
from tests.support.helpers import all_transaction_ids, csv_ids, point_connection_at, wait_for
from tests.support.operator_driver import (
    DeferralLog,
    context_for,
    local_export_operator,
    run_with_deferrals,
    stop_with_on_kill,
    task_instance,
)

N = 3000


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=N, batch_size=1000, task_duration=0.05)


@pytest.fixture
def emulator(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator, max_retries=0)
    return loyalty_emulator


def landed_ids(output: Path, manifest: dict) -> list[str]:
    return csv_ids([str(output / Path(part["key"]).name) for part in manifest["parts"]])


def tasks_from(emulator: LoyaltyEmulator, cursor: str | None) -> list[dict]:
    return [task for task in emulator.export_tasks() if task["from_id"] == cursor]


def checkpoint(output: Path) -> dict:
    return json.loads((output / CHECKPOINT_NAME).read_text())


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferrable"])
def test_a_file_name_that_begins_like_the_token_is_downloaded_by_its_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, deferrable: bool
) -> None:
    """A vendor-style token ``loyalty_live_…`` and file names ``Transactions_loyalty_123_…``: the
    trigger's event masked the run ``loyalty_`` in the name, so the deferrable export downloaded a
    name that does not exist, created each batch three times and failed; worker mode landed it."""
    config = EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.1, token="loyalty_live_9f8e7d6c5b4a")
    with LoyaltyEmulator(config) as emulator:
        point_connection_at(monkeypatch, emulator, max_retries=0)
        operator = local_export_operator(tmp_path, deferrable=deferrable)
        log = DeferralLog()
        manifest = run_with_deferrals(operator, context_for(), log) if deferrable else operator.execute(context_for())
        created = emulator.stats()["export_tasks_created"]
        expected = all_transaction_ids(emulator)
    assert landed_ids(tmp_path, manifest) == expected and len(expected) == 2500
    assert created == 3  # one export task per batch: none created again
    assert (log.deferrals > 0) is deferrable


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferrable"])
def test_a_task_done_before_batch_timeout_lands_however_long_the_poll_interval(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, deferrable: bool
) -> None:
    """A task taking 1.6 s, batch_timeout 2 s, poll_interval 1.5 s: the worker gave up after its
    first poll (a second poll would have passed the deadline) while the trigger took a last look at
    the deadline and landed it. Both now look once more at the deadline."""
    with LoyaltyEmulator(EmulatorConfig(transactions=800, batch_size=1000, task_duration=1.6)) as emulator:
        point_connection_at(monkeypatch, emulator, max_retries=0)
        operator = local_export_operator(tmp_path, deferrable=deferrable, poll_interval=1.5, batch_timeout=2)
        manifest = run_with_deferrals(operator, context_for()) if deferrable else operator.execute(context_for())
    assert manifest["total_rows"] == 800


# ---------------------------------------------------------------------------------------- 13.1


def test_retry_creates_again_a_batch_whose_file_is_gone(emulator: LoyaltyEmulator, tmp_path):
    """A retry re-attaches to the checkpoint's export task; its file has expired meanwhile, so the
    batch is created again from the same cursor instead of failing on every retry."""
    emulator.set_faults([FaultRule(endpoint="download", kind="http_503", count=1)])
    with pytest.raises(LoyaltyTransientError):
        local_export_operator(tmp_path).execute(context_for(ti=task_instance()))
    (pending,) = checkpoint(tmp_path)["pending"][:1]
    assert emulator.expire_files() >= 1
    manifest = local_export_operator(tmp_path).execute(context_for(ti=task_instance(try_number=2)))
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)
    first = tasks_from(emulator, None)
    assert first[0]["task_id"] == pending["task_id"] and len(first) == 2
    assert manifest["parts"][0]["export_task_id"] == first[1]["task_id"]


def test_a_batch_that_fails_verification_is_created_again(emulator: LoyaltyEmulator, tmp_path):
    emulator.set_faults([FaultRule(endpoint="download", kind="short_batch", count=1)])
    manifest = local_export_operator(tmp_path).execute(context_for())
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)
    assert len(tasks_from(emulator, None)) == 2  # the short file's task was given up, once


def test_an_error_envelope_in_place_of_the_file_is_created_again(emulator: LoyaltyEmulator, tmp_path):
    emulator.set_faults(
        [FaultRule(endpoint="download", kind="download_error_envelope", count=1, params={"text": "File expired"})]
    )
    manifest = local_export_operator(tmp_path).execute(context_for())
    assert manifest["total_rows"] == N
    assert len(tasks_from(emulator, None)) == 2


def test_an_adopted_running_task_is_checkpointed_before_deferral(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.task_duration = 1.0
    adopted = LoyaltyHook().create_transactions_export(
        loyalty_program_id=123, points_currency_eid="bonus_points", date_from="2023-09-01", date_to="2023-09-30"
    )
    log = DeferralLog()
    manifest = run_with_deferrals(
        local_export_operator(tmp_path, export_task_id=adopted, deferrable=True), context_for(), log
    )
    assert log.deferrals >= 1 and log.events[0]["export_task_id"] == adopted
    assert manifest["parts"][0]["export_task_id"] == adopted
    assert [task["task_id"] for task in tasks_from(emulator, None)] == [adopted]
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)


# ---------------------------------------------------------------------------------------- 13.10


@pytest.mark.parametrize("style", EMPTY_EXPORT_STYLES)
def test_an_empty_period_is_a_manifest_of_zero_rows(emulator: LoyaltyEmulator, tmp_path, style):
    """Every way an API may say "no rows"; a ``hashed_file`` whose download is empty or not found
    (``total`` 0: there is nothing to lose) had the batch created three times, then failed."""
    emulator.config.empty_export_style = style
    context = context_for("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z")  # no transactions then
    manifest = local_export_operator(tmp_path).execute(context)
    assert (manifest["total_rows"], manifest["parts"]) == (0, [])
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["total_rows"] == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [MANIFEST_NAME]


def test_fail_on_empty_fails_and_leaves_no_manifest(emulator: LoyaltyEmulator, tmp_path):
    context = context_for("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z")
    with pytest.raises(LoyaltyEmptyExportError, match="no transactions"):
        local_export_operator(tmp_path, fail_on_empty=True).execute(context)
    assert not (tmp_path / MANIFEST_NAME).exists() and not (tmp_path / CHECKPOINT_NAME).exists()


def test_rows_without_a_file_stay_an_error(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.hashed_file_override = ""
    with pytest.raises(LoyaltyResponseError, match="without a hashed_file"):
        local_export_operator(tmp_path).execute(context_for())
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_a_retry_creates_again_a_batch_whose_reply_could_not_be_used(emulator: LoyaltyEmulator, tmp_path):
    """A retry never replays the same failure: the earlier try's task, whose completed reply named
    rows but no file, is given up and the batch created again from the same cursor."""
    emulator.config.hashed_file_override = ""
    with pytest.raises(LoyaltyResponseError, match="without a hashed_file"):
        local_export_operator(tmp_path).execute(context_for(ti=task_instance(try_number=1)))
    (broken,) = checkpoint(tmp_path)["pending"]
    emulator.config.hashed_file_override = None
    emulator.api.tasks.get(broken["task_id"]).hashed_file = ""  # that task stays broken; new ones are fine
    manifest = local_export_operator(tmp_path).execute(context_for(ti=task_instance(try_number=2)))
    assert manifest["parts"][0]["export_task_id"] != broken["task_id"]
    assert [task["from_id"] for task in tasks_from(emulator, None)] == [None, None]  # created again, same cursor
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferrable"])
def test_a_task_the_api_does_not_know_yet_is_asked_for_again_not_created_again(
    emulator: LoyaltyEmulator, tmp_path, deferrable: bool
):
    """A platform whose status reads lag its writes answers 1003 (not found) for a task created a
    moment ago: that task is asked for again, not taken for forgotten. Before, each batch was
    created three times in a few milliseconds and the export failed (LoyaltyBatchUnusableError)."""
    from tests.support.operator_driver import run_with_deferrals

    emulator.config.status_lag = 0.5
    operator = local_export_operator(tmp_path, deferrable=deferrable)
    context = context_for(ti=task_instance())
    manifest = run_with_deferrals(operator, context) if deferrable else operator.execute(context)
    assert len(emulator.export_tasks()) == len(manifest["parts"]) == N // 1000  # one export task per batch
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)


# ---------------------------------------------------------------------------------------- 13.13


def export_in_a_thread(operator) -> tuple[threading.Thread, dict[str, BaseException]]:
    """Run the export in a started thread (as a worker would, for ``on_kill`` from another); the
    thread and where it reports what stopped it."""
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            operator.execute(context_for(ti=task_instance()))
        except BaseException as error:  # the thread reports what stopped it
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    return worker, outcome


def test_on_kill_stops_the_loop_promptly_and_the_next_try_re_attaches(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.task_duration = 30.0
    operator = local_export_operator(tmp_path)
    worker, outcome = export_in_a_thread(operator)
    wait_for(lambda: (tmp_path / CHECKPOINT_NAME).exists() and checkpoint(tmp_path)["pending"], what="a pending task")
    stop_with_on_kill(operator, worker, outcome)
    (pending,) = checkpoint(tmp_path)["pending"]
    emulator.config.task_duration = 0.05
    emulator.api.tasks.get(pending["task_id"]).duration = 0.0  # the server finishes the pending task
    manifest = local_export_operator(tmp_path).execute(context_for(ti=task_instance(try_number=2)))
    assert manifest["parts"][0]["export_task_id"] == pending["task_id"]  # re-attached, not re-created
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)


# ---------------------------------------------------------------------------------------- 15.1


def test_worker_mode_creates_the_next_batch_before_landing_this_one(emulator: LoyaltyEmulator, tmp_path):
    """Batch N+1's export task exists before part N is landed (the server works while we verify)."""
    created_before_part: list[int] = []
    operator = local_export_operator(tmp_path)
    loop_module = __import__("airflow_provider_loyalty.export.loop", fromlist=["ExportLoop"])
    original = loop_module.ExportLoop._land

    def land(self, progress, task, result, fetched, *following):
        created_before_part.append(len(emulator.export_tasks()))
        return original(self, progress, task, result, fetched, *following)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop_module.ExportLoop, "_land", land)
        manifest = operator.execute(context_for())
    assert created_before_part == [2, 3, 3]  # parts 0 and 1 land with the next task already created
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)


def _recording_write_part(
    monkeypatch: pytest.MonkeyPatch, fail_first_ahead: bool = False
) -> tuple[list[str], list[str]]:
    """Record the thread of each verification (the loop calls ``write_part`` by its module's name);
    optionally fail the first one run ahead, as a corrupt zip would: the threads, and the part
    files of the failed verifications."""
    from airflow_provider_loyalty.exceptions import LoyaltyVerificationError
    from airflow_provider_loyalty.export import loop as loop_module

    threads: list[str] = []
    original = loop_module.write_part

    def write_part(archive, sink, **kwargs):
        name = threading.current_thread().name
        threads.append(name)
        if fail_first_ahead and name.startswith("loyalty-verify-ahead") and threads.count(name) == 1:
            failed_parts.append(sink.name)
            raise LoyaltyVerificationError("row count 999 does not match the API's total 1000 (injected)")
        return original(archive, sink, **kwargs)

    failed_parts: list[str] = []

    monkeypatch.setattr(loop_module, "write_part", write_part)
    return threads, failed_parts


def test_worker_mode_verifies_the_next_batch_while_this_one_uploads(
    emulator: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Batch N+1 is verified in the background once batch N's boundary ids are known, and lands
    exactly as one verified in order: here with an inclusive cursor, so each boundary row arrives
    twice and the one verified ahead must leave it out."""
    emulator.config.cursor_mode = "inclusive"
    threads, _ = _recording_write_part(monkeypatch)
    manifest = local_export_operator(tmp_path).execute(context_for())
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)
    batches = len(emulator.export_tasks())
    assert manifest["duplicates_dropped"] == batches - 1  # the boundary row of every batch but the first
    assert len(threads) == batches
    assert sum(name.startswith("loyalty-verify-ahead") for name in threads) >= 1
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("ahead-")) == []


def test_a_batch_that_fails_verification_ahead_is_created_again(
    emulator: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """A verification run ahead fails where the loop would have verified: the batch is created
    again from its cursor and landed in order, and nothing verified for the given-up task is used."""
    from airflow_provider_loyalty.export import loop as loop_module

    threads, failed_parts = _recording_write_part(monkeypatch, fail_first_ahead=True)
    left_behind: list[bool] = []
    recreate = loop_module.ExportLoop._recreate

    def recreating(loop, progress, task, reason):  # right after the failure surfaced in the loop
        left_behind.extend(os.path.exists(path) for path in failed_parts)
        return recreate(loop, progress, task, reason)

    monkeypatch.setattr(loop_module.ExportLoop, "_recreate", recreating)
    manifest = local_export_operator(tmp_path).execute(context_for())
    assert left_behind == [False]  # the part file of the failed verification is gone, not left for the export's end
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)
    assert len(threads) == 4  # three batches, the one that failed verified twice
    cursors = [task["from_id"] for task in emulator.export_tasks()]
    # the failed batch created again from its cursor, and the one after it, created from its result
    assert len(set(cursors)) == 3 and cursors.count(cursors[1]) == 2


def test_on_kill_stops_promptly_while_the_next_batch_is_verified_ahead(
    emulator: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """A verification running ahead (a large batch) does not hold the stop up: the loop stops
    with LoyaltyExportStopped, without waiting for it."""
    from airflow_provider_loyalty.export import loop as loop_module

    original = loop_module.write_part
    started, released = threading.Event(), threading.Event()

    def slow_ahead(*args, **kwargs):
        if threading.current_thread().name.startswith("loyalty-verify-ahead"):
            started.set()
            released.wait(30)  # a verification far longer than on_kill may take
        return original(*args, **kwargs)

    monkeypatch.setattr(loop_module, "write_part", slow_ahead)
    operator = local_export_operator(tmp_path)
    worker, outcome = export_in_a_thread(operator)
    try:
        assert started.wait(30), "no batch was verified ahead"
        stop_with_on_kill(operator, worker, outcome)
    finally:
        released.set()
        worker.join(30)


def test_a_finished_local_export_leaves_only_its_manifest_and_parts(emulator: LoyaltyEmulator, tmp_path):
    manifest = local_export_operator(tmp_path).execute(context_for())
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([MANIFEST_NAME, *(Path(part["key"]).name for part in manifest["parts"])])
    modes = {(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()}
    assert len(modes) == 1  # the manifest is as readable as the parts


def test_a_part_changed_before_the_seal_is_discarded_and_the_next_try_starts_afresh(
    emulator: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """The seal checks every stored part against its record; one changed meanwhile (another tool
    wrote there) fails the export without a manifest, and the export forgets its own parts: the
    next try, finding no checkpoint, must not take them for someone else's files and refuse the
    location ("no export wrote them")."""
    from airflow_provider_loyalty.export.seal import Sealer

    read_records = Sealer.read_records

    def tampered_first(sealer: Sealer, progress):  # the instant between the last part and the seal
        with open(tmp_path / "part-00001.csv", "ab") as part:
            part.write(b"written by another tool\r\n")
        return read_records(sealer, progress)

    with monkeypatch.context() as patched:
        patched.setattr(Sealer, "read_records", tampered_first)
        with pytest.raises(LoyaltyVerificationError, match="changed while the export ran"):
            local_export_operator(tmp_path).execute(context_for(ti=task_instance()))
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # its parts, records, checkpoint gone

    manifest = local_export_operator(tmp_path).execute(context_for(ti=task_instance(try_number=2)))
    assert landed_ids(tmp_path, manifest) == all_transaction_ids(emulator)


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferrable"])
def test_a_batch_whose_columns_changed_is_refused_also_after_a_resume(
    emulator: LoyaltyEmulator, tmp_path: Path, deferrable: bool
) -> None:
    """The members of one zip were held to one header, the batches of one export not: a server that
    changed its columns mid-export had part-00000 and part-00001 in different column orders, and
    verify said intact (probe of 2026-12-05). The first part's columns ride in the checkpoint, so a
    resumed run holds the next batch to them too."""
    with pytest.raises(Exception, match="max_batches=1 reached"):
        local_export_operator(tmp_path, max_batches=1).execute(context_for())
    first_columns = csv_header_of(tmp_path / "part-00000.csv")
    assert checkpoint(tmp_path)["columns_sha256"] == columns_digest(first_columns)
    emulator.config.update({"csv_style": "reversed_columns"})  # the API's CSV changes
    operator = local_export_operator(tmp_path, deferrable=deferrable)
    with pytest.raises(LoyaltyVerificationError, match=r"has the CSV columns \['canceled', .*not those of the parts"):
        run_with_deferrals(operator, context_for(), DeferralLog()) if deferrable else operator.execute(context_for())
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert sorted(path.name for path in tmp_path.glob("part-*")) == ["part-00000.csv"]
    # From its start, an export in the new columns is whole and alike.
    fresh = tmp_path / "again"
    operator = local_export_operator(fresh, deferrable=deferrable)
    manifest = (
        run_with_deferrals(operator, context_for(), DeferralLog()) if deferrable else operator.execute(context_for())
    )
    assert manifest["total_rows"] == N
    headers = {(fresh / Path(part["key"]).name).read_bytes().partition(b"\r\n")[0] for part in manifest["parts"]}
    assert headers == {",".join(reversed(first_columns)).encode()}


def csv_header_of(path: Path) -> list[str]:
    return next(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))


def test_a_header_of_any_width_keeps_the_checkpoint_and_the_error_small() -> None:
    """The checkpoint kept the header itself: one legal 5 MiB column name made every checkpoint
    5 MB and the mismatch error 10 MB (review of 2026-12-05). It keeps a digest; the error is cut."""
    from airflow_provider_loyalty.export.archive import PartStats
    from airflow_provider_loyalty.export.loop import _check_columns
    from airflow_provider_loyalty.export.progress import ExportProgress, PendingTask

    wide = ["transaction_id", "x" * (5 << 20)]
    progress = ExportProgress(spec={}, columns_sha256=columns_digest(wide))
    assert len(json.dumps(progress.to_dict())) < 1024
    _check_columns(progress, PendingTask("task_1", None), PartStats(rows=1, columns=list(wide)))  # the same: fine
    other = ["transaction_id", "y" * (5 << 20), *(f"c{index}" for index in range(100))]
    with pytest.raises(LoyaltyVerificationError, match=r"'yyy+\.\.\.', 'c0', .* and more, not those") as refused:
        _check_columns(progress, PendingTask("task_1", None), PartStats(rows=1, columns=other))
    assert len(str(refused.value)) < 4096
