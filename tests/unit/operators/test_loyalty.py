"""The operators of ``operators/loyalty.py`` against the emulator (and moto's S3 server):
LoyaltyExportOperator (batches, exactly-once, faults, deferral, output formats, lineage) and
LoyaltyAccountTransactionsOperator (a member's whole history as JSON Lines)."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import io
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_loyalty.exceptions import (
    LoyaltyBatchUnusableError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportTaskFailed,
    LoyaltyNotFoundError,
    LoyaltyOutputFormatError,
    LoyaltyStorageError,
    LoyaltyUnsafeDataError,
    LoyaltyValidationError,
    LoyaltyVerificationError,
)
from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator, LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.testing.s3 import aws_connection_json
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from airflow_provider_loyalty.verify import verify_manifest
from tests.support.helpers import all_transaction_ids, csv_ids, point_connection_at, requests_seen
from tests.support.operator_driver import (
    DeferralLog,
    context_for,
    local_export_operator,
    run_with_deferrals,
    task_instance,
)

N = 2500


def part_paths(output: Path, manifest: dict) -> list[str]:
    return [str(output / Path(part["key"]).name) for part in manifest["parts"]]


PREFIX = "formats/2023-09"


def ids_of(payloads: list[bytes], output_format: str) -> list[str]:
    """Transaction ids of stored parts, read back with gzip / pyarrow as a consumer would."""
    ids: list[str] = []
    for payload in payloads:
        if output_format == "parquet":
            import pyarrow.parquet as pq

            ids.extend(pq.read_table(io.BytesIO(payload)).column("transaction_id").to_pylist())
            continue
        text = (gzip.decompress(payload) if output_format == "csv.gz" else payload).decode("utf-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        column = next(reader).index("transaction_id")
        ids.extend(row[column] for row in reader if row)
    return ids


def _reference_rfc3339(text: str) -> datetime.datetime | None:
    """An RFC3339 time read by the standard library, as the parquet part must hold it."""
    if not text:
        return None
    text = text.upper().replace(",", ".")
    if text[17:19] == "60":
        text = f"{text[:17]}59{text[19:]}"
    head, dot, rest = text.partition(".")
    if dot:  # at most six digits for fromisoformat; the emulator's extra ones are zeros
        digits = "".join(ch for ch in rest if ch.isdigit())
        assert not digits[6:].strip("0"), text
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    return datetime.datetime.fromisoformat(text).astimezone(datetime.UTC)


def member_operator(tmp_path, **kwargs) -> LoyaltyAccountTransactionsOperator:
    params = {
        "task_id": "member",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "matching": "email",
        "member_email": "member0@example.com",
        "output_path": str(tmp_path / "member.jsonl"),
        **kwargs,
    }
    return LoyaltyAccountTransactionsOperator(**params)


def read_jsonl(path: str) -> list[dict]:
    with open(path.removeprefix("file://"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def csv_rows(payload: bytes) -> list[list[str]]:
    """Every record of a CSV payload as ``csv.reader`` (excel dialect) reads it, header included."""
    return list(csv.reader(io.StringIO(payload.decode("utf-8-sig"), newline="")))


def zip_rows(path: Path) -> list[list[str]]:
    """The records of every CSV member of an export zip, each member's header row dropped but the first."""
    rows: list[list[str]] = []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            member = csv_rows(archive.read(name))
            rows.extend(member if not rows else member[1:])
    return rows


#: created_at of five transactions around 2023-09-30: the day holds the middle three.
DAY_TIMELINE = [
    "2023-09-29T23:59:59Z",
    "2023-09-30T00:00:00Z",
    "2023-09-30T12:00:00Z",
    "2023-09-30T23:59:59Z",
    "2023-10-01T00:00:00Z",
]


class TestLoyaltyExportOperator:
    """LoyaltyExportOperator: batches, exactly-once, faults, verification, deferral."""

    @pytest.fixture
    def loyalty_emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(transactions=N, batch_size=1000, task_duration=0.05)

    @pytest.fixture(params=["json", "xml"])
    def content_type(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def emulator(
        self, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str
    ) -> LoyaltyEmulator:
        point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type)
        return loyalty_emulator

    @pytest.mark.parametrize("cursor_mode", ["exclusive", "inclusive", "next_row"])
    def test_every_transaction_exactly_once_in_every_cursor_mode(
        self, emulator: LoyaltyEmulator, tmp_path, cursor_mode
    ):
        emulator.config.cursor_mode = cursor_mode
        manifest = local_export_operator(tmp_path).execute(context_for())
        ids = csv_ids(part_paths(tmp_path, manifest))
        assert ids == all_transaction_ids(emulator)  # complete, in order, no duplicates
        assert len(manifest["parts"]) >= 3
        assert manifest["total_rows"] == N
        assert manifest["duplicates_dropped"] == (len(manifest["parts"]) - 1 if cursor_mode == "inclusive" else 0)
        on_disk = json.loads((tmp_path / "_manifest.json").read_text())
        assert {k: v for k, v in on_disk.items() if k != "manifest"} == {
            k: v for k, v in manifest.items() if k != "manifest"
        }
        assert not (tmp_path / "_manifest.inprogress.json").exists()

    def test_manifest_matches_the_parts(self, emulator: LoyaltyEmulator, tmp_path):
        import hashlib

        manifest = local_export_operator(tmp_path).execute(context_for())
        assert manifest["format_version"] == 1
        assert (manifest["date_from"], manifest["date_to"]) == ("2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z")
        assert manifest["points_currency_eid"] == "bonus_points" and manifest["points_currency_iid"] is None
        for part, path in zip(manifest["parts"], part_paths(tmp_path, manifest), strict=True):
            data = Path(path).read_bytes()
            assert part["bytes"] == len(data)
            assert part["sha256"] == hashlib.sha256(data).hexdigest()
            assert part["rows"] == len(csv_ids([path]))
            assert part["export_task_id"].startswith("task_")
        cursors = [(p["from_id"], p["next_from_id"]) for p in manifest["parts"]]
        assert cursors[0][0] is None and cursors[-1][1] == ""
        assert all(prev[1] == cur[0] for prev, cur in zip(cursors, cursors[1:], strict=False))
        json.dumps(manifest)  # XCom-safe: metadata only

    def test_rows_are_copied_byte_for_byte(self, emulator: LoyaltyEmulator, tmp_path):
        """The part holds the server's CSV bytes (quoted commas, quotes and newlines untouched)."""
        from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

        local_export_operator(tmp_path, keep_zip=True).execute(context_for())
        with zipfile.ZipFile(tmp_path / "part-00000.zip") as archive:
            original = archive.read(archive.namelist()[0])
        assert (tmp_path / "part-00000.csv").read_bytes() == original
        assert b'""' in original and b'"\n' not in original.split(b"\r\n")[0]
        assert LoyaltyHook is not None

    def test_deferrable_and_worker_modes_give_identical_parts(self, emulator: LoyaltyEmulator, tmp_path):
        in_worker = local_export_operator(tmp_path / "a").execute(context_for())
        emulator.config.task_duration = 1.0  # each next batch still runs when the previous one has landed
        log = DeferralLog()
        deferred = run_with_deferrals(local_export_operator(tmp_path / "b", deferrable=True), context_for(), log)
        assert log.deferrals >= 3 and all(event["status"] == "success" for event in log.events)
        for kwargs in log.trigger_kwargs:
            json.dumps(kwargs)  # primitives only
        digests = lambda m: [(p["rows"], p["bytes"], p["sha256"]) for p in m["parts"]]  # noqa: E731
        assert digests(in_worker) == digests(deferred)

    @pytest.mark.parametrize(
        ("endpoint", "kind"),
        [("export", "http_503"), ("status", "rate_limit"), ("status", "reset"), ("download", "truncate")],
    )
    def test_a_transient_fault_in_each_phase_is_survived(self, emulator: LoyaltyEmulator, tmp_path, endpoint, kind):
        emulator.set_faults([FaultRule(endpoint=endpoint, kind=kind, count=2, params={"retry_after": 0.05})])
        manifest = local_export_operator(tmp_path).execute(context_for())
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)
        assert emulator.stats()["faults_applied"].get(kind) == 2

    def test_failed_task_fails_with_api_text_and_leaves_no_manifest(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.set_faults(
            [FaultRule(endpoint="status", kind="task_failed", params={"status": "error", "text": "disk full"})]
        )
        with pytest.raises(LoyaltyExportTaskFailed, match="disk full"):
            local_export_operator(tmp_path).execute(context_for())
        assert not (tmp_path / "_manifest.json").exists()

    def test_failed_task_in_deferrable_mode(self, emulator: LoyaltyEmulator, tmp_path):
        """The export task this try created (before deferring) failed: the try fails with the API's
        text, as in the worker; it was taken for an earlier try's task and created again."""
        emulator.config.task_duration = 0.5
        failing = FaultRule(endpoint="status", kind="task_failed", count=None, params={"text": "quota exceeded"})
        log = DeferralLog()
        with pytest.raises(LoyaltyExportTaskFailed, match="quota exceeded"):
            run_with_deferrals(
                local_export_operator(tmp_path, deferrable=True),
                context_for(ti=task_instance(try_number=1)),
                log,
                before_trigger=lambda _: emulator.set_faults([failing]),  # it fails while deferred
            )
        assert (log.deferrals, len(emulator.export_tasks())) == (1, 1)
        assert not (tmp_path / "_manifest.json").exists()

    def test_an_unusable_batch_in_deferrable_mode_is_created_again_a_bounded_number_of_times(
        self, emulator: LoyaltyEmulator, tmp_path
    ):
        """Each return from the triggerer reset the batch's attempts: it was created again forever."""
        emulator.config.task_duration = 0.3
        emulator.set_faults(
            [FaultRule(endpoint="download", kind="short_batch", count=None, params={"downloads": 1000})]
        )
        with pytest.raises(LoyaltyBatchUnusableError, match="after creating it 3 times"):
            run_with_deferrals(
                local_export_operator(tmp_path, deferrable=True), context_for(ti=task_instance(try_number=1))
            )
        assert [task["from_id"] for task in emulator.export_tasks()].count(None) == 3

    def test_resume_false_in_deferrable_mode_still_resumes_its_own_deferrals(self, emulator: LoyaltyEmulator, tmp_path):
        """``resume`` is about an earlier try's checkpoint; each return from the triggerer threw this
        try's own away and started the export over, forever."""
        emulator.config.task_duration = 0.3
        log = DeferralLog()
        manifest = run_with_deferrals(
            local_export_operator(tmp_path, deferrable=True, resume=False),
            context_for(ti=task_instance(try_number=1)),
            log,
        )
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)
        # each of the 3 batches created once (a batch done before its wait needs no deferral)
        assert [task["from_id"] is None for task in emulator.export_tasks()] == [True, False, False]
        assert 1 <= log.deferrals <= 3

    def test_failed_rerun_keeps_the_previous_export_provable(self, emulator: LoyaltyEmulator, tmp_path):
        """A re-run stages its parts: when it fails, the last complete export and its parts stay as they were."""
        local_export_operator(tmp_path).execute(context_for())
        before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
        emulator.config.batch_size = 700
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", count=None, params={"text": "boom"})])
        with pytest.raises(LoyaltyExportTaskFailed, match="boom"):
            local_export_operator(tmp_path, resume=False).execute(context_for())
        after = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
        assert {name: after[name] for name in before} == before  # manifest and every part byte-identical
        manifest = json.loads(before["_manifest.json"])
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)

    def test_rerun_replaces_the_set(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.config.batch_size = 500
        first = local_export_operator(tmp_path).execute(context_for())
        emulator.config.batch_size = 1200
        second = local_export_operator(tmp_path).execute(context_for())
        assert len(first["parts"]) == 5 and len(second["parts"]) == 3
        assert sorted(p.name for p in tmp_path.glob("part-*")) == [f"part-0000{i}.csv" for i in range(3)]
        assert csv_ids(part_paths(tmp_path, second)) == all_transaction_ids(emulator)

    def test_replace_false_refuses_to_overwrite(self, emulator: LoyaltyEmulator, tmp_path):
        local_export_operator(tmp_path).execute(context_for())
        with pytest.raises(LoyaltyError, match="replace=True"):
            local_export_operator(tmp_path, replace=False).execute(context_for())

    def test_row_count_mismatch_is_created_again_then_fails(self, emulator: LoyaltyEmulator, tmp_path, monkeypatch):
        """A batch that keeps failing verification is created again from its cursor, twice, then the
        task fails saying what was tried (never a replay of the same task)."""
        from airflow_provider_loyalty.export import loop as _export

        real = _export.write_part
        monkeypatch.setattr(
            _export, "write_part", lambda *a, **k: real(*a, **{**k, "expected_rows": k["expected_rows"] + 1})
        )
        with pytest.raises(LoyaltyBatchUnusableError, match="row count mismatch") as caught:
            local_export_operator(tmp_path).execute(context_for())
        assert "after creating it 3 times" in str(caught.value)
        first_batches = [task for task in emulator.export_tasks() if task["from_id"] is None]
        assert len(first_batches) == 3 and all(task["task_id"] in str(caught.value) for task in first_batches)
        assert not (tmp_path / "_manifest.json").exists()

    def test_looping_cursor_is_caught(self, emulator: LoyaltyEmulator, tmp_path):
        first_batch_cursor = None
        emulator.config.batch_size = 1000

        def stuck(*_args, **_kwargs):
            return first_batch_cursor

        # The emulator serves a real cursor; freeze it by exporting the same from_id forever.
        emulator.config.cursor_mode = "exclusive"
        operator = local_export_operator(tmp_path, max_batches=50)
        from airflow_provider_loyalty.export import loop as _export

        original = _export.ExportLoop._check_cursor

        def repeat_the_cursor(self, progress, task, result):
            if progress.recent_cursors:
                result = dataclasses.replace(result, next_from_id=progress.recent_cursors[-1])
            return original(self, progress, task, result)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_export.ExportLoop, "_check_cursor", repeat_the_cursor)
            with pytest.raises(LoyaltyCursorError, match="already used"):
                operator.execute(context_for())
        assert stuck() is None

    def test_max_batches_is_enforced(self, emulator: LoyaltyEmulator, tmp_path):
        with pytest.raises(LoyaltyCursorError, match="max_batches=2"):
            local_export_operator(tmp_path, max_batches=2).execute(context_for())
        assert not (tmp_path / "_manifest.json").exists()

    def test_hostile_hashed_file_fails_closed(self, emulator: LoyaltyEmulator, tmp_path):
        emulator.config.hashed_file_override = "../../../etc/passwd"
        with pytest.raises(LoyaltyUnsafeDataError):
            local_export_operator(tmp_path).execute(context_for())
        assert requests_seen(emulator, "download") == 0
        assert not (tmp_path / "_manifest.json").exists()

    def test_date_defaults_and_validation(self, emulator: LoyaltyEmulator, tmp_path):
        manifest = local_export_operator(tmp_path).execute(context_for("2023-09-10T00:00:00Z", "2023-09-11T00:00:00Z"))
        assert (manifest["date_from"], manifest["date_to"]) == ("2023-09-10T00:00:00Z", "2023-09-10T23:59:59Z")
        assert 0 < manifest["total_rows"] < N
        with pytest.raises(LoyaltyValidationError, match="date_from"):
            local_export_operator(tmp_path, date_from="2023-09-30", date_to="2023-09-01")
        # one literal end, the other from the data interval: the literal is read when the DAG is parsed
        with pytest.raises(LoyaltyValidationError, match=r"date_from: .*'2023-02-30' \(day is out of range"):
            local_export_operator(tmp_path, date_from="2023-02-30")
        with pytest.raises(LoyaltyValidationError, match=r"date_to: .*'2023-09-01T25:00:00Z' \(hour must be"):
            local_export_operator(tmp_path, date_to="2023-09-01T25:00:00Z")
        with pytest.raises(LoyaltyValidationError, match="points_currency"):
            local_export_operator(tmp_path, points_currency_iid=1)
        with pytest.raises(LoyaltyValidationError, match="max_batches"):
            local_export_operator(tmp_path, max_batches=0)
        assert requests_seen(emulator) > 0

    @pytest.mark.parametrize("rendered", [["/tmp/x"], 42, {"path": "/tmp/x"}])
    def test_an_output_path_a_native_template_rendered_to_no_path_is_refused(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch, rendered
    ):
        """``render_template_as_native_obj`` can turn ``output_path`` into a list or a number: refused
        naming it, before any request, not written as a directory named ``['/tmp/x']``."""
        monkeypatch.chdir(tmp_path)
        operator = local_export_operator("{{ params.p }}")
        operator.output_path = rendered  # what rendering gave
        with pytest.raises(LoyaltyValidationError, match="output_path: expected a path"):
            operator.execute(context_for())
        assert requests_seen(emulator) == 0
        assert list(tmp_path.iterdir()) == []

    def test_a_connection_that_cannot_be_read_fails_before_the_location_is_touched(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch
    ):
        """Before, the location's directory and its in-progress checkpoint were written first."""
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_BROKEN", json.dumps({"conn_type": "loyalty", "host": emulator.url}))
        operator = local_export_operator(tmp_path / "out", loyalty_conn_id="loyalty_broken")
        with pytest.raises(LoyaltyValidationError, match="token"):
            operator.execute(context_for())
        assert requests_seen(emulator) == 0
        assert list(tmp_path.iterdir()) == []

    def test_a_period_that_has_not_ended_is_exported_with_a_warning_saying_so(
        self, emulator: LoyaltyEmulator, tmp_path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
    ):
        """A manual run with ``date_to`` of today (or a typo'd year) sealed a manifest naming the
        whole period over the transactions made so far, without a word (probe of 2026-12-05)."""
        caplog.set_level(logging.WARNING)
        ended = local_export_operator(tmp_path / "ended", date_from="2023-09-01", date_to="2023-09-30")
        whole_month = ended.execute(context_for())["total_rows"]
        out, err = capfd.readouterr()
        assert whole_month > 0 and "has not ended" not in caplog.text + out + err
        operator = local_export_operator(
            tmp_path / "open", date_from="2023-09-01", date_to="2099-12-31", deferrable=True
        )
        manifest = run_with_deferrals(operator, context_for(), DeferralLog())
        assert manifest["total_rows"] == whole_month  # every transaction made so far
        out, err = capfd.readouterr()
        logged = caplog.text + out + err  # Airflow 3.2+ logs through structlog, older through logging
        found = re.findall(r"warn.*date_to 2099-12-31T23:59:59Z is after now \(.*has not ended", logged, re.I)
        assert len(found) == 1, logged  # once, not again as each deferral resumes

    @pytest.mark.parametrize("which", ["points_currency_eid", "points_currency_iid"])
    def test_a_currency_id_that_rendered_none_is_named_not_called_both_given(self, emulator, tmp_path, which):
        """``{{ params.eid }}`` of a missing param renders 'None': with the other id also given, the
        error said "both were given", pointing away from the template."""
        other = {"points_currency_iid": 7} if which == "points_currency_eid" else {"points_currency_eid": "x"}
        operator = local_export_operator(tmp_path / "out", **{"points_currency_eid": None, **other})
        setattr(operator, which, "None")  # as the rendering of a missing param gives it
        with pytest.raises(LoyaltyValidationError, match=rf"^{which}: rendered to the text 'None'"):
            operator.execute(context_for())
        assert requests_seen(emulator) == 0

    @pytest.mark.parametrize("field", ["from_id", "output_path"])
    def test_a_template_of_a_missing_value_is_refused_not_sent_as_none(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch, field
    ):
        """``{{ params.x }}`` with ``x`` unset renders the text ``None``: not a cursor to send (the API
        refuses it after the lease and checkpoint are taken), not a directory named ``None``."""
        monkeypatch.chdir(tmp_path)
        templated = {"from_id": "{{ params.cursor }}"} if field == "from_id" else {}
        operator = local_export_operator(
            "{{ params.where }}" if field == "output_path" else tmp_path / "out", **templated
        )
        context = context_for(params={"cursor": None, "where": None})
        operator.render_template_fields(context)
        assert getattr(operator, field) == "None"  # what Airflow's rendering gave
        with pytest.raises(LoyaltyValidationError, match=rf"^{field}: rendered to the text 'None'"):
            operator.execute(context)
        assert requests_seen(emulator) == 0
        assert list(tmp_path.iterdir()) == []

    def test_a_templated_connection_id_is_rendered_then_checked_before_any_request(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch
    ):
        """``loyalty_conn_id`` was in no ``template_fields``: "loyalty_{{ params.region }}" was
        looked up as written, and failed as an unknown connection on every retry (probe)."""
        point_connection_at(monkeypatch, emulator, conn_id="loyalty_eu")
        operator = local_export_operator(tmp_path / "eu", loyalty_conn_id="loyalty_{{ params.region }}")
        context = context_for(params={"region": "eu", "conn": ""})
        operator.render_template_fields(context)
        assert operator.loyalty_conn_id == "loyalty_eu"
        assert operator.execute(context)["total_rows"] == N
        seen = requests_seen(emulator)
        for rendered_to in ("", None):  # the second: "None", as a missing value renders
            refused = local_export_operator(tmp_path / "none", loyalty_conn_id="{{ params.conn }}")
            refused.render_template_fields(context_for(params={"conn": rendered_to}))
            with pytest.raises(LoyaltyValidationError, match=r"^loyalty_conn_id: "):
                refused.execute(context_for())
        assert requests_seen(emulator) == seen
        assert not (tmp_path / "none").exists()

    @pytest.mark.parametrize("rendered", [None, ""])
    def test_an_export_task_id_that_renders_to_nothing_is_refused_not_replaced_by_a_new_task(
        self, emulator: LoyaltyEmulator, tmp_path, rendered
    ):
        """With native rendering an upstream XCom of ``None`` (or ``""``) made the export quietly
        create its own task instead of adopting the one the DAG waited for (probe); the sensor refused it."""
        operator = local_export_operator(tmp_path / "out", export_task_id="{{ ti.xcom_pull('create') }}")
        operator.export_task_id = rendered  # what native rendering of an empty XCom gives
        with pytest.raises(LoyaltyValidationError, match=r"^export_task_id: "):
            operator.execute(context_for())
        assert requests_seen(emulator) == 0

    def test_values_pasted_with_a_newline_mean_what_they_say(self, emulator: LoyaltyEmulator, tmp_path):
        """A directory or cursor pasted with surrounding whitespace: not a directory named "\\n",
        not a cursor sent with a newline; a blank output_path is no directory at all."""
        cursor = all_transaction_ids(emulator)[999]
        manifest = local_export_operator(f"  {tmp_path}/pasted\n", from_id=f"{cursor}\n").execute(context_for())
        assert sorted(path.name for path in tmp_path.iterdir()) == ["pasted"]
        assert (tmp_path / "pasted" / "_manifest.json").exists()
        assert manifest["parts"][0]["from_id"] == cursor
        assert csv_ids(part_paths(tmp_path / "pasted", manifest)) == all_transaction_ids(emulator)[1000:]
        with pytest.raises(LoyaltyValidationError, match="output_path: required"):
            local_export_operator(" \n")
        with pytest.raises(LoyaltyValidationError, match="from_id"):
            local_export_operator(tmp_path, from_id="3f0c\x1be1")

    @pytest.mark.parametrize("name", ["_staging", "_parts/", "_tmp-0123abcd"])
    def test_a_location_inside_another_locations_bookkeeping_is_refused(self, emulator, tmp_path, name):
        """An export at ``<dir>`` clears ``<dir>/_staging`` and ``<dir>/_parts``: one landed there was
        deleted by the next export at ``<dir>``."""
        with pytest.raises(LoyaltyValidationError, match=rf"^output_path: .* ends in '{name.rstrip('/')}'"):
            local_export_operator(tmp_path / "exports" / name.rstrip("/"))
        operator = local_export_operator("{{ params.where }}")
        operator.render_template_fields(context_for(params={"where": f"{tmp_path}/{name}"}))
        with pytest.raises(LoyaltyValidationError, match="output_path"):
            operator.execute(context_for())
        assert requests_seen(emulator) == 0

    def test_verify_reads_with_the_connection_the_output_url_names(self, tmp_path):
        """``s3://my_conn@bucket/…`` was written with my_conn and verified with aws_default."""
        assert local_export_operator("s3://my_s3@bucket/exports").verify_conn_id() == "my_s3"
        assert local_export_operator("s3://my_s3@bucket/exports", output_conn_id="other").verify_conn_id() == "other"
        assert local_export_operator(str(tmp_path)).verify_conn_id() is None

    def test_verify_that_cannot_check_says_it_was_verify_and_where(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch
    ):
        """A store the verifier cannot read (access denied to the verifying credentials: out of
        reach of the loopback servers, hence the patch) fails naming verify=True and the manifest."""
        from airflow_provider_loyalty import verify as verify_module

        def denied(*args: Any, **kwargs: Any) -> Any:
            raise verify_module.CannotVerifyError("access denied (AccessDenied)")

        monkeypatch.setattr(verify_module, "verify_manifest", denied)
        with pytest.raises(verify_module.CannotVerifyError) as raised:
            local_export_operator(tmp_path, verify=True).execute(context_for())
        assert str(raised.value).startswith(
            f"verify=True could not check the export at file://{tmp_path}/_manifest.json: "
        )
        assert "AccessDenied" in str(raised.value) and (tmp_path / "_manifest.json").exists()

    def test_object_storage_output_path(self, emulator: LoyaltyEmulator, tmp_path):
        manifest = local_export_operator(f"file://{tmp_path}/osp").execute(context_for())
        assert manifest["parts"][0]["key"].startswith("file://")
        assert csv_ids(part_paths(tmp_path / "osp", manifest)) == all_transaction_ids(emulator)

    @pytest.mark.parametrize("spelling", ["file:{path}", "file://localhost{path}", "FILE://{path}"])
    def test_every_spelling_of_a_local_file_url_is_that_directory(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch, spelling: str
    ):
        """``file:/abs`` and ``file://localhost/abs`` (RFC 8089) landed under the worker's current
        directory, in folders named ``file:`` and ``localhost``."""
        elsewhere = tmp_path / "cwd"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        manifest = local_export_operator(spelling.format(path=tmp_path / "out")).execute(context_for())
        assert manifest["manifest"] == f"file://{tmp_path}/out/_manifest.json"
        assert csv_ids(part_paths(tmp_path / "out", manifest)) == all_transaction_ids(emulator)
        assert list(elsewhere.iterdir()) == []

    @pytest.mark.parametrize("url", ["file://fileserver/exports", "file:relative/dir", "file:///tmp/x?y=1"])
    def test_a_file_url_of_another_host_or_no_absolute_path_is_refused(self, tmp_path, url: str):
        with pytest.raises(LoyaltyValidationError, match=r"^output_path: "):
            local_export_operator(url)
        with pytest.raises(LoyaltyValidationError, match=r"^output_path: "):
            member_operator(tmp_path, output_path=url)

    def test_a_torn_manifest_at_a_file_url_is_a_typed_error_or_replaced(self, emulator: LoyaltyEmulator, tmp_path):
        """Issue 13.2 on a ``file://`` output_path: a half-written ``_manifest.json`` is a LoyaltyError
        saying it is unreadable (never a raw JSONDecodeError) unless replace=True replaces it."""
        location = f"file://{tmp_path}/osp"
        local_export_operator(location).execute(context_for())
        (tmp_path / "osp" / "_manifest.json").write_bytes(b'{"format_version": 1, "parts": [{"key": "par')
        with pytest.raises(LoyaltyError, match="unreadable") as refused:
            local_export_operator(location, replace=False).execute(context_for())
        assert not isinstance(refused.value, json.JSONDecodeError)
        assert "_manifest.json" in str(refused.value)
        manifest = local_export_operator(location, replace=True).execute(context_for())
        assert manifest["total_rows"] == N
        assert verify_manifest(f"{location}/_manifest.json").intact
        assert csv_ids(part_paths(tmp_path / "osp", manifest)) == all_transaction_ids(emulator)

    def test_stray_quotes_land_as_csv_reader_reads_what_was_served(self, emulator: LoyaltyEmulator, tmp_path):
        """Issue 13.4 through the emulator: unquoted fields holding a ``"`` (``prod_12 5" screen``) are
        valid CSV; every id lands and each part reads, with csv.reader, exactly as the zip served."""
        emulator.config.csv_style = "stray_quotes"
        manifest = local_export_operator(tmp_path, keep_zip=True).execute(context_for())
        assert csv_ids(part_paths(tmp_path, manifest)) == emulator.expected_ids()
        assert manifest["total_rows"] == N == len(emulator.expected_ids())
        served_rows = 0
        for index, part in enumerate(manifest["parts"]):
            landed = csv_rows((tmp_path / Path(part["key"]).name).read_bytes())
            served = zip_rows(tmp_path / f"part-{index:05d}.zip")
            assert landed == served
            assert len(landed) - 1 == part["rows"]
            served_rows += len(served) - 1
        assert served_rows == N
        first_part = (tmp_path / "part-00000.csv").read_bytes()
        header, *records = csv_rows(first_part)
        products = [record[header.index("product_eid")] for record in records]
        assert any(value.endswith(' 5" screen') for value in products)  # the knob really served stray quotes
        assert b' 5" screen,' in first_part  # unquoted, byte for byte as served

    @pytest.mark.parametrize("cursor_mode", ["inclusive", "exclusive", "next_row"])
    def test_members_listed_out_of_row_order_land_each_transaction_once(
        self, emulator: LoyaltyEmulator, tmp_path, cursor_mode: str
    ):
        """A zip whose directory lists its CSV members the other way round (``_002`` before ``_001``;
        nothing fixes that order) kept the row an inclusive cursor repeats: it was neither among the
        last rows written of one batch nor at the head of the next. Members are read in name order."""
        emulator.config.zip_members = 2
        emulator.config.zip_member_order = "reversed"
        emulator.config.cursor_mode = cursor_mode
        manifest = local_export_operator(tmp_path).execute(context_for())
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)
        assert manifest["duplicates_dropped"] == (len(manifest["parts"]) - 1 if cursor_mode == "inclusive" else 0)

    def test_many_small_members_over_the_ratio_cap_are_refused(self, emulator: LoyaltyEmulator, tmp_path):
        """Issue 13.5 through the emulator: a zip split into many members (8 CSV members, then 24 filler
        members just under 1 MiB each, about 1000:1) is refused by the ratio cap — there is no size
        below which a member escapes it — and nothing is manifested. The same CSV members alone land."""
        emulator.config.zip_members = 8
        fine = local_export_operator(tmp_path / "fine").execute(context_for())
        assert csv_ids(part_paths(tmp_path / "fine", fine)) == all_transaction_ids(emulator)
        emulator.set_faults(
            [FaultRule(endpoint="download", kind="zip_bomb_members", params={"members": 24, "member_bytes": 1_000_000})]
        )
        with pytest.raises(LoyaltyUnsafeDataError, match=r"over the cap of 200x \(max_compression_ratio\)") as refused:
            local_export_operator(tmp_path / "bomb").execute(context_for())
        message = str(refused.value)
        assert "zip bomb" in message
        expanded = re.search(r"expands \d+x \((\d+) bytes from (\d+)\)", message)
        assert expanded is not None and int(expanded.group(1)) < 1024 * 1024  # a member under 1 MiB
        assert not (tmp_path / "bomb" / "_manifest.json").exists()
        assert emulator.stats()["faults_applied"].get("zip_bomb_members", 0) >= 1

    def test_max_download_bytes_stops_the_export_and_a_normal_value_lands(self, emulator: LoyaltyEmulator, tmp_path):
        """Issue 13.5: the operator's ``max_download_bytes`` caps each batch file while it streams."""
        with pytest.raises(LoyaltyUnsafeDataError, match="max_download_bytes=4096"):
            local_export_operator(tmp_path, max_download_bytes=4096).execute(context_for())
        assert not (tmp_path / "_manifest.json").exists()
        assert requests_seen(emulator, "download") == 1  # refused, not retried
        manifest = local_export_operator(tmp_path, max_download_bytes=64 * 1024 * 1024).execute(context_for())
        assert csv_ids(part_paths(tmp_path, manifest)) == all_transaction_ids(emulator)
        assert (tmp_path / "_manifest.json").exists()

    def test_a_ds_template_exports_the_whole_day(self, emulator: LoyaltyEmulator, tmp_path):
        """Issue 13.3: ``date_from``/``date_to`` = ``"{{ ds }}"`` rendered by Airflow's templating is the
        whole day: the API is asked for 00:00:00..23:59:59 and the day's last second lands."""
        import pendulum
        from airflow.sdk import DAG

        emulator.config.update({"transactions": len(DAY_TIMELINE), "created_at_timeline": DAY_TIMELINE})
        with DAG("ds_day", schedule=None, start_date=pendulum.datetime(2023, 9, 1, tz="UTC")):
            operator = local_export_operator(tmp_path, date_from="{{ ds }}", date_to="{{ ds }}")
        logical_date = pendulum.datetime(2023, 9, 30, tz="UTC")
        context = context_for(logical_date=logical_date, ds=logical_date.to_date_string())
        operator.render_template_fields(context)
        assert (operator.date_from, operator.date_to) == ("2023-09-30", "2023-09-30")
        manifest = operator.execute(context)
        assert emulator.stats()["export_tasks_by_period"] == {"2023-09-30T00:00:00Z/2023-09-30T23:59:59Z": 1}
        assert (manifest["date_from"], manifest["date_to"]) == ("2023-09-30T00:00:00Z", "2023-09-30T23:59:59Z")
        rows = csv_rows((tmp_path / "part-00000.csv").read_bytes())
        created_at = [row[rows[0].index("created_at")] for row in rows[1:]]
        assert created_at == DAY_TIMELINE[1:4]  # 23:59:59 of the day too
        assert manifest["total_rows"] == 3

    # ---------------------------------------------------------------------- verification of archives

    @pytest.mark.parametrize("conn_id", ["aws_default", None], ids=["connection", "no-connection"])
    def test_s3_object_storage_output_path(
        self, emulator: LoyaltyEmulator, s3_server, s3_bucket, s3_client, monkeypatch, request, conn_id
    ):
        """``output_path`` as an ``s3://`` ObjectStoragePath URL (fsspec/s3fs through the AWS connection).
        ``no-connection``: boto3's own credentials (an instance role; here the environment). Every
        such export failed at its seal ("stored with None bytes ... the location was changed"):
        the parts were written through one s3fs instance and listed through another, whose cached
        listing predated them (Airflow 3.3 gives a path without conn_id two filesystems)."""
        if conn_id is None:  # aws_default points nowhere: verify=True read with it, not as the export wrote
            monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_json("http://127.0.0.1:9"))
            for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
            # fsspec keeps one filesystem per set of arguments for the process: one made by an
            # earlier test (another endpoint in the environment) would be reused.
            s3fs = pytest.importorskip("s3fs")
            s3fs.S3FileSystem.clear_instance_cache()
            request.addfinalizer(s3fs.S3FileSystem.clear_instance_cache)
        manifest = local_export_operator(
            f"s3://{s3_bucket}/exports/run-1", output_conn_id=conn_id, verify=True
        ).execute(context_for())
        keys = sorted(item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
        assert keys == ["exports/run-1/_manifest.json"] + [f"exports/run-1/part-0000{i}.csv" for i in range(3)]
        body = s3_client.get_object(Bucket=s3_bucket, Key="exports/run-1/part-00000.csv")["Body"].read()
        assert len(body) == manifest["parts"][0]["bytes"]
        assert manifest["parts"][0]["key"] == f"s3://{s3_bucket}/exports/run-1/part-00000.csv"

    @pytest.mark.parametrize("operator", ["export", "member history"])
    def test_an_object_store_bucket_that_does_not_exist_is_never_created(
        self, emulator: LoyaltyEmulator, s3_bucket, s3_client, tmp_path, operator
    ):
        """s3fs's mkdir of a path in a missing bucket creates the bucket: a mistyped bucket received
        the export, or a member's history, with the account's defaults (probe of 2026-12-05)."""
        missing = f"{s3_bucket}-typo"
        task = (
            local_export_operator(f"s3://{missing}/exports/run-1", output_conn_id="aws_default")
            if operator == "export"
            else member_operator(tmp_path, output_path=f"s3://{missing}/histories/", output_conn_id="aws_default")
        )
        with pytest.raises(LoyaltyStorageError, match=rf"the bucket '{missing}' of s3://{missing}/.* does not exist"):
            task.execute(context_for())
        assert missing not in [bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]]


class TestOutputFormats:
    """csv.gz and parquet through both export operators, verified and read back; lineage."""

    @pytest.fixture
    def loyalty_emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.05)

    @pytest.fixture
    def emulator(self, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
        point_connection_at(monkeypatch, loyalty_emulator)
        return loyalty_emulator

    @pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
    def test_a_compressed_or_columnar_export_lands_locally_and_verifies(self, emulator, tmp_path: Path, output_format):
        if output_format == "parquet":
            pytest.importorskip("pyarrow")
        manifest = LoyaltyExportOperator(
            task_id="export",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            output_path=str(tmp_path),
            output_format=output_format,
            poll_interval=0.05,
            deferrable=False,
            verify=True,  # verify_manifest runs right after the manifest is written
        ).execute(context_for())
        assert manifest["output_format"] == output_format
        names = [Path(part["key"]).name for part in manifest["parts"]]
        assert names == [f"part-{index:05d}.{output_format}" for index in range(len(names))]
        assert ids_of([(tmp_path / name).read_bytes() for name in names], output_format) == all_transaction_ids(
            emulator
        )
        report = verify_manifest(str(tmp_path))
        assert report.intact and report.rows == 2500, report.to_text()

    @pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
    def test_a_compressed_or_columnar_export_lands_in_s3_and_verifies(
        self, emulator, s3_bucket, s3_client, output_format
    ):
        if output_format == "parquet":
            pytest.importorskip("pyarrow")
        manifest = LoyaltyTransactionsToS3Operator(
            task_id="export",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            s3_bucket=s3_bucket,
            s3_key_prefix=PREFIX,
            output_format=output_format,
            poll_interval=0.05,
            deferrable=False,
            verify=True,
        ).execute(context_for())
        payloads = [
            s3_client.get_object(Bucket=s3_bucket, Key=part["key"])["Body"].read() for part in manifest["parts"]
        ]
        for part, payload in zip(manifest["parts"], payloads, strict=True):
            assert part["key"].endswith(f".{output_format}") and part["bytes"] == len(payload)
        assert ids_of(payloads, output_format) == all_transaction_ids(emulator)
        assert verify_manifest(manifest["manifest"]).intact

    def test_parquet_reads_every_rfc3339_shape_the_server_may_send(self, emulator, tmp_path: Path):
        """Lower case, a space for T, offsets, fractions after . or , and :60 land as the instants
        the CSV says (read by an independent parser), to the microsecond."""
        pq = pytest.importorskip("pyarrow.parquet")
        emulator.config = dataclasses.replace(emulator.config, csv_style="rfc3339_shapes")
        manifests = {
            output_format: LoyaltyExportOperator(
                task_id="export",
                loyalty_program_id=123,
                points_currency_eid="bonus_points",
                output_path=str(tmp_path / output_format),
                output_format=output_format,
                poll_interval=0.05,
                deferrable=False,
            ).execute(context_for())
            for output_format in ("csv", "parquet")
        }
        texts: list[dict[str, str]] = []
        for part in manifests["csv"]["parts"]:
            texts.extend(
                csv.DictReader(io.StringIO((tmp_path / "csv" / Path(part["key"]).name).read_text(), newline=""))
            )
        table = [
            row
            for part in manifests["parquet"]["parts"]
            for row in pq.read_table(tmp_path / "parquet" / Path(part["key"]).name).to_pylist()
        ]
        assert len(table) == len(texts) == 2500
        shapes = {text[name] for text in texts for name in ("created_at", "activation_date", "expiration_date")}
        assert any(" " in shape and "+05:30" in shape for shape in shapes) and "2016-12-31T23:59:60Z" in shapes
        assert any("," in shape for shape in shapes) and any(shape.endswith("z") for shape in shapes)
        for text, row in zip(texts, table, strict=True):
            for name in ("created_at", "activation_date", "expiration_date"):
                assert row[name] == _reference_rfc3339(text[name]), (name, text[name])

    def test_a_value_parquet_cannot_type_fails_at_once_without_creating_the_batch_again(
        self, emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        pytest.importorskip("pyarrow")
        from airflow_provider_loyalty.export import part_formats

        monkeypatch.setitem(part_formats.PARQUET_TYPES, "transaction_type", "int64")  # "accrual" is text
        with pytest.raises(LoyaltyOutputFormatError, match="parquet column 'transaction_type' expects an integer"):
            LoyaltyExportOperator(
                task_id="export",
                loyalty_program_id=123,
                points_currency_eid="bonus_points",
                output_path=str(tmp_path),
                output_format="parquet",
                poll_interval=0.05,
                deferrable=False,
            ).execute(context_for())
        cursors = [task["from_id"] for task in emulator.export_tasks()]
        assert cursors[0] is None and len(cursors) == len(set(cursors))  # no batch was created again
        assert not (tmp_path / "_manifest.json").exists()

    def test_csv_gz_stores_far_fewer_bytes_than_csv(self, emulator, tmp_path: Path):
        sizes: dict[str, Any] = {}
        for output_format in ("csv", "csv.gz"):
            manifest = LoyaltyExportOperator(
                task_id="export",
                loyalty_program_id=123,
                points_currency_eid="bonus_points",
                output_path=str(tmp_path / output_format.replace(".", "_")),
                output_format=output_format,
                poll_interval=0.05,
                deferrable=False,
            ).execute(context_for())
            sizes[output_format] = manifest["total_bytes"]
        assert sizes["csv.gz"] * 3 < sizes["csv"]

    @pytest.mark.parametrize("folder", ["", "day#1?x=2"], ids=["plain", "hash-and-question-mark"])
    def test_the_file_export_has_one_lineage_output_per_export(self, emulator, tmp_path: Path, folder: str):
        pytest.importorskip("airflow.providers.openlineage")
        tmp_path = tmp_path / folder if folder else tmp_path
        operator = LoyaltyExportOperator(
            task_id="export",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            output_path=str(tmp_path),
            poll_interval=0.05,
            deferrable=False,
        )
        manifest = operator.execute(context_for())
        lineage = operator.get_openlineage_facets_on_complete(None)
        assert [(source.namespace, source.name) for source in lineage.inputs] == [
            (emulator.url, "loyalty_program/123/points_transactions")
        ]
        assert [(out.namespace, out.name) for out in lineage.outputs] == [("file", str(tmp_path))]
        assert len(manifest["parts"]) == 3  # three parts, one dataset
        assert json.loads((tmp_path / "_manifest.json").read_text())["manifest"] == f"file://{tmp_path}/_manifest.json"

    def test_lineage_at_the_start_and_after_an_early_failure_names_the_input_and_no_other_output(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch
    ):
        """Without lineage at the start (or with none after a failure) OpenLineage fell back to the
        task's outlets: every export showed a second output, a node it never writes (probe). The
        program is the one the request sends ("0123" is 123), and a connection that cannot be read
        names the connection instead of failing the lineage."""
        pytest.importorskip("airflow.providers.openlineage")
        operator = local_export_operator(tmp_path / "out", loyalty_program_id="0123")
        for lineage in (operator.get_openlineage_facets_on_start(), operator.get_openlineage_facets_on_complete(None)):
            assert [(source.namespace, source.name) for source in lineage.inputs] == [
                (emulator.url, "loyalty_program/123/points_transactions")
            ]
            assert lineage.outputs == []
        monkeypatch.delenv("AIRFLOW_CONN_LOYALTY_DEFAULT")
        lineage = operator.get_openlineage_facets_on_complete(None)
        assert [(source.namespace, source.name) for source in lineage.inputs] == [
            ("loyalty://loyalty_default", "loyalty_program/123/points_transactions")
        ]
        unrendered = local_export_operator(tmp_path / "x", loyalty_conn_id="{{ var.value.c }}")
        assert unrendered.get_openlineage_facets_on_complete(None).inputs == []  # a failed rendering: no bogus node


LINK_DAG_SOURCE = """
import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

PERIOD = {"date_from": "2023-09-01", "date_to": "2023-09-30", "poll_interval": 0.1, "deferrable": False}
CURRENCY = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points"}

with DAG("loyalty_manifest_links", schedule=None, start_date=pendulum.datetime(2023, 9, 1, tz="UTC")) as dag:
    LoyaltyExportOperator(task_id="to_disk", output_path=os.environ["LOYALTY_TEST_DIR"], **CURRENCY, **PERIOD)
    LoyaltyTransactionsToS3Operator(
        task_id="to_s3", s3_bucket=os.environ["LOYALTY_TEST_BUCKET"], s3_key_prefix="links/2023-09", **CURRENCY, **PERIOD
    )
    LoyaltyExportOperator(
        task_id="deferred", output_path=os.environ["LOYALTY_TEST_DIR"] + "-deferred", **CURRENCY,
        **{**PERIOD, "deferrable": True},
    )
    LoyaltyExportOperator(
        task_id="fails", output_path=os.environ["LOYALTY_TEST_DIR"] + "-fails", loyalty_program_id=999,
        points_currency_eid="bonus_points", **PERIOD,
    )
"""


def test_the_manifest_link_opens_the_manifest_each_export_wrote(airflow_db, s3_server, s3_bucket, tmp_path):
    """Issue 18.3: the task view's "Export manifest" link, as Airflow computes it at the end of a real
    ``dag.test()`` run (``get_link`` with the task instance's key, reading the URL the task pushed)
    and stores it as the ``_link_LoyaltyManifestLink`` XCom: the S3 console URL of the manifest for
    an S3 export, the manifest's ``file://`` URL for a local one."""
    import sqlite3
    import textwrap

    from airflow_provider_loyalty.operators.links import LoyaltyManifestLink
    from tests.support.dag_runner import run_dag_test

    dag_file = tmp_path / "dags" / "loyalty_manifest_links.py"
    dag_file.parent.mkdir()
    dag_file.write_text(textwrap.dedent(LINK_DAG_SOURCE))
    local = tmp_path / "export"
    with LoyaltyEmulator(EmulatorConfig(transactions=600, batch_size=250, task_duration=0.3)) as emulator:
        connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
        env = {
            "AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection),
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(s3_server),
            "LOYALTY_TEST_DIR": str(local),
            "LOYALTY_TEST_BUCKET": s3_bucket,
        }
        outcome = run_dag_test(dag_file, "loyalty_manifest_links", env)
    assert outcome.tasks == {"to_disk": "success", "to_s3": "success", "deferred": "success", "fails": "failed"}, (
        outcome.output[-4000:]
    )
    assert "Pausing task as DEFERRED" in outcome.output  # the deferrable export did defer
    # Airflow asks every link for its URL when a task defers or fails too: read from a return value
    # that did not exist yet, each time logged an error that read like a second failure.
    assert "XCom not found" not in outcome.output
    with sqlite3.connect(Path(airflow_db) / "airflow.db") as db:
        stored = db.execute(
            "SELECT task_id, key, value FROM xcom WHERE dag_id = 'loyalty_manifest_links' AND key IN (?, ?)",
            (LoyaltyManifestLink().xcom_key, "return_value"),
        ).fetchall()
    values = {(task_id, key): json.loads(value) for task_id, key, value in stored}
    links = {task_id: value for (task_id, key), value in values.items() if key != "return_value"}
    assert links.pop("deferred") == f"file://{local}-deferred/_manifest.json"
    assert links.pop("fails", "") == ""  # no manifest: no link
    assert links == {
        "to_s3": f"https://s3.console.aws.amazon.com/s3/object/{s3_bucket}?prefix=links%2F2023-09%2F_manifest.json",
        "to_disk": f"file://{local}/_manifest.json",
    }
    assert values[("to_s3", "return_value")]["manifest"] == f"s3://{s3_bucket}/links/2023-09/_manifest.json"
    assert values[("to_disk", "return_value")]["manifest"] == links["to_disk"]
    assert json.loads((local / "_manifest.json").read_text())["total_rows"] == 600


class TestLoyaltyAccountTransactionsOperator:
    """LoyaltyAccountTransactionsOperator: a member's whole history as JSON Lines, mappable."""

    @pytest.fixture
    def loyalty_emulator_config(self) -> EmulatorConfig:
        return EmulatorConfig(member_history_sizes=[250, 3, 0, 42, 1])

    @pytest.fixture(params=["json", "xml"])
    def emulator(self, request, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
        point_connection_at(monkeypatch, loyalty_emulator, content_type=request.param)
        return loyalty_emulator

    @pytest.mark.parametrize("under", ["a-file.jsonl/", "a-file.jsonl/sub/member.jsonl", "a-file.jsonl/member.jsonl"])
    def test_an_output_path_no_file_can_be_written_at_is_refused_before_any_request(
        self, emulator: LoyaltyEmulator, tmp_path, under
    ):
        """Under an existing file: refused naming ``output_path`` before the history is fetched, not
        with the OS's words after it was (a directory the worker cannot write is refused alike)."""
        (tmp_path / "a-file.jsonl").write_text("an earlier history\n")
        with pytest.raises(LoyaltyValidationError, match=r"output_path: .* cannot be written: .* is a file"):
            member_operator(tmp_path, output_path=f"{tmp_path}/{under}").execute({})
        assert requests_seen(emulator) == 0
        assert (tmp_path / "a-file.jsonl").read_text() == "an earlier history\n"

    def test_250_transactions_in_3_pages(self, emulator: LoyaltyEmulator, tmp_path):
        result = member_operator(tmp_path).execute({})
        assert result["rows"] == 250
        assert result["total_count"] == 250
        records = read_jsonl(result["path"])
        ids = [record["transaction_id"] for record in records]
        assert len(set(ids)) == 250
        assert ids == sorted(ids)
        assert requests_seen(emulator, "account") == 3
        assert isinstance(records[0]["amount"], str)  # exact decimal text, never a float
        assert isinstance(records[0]["canceled"], bool)

    @pytest.mark.parametrize(("cursor_mode", "dropped"), [("exclusive", 0), ("inclusive", 2), ("next_row", 0)])
    def test_every_transaction_once_whichever_way_the_api_reads_from_id(
        self, emulator: LoyaltyEmulator, tmp_path, cursor_mode, dropped
    ):
        """Seed 001 does not say whether ``from_id`` is inclusive. An API that reads it so starts
        each page with the previous page's last record: it was written twice, and the count
        check then refused a complete history (252 rows against a total_count of 250)."""
        emulator.config.cursor_mode = cursor_mode
        result = member_operator(tmp_path).execute({})
        ids = [record["transaction_id"] for record in read_jsonl(result["path"])]
        assert len(ids) == len(set(ids)) == result["rows"] == result["total_count"] == 250
        assert ids == sorted(ids)
        assert result["duplicates_dropped"] == dropped

    @pytest.mark.parametrize(
        "member",
        [
            {"matching": "phone", "member_email": None, "phone": "+15550000003"},
            {"matching": "profile_id", "member_email": None, "profile_id": "profile_3"},
            {"matching": "custom", "member_email": None, "field_name": "user_id", "field_value": 3},
        ],
    )
    def test_each_matching_mode(self, emulator: LoyaltyEmulator, tmp_path, member):
        assert member_operator(tmp_path, limit=20, **member).execute({})["rows"] == 42

    def test_an_output_path_pasted_with_a_newline_is_the_file_it_names(self, emulator: LoyaltyEmulator, tmp_path):
        result = member_operator(tmp_path, output_path=f"{tmp_path}/member.jsonl\n").execute({})
        assert sorted(path.name for path in tmp_path.iterdir()) == ["member.jsonl"]
        assert len(read_jsonl(result["path"])) == result["rows"] == 250
        with pytest.raises(LoyaltyValidationError, match="output_path: required"):
            member_operator(tmp_path, output_path="  ")

    @pytest.mark.parametrize(
        "member",
        [
            {"matching": " EMAIL\n", "member_email": " member3@example.com\n"},
            {"matching": "phone", "member_email": None, "phone": "+15550000003\n"},
            {"matching": "Custom", "member_email": None, "field_name": " user_id ", "field_value": "3\n"},
        ],
    )
    def test_a_member_pasted_with_whitespace_is_the_same_member(self, emulator: LoyaltyEmulator, tmp_path, member):
        """The emulator, like the API, finds no member " member3@example.com\\n"."""
        assert member_operator(tmp_path, limit=20, **member).execute({})["rows"] == 42

    @pytest.mark.parametrize(
        ("member", "parameter"),
        [
            ({"member_email": "member3@example.com\nmember4@example.com"}, "member_email"),
            ({"matching": "phone", "member_email": None, "phone": "+1555\t0000003"}, "phone"),
            ({"matching": "custom", "member_email": None, "field_name": "user\r\nid", "field_value": 3}, "field_name"),
            (
                {"matching": "custom", "member_email": None, "field_name": "user_id", "field_value": "3\x00"},
                "field_value",
            ),
            ({"points_currency_eid": "bonus\npoints"}, "points_currency_eid"),
        ],
    )
    def test_a_control_character_inside_a_value_is_refused_before_any_request(
        self, emulator: LoyaltyEmulator, tmp_path, member, parameter
    ):
        """Surrounding blanks are a paste; one inside names no member (or currency) the API has."""
        with pytest.raises(LoyaltyValidationError, match=rf"^{parameter}: .* holds the control character"):
            member_operator(tmp_path, **member).execute({})
        assert requests_seen(emulator) == 0

    @pytest.mark.parametrize(
        ("member", "parameter"),
        [
            ({"member_email": "{{ params.missing }}"}, "member_email"),
            ({"matching": "phone", "member_email": None, "phone": "{{ params.missing }}"}, "phone"),
            ({"matching": "profile_id", "member_email": None, "profile_id": "{{ params.missing }}"}, "profile_id"),
            ({"points_currency_eid": "{{ params.missing }}"}, "points_currency_eid"),
        ],
    )
    def test_a_template_of_a_missing_value_is_refused_before_any_request(
        self, emulator: LoyaltyEmulator, tmp_path, member, parameter
    ):
        """``{{ params.x }}`` with ``x`` unset renders the text ``None``: the API would answer "member
        not found" or a bad request, hiding the template's mistake."""
        operator = member_operator(tmp_path, **member)
        context = {"params": {"missing": None}}
        operator.render_template_fields(context)
        with pytest.raises(LoyaltyValidationError, match=rf"^{parameter}: rendered to the text 'None'"):
            operator.execute(context)
        assert requests_seen(emulator) == 0

    def test_templated_connection_ids_are_rendered_then_checked(self, emulator: LoyaltyEmulator, tmp_path, monkeypatch):
        point_connection_at(monkeypatch, emulator, conn_id="loyalty_eu")
        operator = member_operator(
            tmp_path, loyalty_conn_id="loyalty_{{ params.region }}", output_conn_id="{{ params.fs }}"
        )
        operator.render_template_fields({"params": {"region": "eu", "fs": ""}})
        assert operator.execute({})["rows"] > 0
        refused = member_operator(tmp_path / "other", output_conn_id="{{ params.fs }}")
        refused.render_template_fields({"params": {"fs": None}})
        seen = requests_seen(emulator)
        with pytest.raises(LoyaltyValidationError, match=r"^output_conn_id: rendered to the text 'None'"):
            refused.execute({})
        assert requests_seen(emulator) == seen

    def test_member_without_transactions_and_unknown_member(self, emulator: LoyaltyEmulator, tmp_path):
        empty = member_operator(tmp_path, member_email="member2@example.com").execute({})
        assert (empty["rows"], empty["total_count"]) == (0, 0)
        with pytest.raises(LoyaltyNotFoundError):
            member_operator(tmp_path, member_email="nobody@example.com").execute({})

    @pytest.mark.parametrize(
        "fault",
        [
            FaultRule(endpoint="account", kind="http_503"),  # beyond the connection's retries
            FaultRule(endpoint="account", kind="api_error", params={"code": 1001, "text": "Invalid token"}),
        ],
        ids=["503-beyond-retries", "api-error"],
    )
    def test_a_failed_rerun_keeps_the_previous_file(self, emulator: LoyaltyEmulator, tmp_path, fault):
        """Issue 13.2: a re-run whose API now fails raises; the previous history file stays
        byte-identical and no temporary file is left beside it."""
        first = member_operator(tmp_path).execute({})
        previous = (tmp_path / "member.jsonl").read_bytes()
        assert first["rows"] == 250 and previous.count(b"\n") == 250
        emulator.set_faults([fault])
        with pytest.raises(LoyaltyError):
            member_operator(tmp_path).execute({})
        assert emulator.stats()["faults_applied"].get(fault.kind, 0) >= 1
        assert (tmp_path / "member.jsonl").read_bytes() == previous
        assert sorted(path.name for path in tmp_path.iterdir()) == ["member.jsonl"]

    def test_openlineage_names_the_api_input_and_the_history_file(self, emulator: LoyaltyEmulator, tmp_path):
        """Issue 18.3: the member operator's lineage is the API's transactions in, the one file out."""
        pytest.importorskip("airflow.providers.openlineage")
        operator = member_operator(tmp_path)
        result = operator.execute({})
        lineage = operator.get_openlineage_facets_on_complete(None)
        assert [(source.namespace, source.name) for source in lineage.inputs] == [
            (emulator.url, "loyalty_program/123/points_transactions")
        ]
        assert [(out.namespace, out.name) for out in lineage.outputs] == [("file", str(tmp_path / "member.jsonl"))]
        assert result["path"] == f"file://{tmp_path / 'member.jsonl'}"
        assert emulator.token not in repr(lineage)

    def test_a_file_url_without_slashes_is_the_file_it_names(
        self, emulator: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.chdir(tmp_path)
        result = member_operator(tmp_path, output_path=f"file://localhost{tmp_path}/histories/").execute({})
        assert result["path"].startswith(f"file://{tmp_path}/histories/") and result["rows"] > 0
        assert sorted(path.name for path in tmp_path.iterdir()) == ["histories"]

    def test_directory_output_names_files_without_pii(self, emulator: LoyaltyEmulator, tmp_path):
        result = member_operator(tmp_path, output_path=f"{tmp_path}/members/").execute({})
        assert "member0" not in result["path"]
        assert result["path"].endswith(".jsonl")

    def test_a_directory_holds_one_file_per_program_currency_and_member(self, emulator: LoyaltyEmulator, tmp_path):
        """One member's histories in two currencies (or programs), as ``.expand(points_currency_eid=[...])``
        writes them into one directory, are two files: the second overwrote the first."""
        directory = f"{tmp_path}/members/"
        paths = set()
        for kwargs in (
            {},
            {"points_currency_eid": None, "points_currency_iid": 1},
            {"member_email": "member1@example.com"},
            {"loyalty_program_id": 124},
        ):
            emulator.config.loyalty_program_id = kwargs.get("loyalty_program_id", 123)
            paths.add(member_operator(tmp_path, output_path=directory, **kwargs).execute({})["path"])
        assert len(paths) == 4 and len(list((tmp_path / "members").glob("member-*.jsonl"))) == 4

    def test_a_hand_made_context_of_a_mapped_task_without_its_dag_task_writes_the_file(
        self, emulator: LoyaltyEmulator, tmp_path
    ):
        """The one-file check reads the task from the context's DAG; a context made by hand (a
        user's own test) may name a DAG without it: the history is written, no TaskNotFound."""
        from types import SimpleNamespace

        context = {"ti": SimpleNamespace(map_index=0), "dag": SimpleNamespace(task_dict={})}
        result = member_operator(tmp_path).execute(context)
        assert result["rows"] > 0 and result["path"].endswith("/member.jsonl")

    def test_an_emails_letter_case_is_one_member_file(self, emulator: LoyaltyEmulator, tmp_path):
        """``MEMBER0@example.com`` and ``member0@example.com`` are one member to the API; they were
        two files in one directory (probe of 2026-12-05)."""
        directory = f"{tmp_path}/members/"
        paths = {
            member_operator(tmp_path, output_path=directory, member_email=email).execute({})["path"]
            for email in ("member0@example.com", "MEMBER0@Example.COM", " Member0@example.com ")
        }
        assert len(paths) == 1 and len(list((tmp_path / "members").glob("member-*.jsonl"))) == 1

    def test_a_path_of_an_existing_directory_without_its_slash_is_a_directory(
        self, emulator: LoyaltyEmulator, tmp_path
    ):
        """``output_path="/data/members"`` naming a directory failed with IsADirectoryError once the
        whole history was fetched (and again on each retry)."""
        (tmp_path / "members").mkdir()
        result = member_operator(tmp_path, output_path=f"{tmp_path}/members").execute({})
        assert result["path"].startswith(f"file://{tmp_path}/members/member-") and result["rows"] > 0
        assert len(list((tmp_path / "members").glob("member-*.jsonl"))) == 1

    def test_a_custom_field_value_as_a_number_or_as_text_is_one_member_file(self):
        """``field_value="{{ params.uid }}"`` renders 3 with native rendering, "3" without: the same
        member got two files in one directory."""
        from airflow_provider_loyalty.operators.loyalty import _history_file_name

        key = {"loyalty_program_id": 123, "points_currency_eid": "b", "matching": "custom", "field_name": "uid"}
        as_number, as_text = ({**key, "field_value": value} for value in (3, "3"))
        assert _history_file_name(as_number) == _history_file_name(as_text)
        assert _history_file_name(as_text) != _history_file_name({**key, "field_value": "4"})

    def test_an_object_storage_path_of_a_directory_is_a_directory(self, emulator: LoyaltyEmulator, tmp_path):
        """``ObjectStoragePath`` drops a trailing ``/``: one naming an existing directory still is one."""
        (tmp_path / "members").mkdir()
        first = member_operator(tmp_path, output_path=ObjectStoragePath(f"file://{tmp_path}/members/")).execute({})
        second = member_operator(
            tmp_path, output_path=ObjectStoragePath(f"file://{tmp_path}/members"), member_email="member1@example.com"
        ).execute({})
        assert first["path"] != second["path"]
        assert sorted(p.name for p in (tmp_path / "members").iterdir()) == sorted(
            [first["path"].rsplit("/", 1)[1], second["path"].rsplit("/", 1)[1]]
        )

    @pytest.mark.parametrize(
        ("kwargs", "parameter"),
        [
            ({"matching": "nickname"}, "matching"),
            ({"matching": "phone", "member_email": None}, "phone"),
            ({"matching": "custom", "member_email": None, "field_name": "user_id"}, "field_value"),
            ({"matching": "custom", "member_email": None, "field_value": 1}, "field_name"),
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"points_currency_iid": 1}, "points_currency_eid/points_currency_iid"),
        ],
    )
    def test_validation_at_task_start_sends_nothing(self, emulator: LoyaltyEmulator, tmp_path, kwargs, parameter):
        with pytest.raises(LoyaltyValidationError) as err:
            member_operator(tmp_path, **kwargs).execute({})
        assert err.value.parameter == parameter
        assert requests_seen(emulator) == 0


@pytest.mark.parametrize(
    ("pages", "rows", "refused"),
    [
        # the whole history, and the member earns a transaction between page 1 and page 2
        ([(["t1"], "t1", 1), (["t2"], "", 2)], 2, None),
        # the transactions after each page's from_id: 5, then 3, then 1 left
        ([(["t1", "t2"], "t2", 5), (["t3", "t4"], "t4", 3), (["t5"], "", 1)], 5, None),
        ([(["t1"], "t1", 3), (["t2"], "", 3)], 2, "total_count says 3$"),
        ([(["t1"], "t1", 4), (["t2"], "", 3)], 2, "says 4 on the first page and 3 on the last"),
    ],
    ids=["grows-mid-walk", "counted-after-from-id", "short", "neither-reading"],
)
def test_a_member_history_is_checked_against_either_reading_of_total_count(
    monkeypatch, tmp_path, pages, rows, refused
) -> None:
    """Seed 001 says only "Total number of transactions": the member's whole history (the last
    page's count, which may grow during the walk) or the transactions after ``from_id`` (the first
    page's). A history complete under either reading is written; one that matches neither is not."""
    from tests.reliability.support import fake_api, loopback_server

    pages = iter(pages)

    def respond(handler, server) -> None:
        if not handler.path.endswith("/account/transactions"):
            return fake_api()(handler, server)
        ids, cursor, total = next(pages)
        records = [{"transaction_id": transaction_id} for transaction_id in ids]
        body = json.dumps({"data": records, "next_from_id": cursor, "total_count": total, "error": 0}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "t0ken", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        if refused:
            with pytest.raises(LoyaltyVerificationError, match=refused):
                member_operator(tmp_path).execute({})
            assert not (tmp_path / "member.jsonl").exists()
            return
        result = member_operator(tmp_path).execute({})
    assert (result["rows"], result["total_count"]) == (rows, rows)
    assert [record["transaction_id"] for record in read_jsonl(result["path"])] == [f"t{n}" for n in range(1, rows + 1)]


def test_a_history_that_outgrows_every_total_count_stops_at_once(monkeypatch, tmp_path) -> None:
    """A server sending one more record under a new cursor on every page, past its total_count of
    1, was followed to its end (if any): the walk stops once the rows pass every count given (read
    from the cursor on, the history may have doubled during the walk, no more)."""
    from tests.reliability.support import fake_api, loopback_server, send

    served: list[int] = []

    def respond(handler, server) -> None:
        if not handler.path.endswith("/account/transactions"):
            return fake_api()(handler, server)
        served.append(1)
        records = [{"transaction_id": f"t{len(served)}"}]
        document = {"data": records, "next_from_id": f"c{len(served)}", "total_count": 1, "error": 0}
        send(handler, 200, json.dumps(document).encode(), "application/json")

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "t0ken", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        with pytest.raises(LoyaltyVerificationError, match="3 transactions so far, more than any total_count"):
            member_operator(tmp_path).execute({})
    assert len(served) == 3
    assert not (tmp_path / "member.jsonl").exists()


@pytest.mark.parametrize("earned_after_page", [0, 1])  # 0: before the walk (a control)
def test_a_history_that_grows_during_the_walk_is_complete_with_counts_from_the_cursor_on(
    monkeypatch, tmp_path, earned_after_page: int
) -> None:
    """total_count read as the transactions from the page's from_id on (one of the two readings
    seed 001 allows): the member earns one while the history is paged. Rows before each page plus
    its count are the history that page saw; the walk wrote all 5 once, in order: complete. It
    failed with "5 transactions so far, more than any total_count the API gave (at most 4)"."""
    from tests.reliability.support import fake_api, loopback_server, send

    history = ["t1", "t2", "t3", "t4"]
    pages = 0

    def respond(handler, server) -> None:
        nonlocal pages
        if not handler.path.endswith("/account/transactions"):
            return fake_api()(handler, server)
        pages += 1
        if pages == earned_after_page + 1 and len(history) == 4:
            history.append("t5")
        body = json.loads(server.requests[-1].body)
        start = history.index(body["from_id"]) + 1 if body.get("from_id") else 0
        page = history[start : start + 2]
        more = start + len(page) < len(history)
        document = {
            "data": [{"transaction_id": record} for record in page],
            "next_from_id": page[-1] if more else "",
            "total_count": len(history) - start,
            "error": 0,
        }
        send(handler, 200, json.dumps(document).encode(), "application/json")

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "t0ken", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        result = member_operator(tmp_path, limit=2).execute({})
    written = [json.loads(line)["transaction_id"] for line in (tmp_path / "member.jsonl").read_text().splitlines()]
    assert written == ["t1", "t2", "t3", "t4", "t5"]
    assert (result["rows"], result["total_count"]) == (5, 5)


def _validation() -> Any:
    from airflow_provider_loyalty.utils import validation

    return validation


@pytest.mark.parametrize(
    ("parameter", "check"),
    [
        ("loyalty_program_id", lambda value: _validation().check_program_id(value)),
        ("points_currency_iid", lambda value: _validation().check_currency(None, value)),
        ("limit", lambda value: _validation().check_limit(value)),
        ("max_batches", lambda value: _validation().parse_count(value, "max_batches")),
    ],
)
@pytest.mark.parametrize("value", ["²", "١٢٣", " ³ "])
def test_digits_other_than_ascii_are_refused_naming_the_parameter(parameter: str, check: Any, value: str) -> None:
    """'²'.isdigit() is true and int('²') fails: a raw ValueError at DAG parse named nothing."""
    with pytest.raises(LoyaltyValidationError) as refused:
        check(value)
    assert refused.value.parameter == parameter


_SWITCHES = ["deferrable", "resume", "replace", "keep_zip", "fail_on_empty", "verify"]


def _export_operator(**switches: Any) -> LoyaltyExportOperator:
    return LoyaltyExportOperator(
        task_id="switches", loyalty_program_id=123, points_currency_eid="bonus_points", output_path="/tmp/x", **switches
    )


@pytest.mark.parametrize("switch", _SWITCHES)
@pytest.mark.parametrize(("text", "meaning"), [("false", False), ("No", False), ("0", False), (" true ", True)])
def test_a_switch_given_as_text_means_what_it_says(switch: str, text: str, meaning: bool) -> None:
    """'false' from an environment variable or a Variable is truthy text: kept as is, it switched
    the option on (deferred, failed an empty period, verified ...)."""
    assert getattr(_export_operator(**{switch: text}), switch) is meaning


@pytest.mark.parametrize("switch", _SWITCHES)
@pytest.mark.parametrize("value", ["maybe", 2, None, "[]"])
def test_a_switch_that_is_not_true_or_false_is_refused_naming_it(switch: str, value: Any) -> None:
    with pytest.raises(LoyaltyValidationError) as refused:
        _export_operator(**{switch: value})
    assert refused.value.parameter == switch


@pytest.mark.parametrize(("text", "meaning"), [("false", False), ("yes", True)])
def test_the_s3_transfers_encrypt_and_the_sensors_deferrable_read_text_too(text: str, meaning: bool) -> None:
    from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor

    transfer = LoyaltyTransactionsToS3Operator(
        task_id="s3", loyalty_program_id=123, points_currency_eid="bonus_points", s3_bucket="b", encrypt=text
    )
    sensor = LoyaltyExportTaskSensor(task_id="sensor", export_task_id="task_1", deferrable=text)
    assert (transfer.encrypt, sensor.deferrable) == (meaning, meaning)
    with pytest.raises(LoyaltyValidationError, match="encrypt"):
        LoyaltyTransactionsToS3Operator(
            task_id="s3", loyalty_program_id=123, points_currency_eid="bonus_points", s3_bucket="b", encrypt="maybe"
        )


_EXPORT_BASE = {"task_id": "mapped", "output_path": "/tmp/x"}


@pytest.mark.parametrize(
    ("partial_kwargs", "parameter"),
    [
        ({"loyalty_program_id": 0, "points_currency_eid": "bonus_points"}, "loyalty_program_id"),
        (
            {"loyalty_program_id": 123, "points_currency_eid": "b", "points_currency_iid": 1},
            "points_currency_eid/points_currency_iid",
        ),
        ({"loyalty_program_id": 123, "points_currency_iid": -1}, "points_currency_iid"),
        ({"loyalty_program_id": 123, "date_from": "2023-09-30", "date_to": "2023-09-01"}, "date_from/date_to"),
        ({"loyalty_program_id": 123, "date_to": "2023-13-01"}, "date_to"),
        ({"loyalty_program_id": 123, "from_id": "a\tb"}, "from_id"),
        ({"loyalty_program_id": 123, "output_format": "xlsx"}, "output_format"),
        ({"loyalty_program_id": 123, "verify": "maybe"}, "verify"),
        ({"loyalty_program_id": 123, "poll_interval": 0}, "poll_interval"),
        ({"loyalty_program_id": 123, "max_batches": 0}, "max_batches"),
        ({"loyalty_program_id": 123, "batch_timeout": -5}, "batch_timeout"),
        ({"loyalty_program_id": 123, "max_download_bytes": 0}, "max_download_bytes"),
        ({"loyalty_program_id": 123, "max_download_bytes": 0.5}, "max_download_bytes"),  # was cut to 0
        ({"loyalty_program_id": 123, "max_uncompressed_bytes": "big"}, "max_uncompressed_bytes"),
        ({"loyalty_program_id": 123, "max_uncompressed_bytes": 1e9 + 0.5}, "max_uncompressed_bytes"),
        ({"loyalty_program_id": 123, "max_compression_ratio": "x"}, "max_compression_ratio"),
        ({"loyalty_program_id": 123, "output_path": "   "}, "output_path"),
        ({"loyalty_program_id": 123, "output_path": "/tmp/x/_staging"}, "output_path"),
    ],
)
def test_partial_refuses_literal_values_at_dag_parse_as_the_constructor_does(
    partial_kwargs: dict[str, Any], parameter: str
) -> None:
    """``.partial()`` does not run the constructor: its literal values went unchecked until each
    mapped task started."""
    with pytest.raises(LoyaltyValidationError) as refused:
        LoyaltyExportOperator.partial(**{**_EXPORT_BASE, **partial_kwargs})
    assert refused.value.parameter.startswith(parameter.split("/")[0]), refused.value
    currency = (
        {} if {"points_currency_eid", "points_currency_iid"} & set(partial_kwargs) else {"points_currency_eid": "b"}
    )
    with pytest.raises(LoyaltyValidationError) as by_constructor:  # the same check, the same error
        LoyaltyExportOperator(**{**_EXPORT_BASE, **currency, **partial_kwargs})
    assert by_constructor.value.parameter == refused.value.parameter


@pytest.mark.parametrize(
    ("partial_kwargs", "parameter"),
    [
        ({"matching": "nme"}, "matching"),
        ({"matching": "email", "limit": 500}, "limit"),
        ({"matching": "email", "output_path": " "}, "output_path"),
    ],
)
def test_the_member_operators_partial_refuses_literal_settings_at_dag_parse(
    partial_kwargs: dict[str, Any], parameter: str
) -> None:
    values = {"task_id": "m", "loyalty_program_id": 123, "points_currency_eid": "b", "output_path": "/tmp/x/"}
    with pytest.raises(LoyaltyValidationError) as refused:
        LoyaltyAccountTransactionsOperator.partial(**{**values, **partial_kwargs})
    assert refused.value.parameter == parameter


def test_partial_leaves_mapped_and_templated_values_for_run_time() -> None:
    mapped = LoyaltyExportOperator.partial(
        **_EXPORT_BASE, loyalty_program_id="{{ params.program }}", points_currency_eid="bonus_points"
    ).expand(date_from=["2023-09-01", "2023-10-01"])
    assert mapped.partial_kwargs["points_currency_eid"] == "bonus_points"
    # only one currency id given to partial(), the other to expand(): the pair is checked at run time
    LoyaltyAccountTransactionsOperator.partial(
        task_id="m", loyalty_program_id=123, matching="email", output_path="/tmp/x/", points_currency_eid="b"
    ).expand(member_email=["a@example.com"])


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"matching": "email", "email": "customer@example.com"}, "member_email"),  # the alert list, not the member
        ({"matching": "custom", "field_name": "user_id"}, "field_value"),
        ({"matching": "email", "member_email": "a@example.com", "loyalty_program_id": 0}, "loyalty_program_id"),
        (
            {"matching": "email", "member_email": "a@example.com", "points_currency_iid": 1},
            "points_currency_eid/points_currency_iid",
        ),
    ],
)
def test_the_member_operator_refuses_literal_values_at_dag_parse(kwargs: dict[str, Any], parameter: str) -> None:
    """Checked only at task start, ``email=`` parsed, and the failure alert then went to the customer."""
    values = {"task_id": "member", "loyalty_program_id": 123, "points_currency_eid": "b", "output_path": "/tmp/x/"}
    with pytest.raises(LoyaltyValidationError) as refused:
        LoyaltyAccountTransactionsOperator(**{**values, **kwargs})
    assert refused.value.parameter == parameter


def test_the_member_operator_leaves_templated_member_fields_for_run_time() -> None:
    operator = LoyaltyAccountTransactionsOperator(
        task_id="member", loyalty_program_id=123, points_currency_eid="b", output_path="/tmp/x/",
        matching="email", member_email="{{ params.member }}",
    )  # fmt: skip
    assert operator.member_email == "{{ params.member }}"


@pytest.mark.parametrize("value", [2**63, "9" * 23])
@pytest.mark.parametrize("parameter", ["loyalty_program_id", "points_currency_iid"])
def test_an_id_past_the_apis_64_bit_integers_is_refused_before_any_request(parameter: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"loyalty_program_id": 123, parameter: value}
    if parameter == "loyalty_program_id":
        kwargs["points_currency_eid"] = "b"
    with pytest.raises(LoyaltyValidationError) as refused:
        LoyaltyExportOperator(**_EXPORT_BASE, **kwargs)
    assert refused.value.parameter == parameter
    assert LoyaltyExportOperator(**{**_EXPORT_BASE, **kwargs, parameter: 2**63 - 1})
