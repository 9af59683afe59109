"""LoyaltyTransactionsToS3Operator against the emulator and moto's S3 server (both real servers)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyExportTaskFailed, LoyaltyValidationError
from airflow_provider_loyalty.export.layout import CHECKPOINT_NAME, MANIFEST_NAME
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.testing.s3 import aws_connection_json
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from tests.support.helpers import all_transaction_ids, point_connection_at, wait_for
from tests.support.operator_driver import DeferralLog, context_for, run_with_deferrals, stop_with_on_kill, task_instance

N = 5000
PREFIX = "compliance/2023-09"


def stored_checkpoint(s3_client, s3_bucket: str) -> dict[str, Any] | None:
    """The export's checkpoint as stored in S3 now, or None."""
    try:
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{CHECKPOINT_NAME}")["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None
    return json.loads(body)  # type: ignore[no-any-return]


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=N, batch_size=1000, task_duration=0.05)


@pytest.fixture
def emulator(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator)
    return loyalty_emulator


def make_operator(bucket: str, **kwargs) -> LoyaltyTransactionsToS3Operator:
    params = {
        "task_id": "to_s3",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "s3_bucket": bucket,
        "s3_key_prefix": PREFIX,
        "poll_interval": 0.05,
        "deferrable": False,
        **kwargs,
    }
    return LoyaltyTransactionsToS3Operator(**params)


def keys_under(s3_client, bucket: str, prefix: str = PREFIX) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def ids_in_s3(s3_client, bucket: str, manifest: dict) -> list[str]:
    ids: list[str] = []
    for part in manifest["parts"]:
        body = s3_client.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
        header = next(reader)
        ids.extend(row[header.index("transaction_id")] for row in reader if row)
    return ids


def assert_true_manifest(s3_client, bucket: str, manifest: dict) -> None:
    stored = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{PREFIX}/_manifest.json")["Body"].read())
    assert stored["parts"] == manifest["parts"]
    for part in stored["parts"]:
        body = s3_client.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        assert part["bytes"] == len(body)
        assert part["sha256"] == hashlib.sha256(body).hexdigest()
    assert stored["total_rows"] == sum(part["rows"] for part in stored["parts"])


BAD_LOCATIONS = [
    (
        {"s3_bucket": "s3://compliance/exports"},
        "s3_bucket: expected a bucket name, got the URL",
        "s3_key_prefix='exports'",
    ),
    ({"s3_bucket": "compliance/exports"}, "s3_bucket: 'compliance/exports' is not a bucket name", "s3_key_prefix"),
    ({"s3_key_prefix": "s3://compliance/exports"}, "s3_key_prefix: expected a key prefix, got the URL", "'exports'"),
    ({"s3_key_prefix": "exports//2023-09"}, "s3_key_prefix: 'exports//2023-09' has an empty path segment", "render"),
    ({"s3_key_prefix": "exports/../2023-09"}, "s3_key_prefix: 'exports/../2023-09' has a '.' or '..'", "literal"),
    ({"s3_bucket": ""}, "s3_bucket: required", "bucket"),
    ({"s3_bucket": "None"}, "s3_bucket: rendered to the text 'None'", "missing value"),
    ({"s3_key_prefix": "None"}, "s3_key_prefix: rendered to the text 'None'", "default prefix"),
    ({"s3_key_prefix": "exports/_staging"}, "s3_key_prefix: 'exports/_staging' ends in '_staging'", "bookkeeping"),
    ({"s3_key_prefix": "exports/2023-09\r\nold"}, "s3_key_prefix: 'exports/2023-09", "holds the control character"),
    ({"s3_key_prefix": "档案馆/" * 250}, "s3_key_prefix: the key prefix '档案馆/档案馆", "2499 bytes of UTF-8"),
    # empty once spaces and '/' are dropped: the default prefix was used, where the DAG never said (probe)
    ({"s3_key_prefix": ""}, "s3_key_prefix: '' is empty once surrounding spaces and '/' are dropped", "render empty"),
    ({"s3_key_prefix": " / "}, "s3_key_prefix: ' / ' is empty once", "leave it unset"),
]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"extra_upload_args": {"Bogus": "x"}}, "extra_upload_args: 'Bogus' not among the upload arguments"),
        ({"transfer_config_args": {"bogus": 1}}, "transfer_config_args: not a TransferConfig argument"),
        ({"transfer_config_args": {"multipart_chunksize": "8MB"}}, "multipart_chunksize must be a positive integer"),
        ({"transfer_config_args": {"max_concurrency": 0}}, "max_concurrency must be a positive integer"),
    ],
)
def test_bad_upload_options_fail_when_the_dag_is_parsed(options, message):
    """boto3 would read them only at the first part's upload, after the export's tasks were created."""
    with pytest.raises(LoyaltyValidationError, match=message):
        make_operator("compliance", **options)


@pytest.mark.parametrize("mapped", [False, True])
def test_a_bucket_of_none_fails_naming_it_when_the_dag_is_parsed(mapped):
    """``s3_bucket=os.environ.get("BUCKET")`` with the variable unset: a ``KeyError`` before."""
    arguments = {"task_id": "to_s3", "loyalty_program_id": 123, "points_currency_eid": "bonus_points"}
    with pytest.raises(LoyaltyValidationError, match=r"^s3_bucket: required"):
        if mapped:
            LoyaltyTransactionsToS3Operator.partial(s3_bucket=None, **arguments)
        else:
            make_operator(None)


@pytest.mark.parametrize(("location", "message", "hint"), BAD_LOCATIONS)
def test_a_bad_literal_location_fails_when_the_dag_is_parsed(location, message, hint):
    with pytest.raises(LoyaltyValidationError, match=message.replace("(", r"\(")) as error:
        make_operator("compliance", **location)
    assert hint in str(error.value)


@pytest.mark.parametrize(("location", "message", "hint"), BAD_LOCATIONS)
def test_a_bad_templated_location_fails_before_any_request(emulator, location, message, hint):
    (parameter, value), *_ = location.items()
    operator = make_operator("compliance", **{parameter: "{{ params.where }}"})
    operator.render_template_fields(context_for(params={"where": value}))
    with pytest.raises(LoyaltyValidationError, match=message.replace("(", r"\(")):
        operator.execute(context_for())
    assert emulator.stats()["requests_total"] == 0


@pytest.mark.parametrize(
    ("rendered", "message"),
    [(None, "rendered to None"), ("", "is empty once"), (["a"], "expected a key prefix string, got \\['a'\\]")],
)
def test_a_prefix_template_rendering_to_nothing_or_no_text_is_refused_natively(emulator, rendered, message):
    """With native rendering a template of a missing value gave None, and the export landed at the
    default prefix; a list became the key "['a']" (probe)."""
    operator = make_operator("compliance", s3_key_prefix="{{ params.where }}")
    operator.s3_key_prefix = rendered  # what native rendering gives
    with pytest.raises(LoyaltyValidationError, match=rf"^s3_key_prefix: .*{message}"):
        operator.execute(context_for())
    assert emulator.stats()["requests_total"] == 0


def test_a_prefix_whose_asset_uri_airflow_cannot_store_names_the_prefix_and_the_way_out(emulator):
    """300 CJK characters fit an S3 key (900 bytes) but not an asset URI (2,700 characters encoded):
    Airflow's own error named neither the parameter nor what to do."""
    prefix = "档" * 300
    with pytest.raises(LoyaltyValidationError, match=r"s3_key_prefix: the export's default asset URI would be 2"):
        make_operator("compliance", s3_key_prefix=prefix)
    assert make_operator("compliance", s3_key_prefix=prefix, outlets=[]).outlets == []


def test_a_location_pasted_with_spaces_and_newlines_lands_where_it_says(emulator, s3_bucket, s3_client):
    operator = make_operator(f" {s3_bucket}\n", s3_key_prefix="  /compliance/2023-09/\n")
    manifest = operator.execute(context_for())
    assert manifest["manifest"] == f"s3://{s3_bucket}/{PREFIX}/{MANIFEST_NAME}"
    assert s3_client.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/{MANIFEST_NAME}")["ContentLength"] > 0


def test_multi_batch_export_lands_parts_then_manifest(emulator, s3_bucket, s3_client):
    manifest = make_operator(s3_bucket).execute(context_for())
    assert len(manifest["parts"]) == 5
    assert keys_under(s3_client, s3_bucket) == [f"{PREFIX}/_manifest.json"] + [
        f"{PREFIX}/part-0000{i}.csv" for i in range(5)
    ]
    assert_true_manifest(s3_client, s3_bucket, manifest)
    assert ids_in_s3(s3_client, s3_bucket, manifest) == all_transaction_ids(emulator)
    assert manifest["bucket"] == s3_bucket


def test_large_part_goes_up_in_multipart(emulator, s3_bucket, s3_client):
    emulator.config.batch_size = N
    emulator.config.row_padding = 1500  # one part of ~9 MiB; S3's smallest multipart chunk is 5 MiB
    mib5 = 5 * 1024 * 1024
    manifest = make_operator(
        s3_bucket, transfer_config_args={"multipart_threshold": mib5, "multipart_chunksize": mib5}
    ).execute(context_for())
    assert manifest["parts"][0]["bytes"] > 2 * mib5 * 0.8
    head = s3_client.head_object(Bucket=s3_bucket, Key=manifest["parts"][0]["key"])
    assert "-" in head["ETag"]  # a multipart ETag: "<md5 of md5s>-<number of parts>"
    assert int(head["ETag"].strip('"').split("-")[1]) > 1
    # S3 takes no whole-object SHA-256 for a multipart upload: boto3's own checksum is left to work
    assert "ChecksumSHA256" not in s3_client.head_object(
        Bucket=s3_bucket, Key=head_key(manifest), ChecksumMode="ENABLED"
    )
    assert_true_manifest(s3_client, s3_bucket, manifest)


def head_key(manifest: dict) -> str:
    return manifest["parts"][0]["key"]


def sha256_checksum(manifest_part: dict) -> str:
    """The manifest's hex SHA-256 of a part as S3 writes a checksum: base64 of the digest."""
    return base64.b64encode(bytes.fromhex(manifest_part["sha256"])).decode("ascii")


def test_each_part_goes_up_with_the_sha256_taken_while_it_was_verified(emulator, s3_bucket, s3_client):
    """S3 checks the bytes it receives against the checksum sent (a part changed on disk after its
    verification is refused) and keeps it: the stored object answers with the manifest's hash."""
    from boto3.s3.transfer import S3Transfer

    if "ChecksumSHA256" not in S3Transfer.ALLOWED_UPLOAD_ARGS:  # boto3 before full-object checksums
        pytest.skip("this boto3 passes no checksum of the caller's to an upload")
    probe = {"sha256": hashlib.sha256(b"probe").hexdigest()}
    s3_client.put_object(
        Bucket=s3_bucket, Key="probe", Body=b"probe", ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_checksum(probe)
    )
    if "ChecksumSHA256" not in s3_client.head_object(Bucket=s3_bucket, Key="probe", ChecksumMode="ENABLED"):
        pytest.skip("this moto keeps no checksum (moto 5.0, the floor of the test extra)")
    s3_client.delete_object(Bucket=s3_bucket, Key="probe")
    manifest = make_operator(s3_bucket).execute(context_for())
    assert len(manifest["parts"]) == 5
    for part in manifest["parts"]:
        head = s3_client.head_object(Bucket=s3_bucket, Key=part["key"], ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == sha256_checksum(part)
    assert_true_manifest(s3_client, s3_bucket, manifest)


def test_a_connection_that_sends_checksums_only_when_required_gets_none_of_ours(
    emulator, s3_bucket, s3_client, s3_server, monkeypatch
):
    """``request_checksum_calculation="when_required"`` is how a store without S3's checksums is
    configured: the part goes up without the SHA-256 header."""
    connection = json.loads(aws_connection_json(s3_server))
    connection["extra"]["config_kwargs"] = {"request_checksum_calculation": "when_required"}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    manifest = make_operator(s3_bucket).execute(context_for())
    head = s3_client.head_object(Bucket=s3_bucket, Key=head_key(manifest), ChecksumMode="ENABLED")
    assert not any(name.startswith("Checksum") and name != "ChecksumType" for name in head)
    assert_true_manifest(s3_client, s3_bucket, manifest)


def test_a_part_under_the_single_put_limit_goes_up_in_one_request(emulator, s3_bucket, s3_client):
    # boto3's own threshold (8 MiB) would split this ~9 MiB part into a multipart upload.
    emulator.config.batch_size = N
    emulator.config.row_padding = 1500
    manifest = make_operator(s3_bucket).execute(context_for())
    assert manifest["parts"][0]["bytes"] > 8 * 1024 * 1024
    head = s3_client.head_object(Bucket=s3_bucket, Key=manifest["parts"][0]["key"])
    assert "-" not in head["ETag"]  # one PutObject: the ETag is the body's MD5
    assert (
        head["ETag"].strip('"')
        == hashlib.md5(  # noqa: S324 - S3's ETag is an MD5
            s3_client.get_object(Bucket=s3_bucket, Key=manifest["parts"][0]["key"])["Body"].read()
        ).hexdigest()
    )
    assert_true_manifest(s3_client, s3_bucket, manifest)


def test_transfer_config_args_override_the_single_put_default_key_by_key():
    from airflow_provider_loyalty.transfers.s3_options import SINGLE_PUT_LIMIT, part_transfer_config

    assert part_transfer_config(None) == {"multipart_threshold": SINGLE_PUT_LIMIT}
    assert part_transfer_config({"max_concurrency": 4}) == {
        "multipart_threshold": SINGLE_PUT_LIMIT,
        "max_concurrency": 4,
    }
    assert part_transfer_config({"multipart_threshold": 5}) == {"multipart_threshold": 5}


def test_encryption_and_extra_upload_args_pass_through(emulator, s3_bucket, s3_client):
    manifest = make_operator(s3_bucket, encrypt=True).execute(context_for())
    head = s3_client.head_object(Bucket=s3_bucket, Key=manifest["parts"][0]["key"])
    assert head.get("ServerSideEncryption") == "AES256"
    with pytest.raises(LoyaltyValidationError, match="encrypt"):
        make_operator(s3_bucket, encrypt=True, sse_kms_key_id="key")


def test_keep_zip_stores_the_archives(emulator, s3_bucket, s3_client):
    make_operator(s3_bucket, keep_zip=True).execute(context_for())
    keys = keys_under(s3_client, s3_bucket)
    assert sum(key.endswith(".zip") for key in keys) == 5


def test_rerun_with_other_batch_size_leaves_one_consistent_set(emulator, s3_bucket, s3_client):
    emulator.config.batch_size = 700
    first = make_operator(s3_bucket).execute(context_for())
    emulator.config.batch_size = 2000
    second = make_operator(s3_bucket).execute(context_for())
    assert len(first["parts"]) == 8 and len(second["parts"]) == 3
    assert keys_under(s3_client, s3_bucket) == [f"{PREFIX}/_manifest.json"] + [
        f"{PREFIX}/part-0000{i}.csv" for i in range(3)
    ]
    assert_true_manifest(s3_client, s3_bucket, second)
    assert ids_in_s3(s3_client, s3_bucket, second) == all_transaction_ids(emulator)


def test_failed_rerun_keeps_the_previous_export_provable(emulator, s3_bucket, s3_client):
    first = make_operator(s3_bucket).execute(context_for())  # an earlier complete export of the interval
    before = {
        key: s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() for key in keys_under(s3_client, s3_bucket)
    }
    emulator.config.batch_size = 700
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "export quota"})])
    with pytest.raises(LoyaltyExportTaskFailed, match="export quota"):
        make_operator(s3_bucket, resume=False).execute(context_for())
    for key, body in before.items():  # the old manifest and every part it lists, byte-identical
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    assert_true_manifest(s3_client, s3_bucket, first)


def test_failure_of_a_first_export_leaves_no_manifest(emulator, s3_bucket, s3_client):
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "export quota"})])
    with pytest.raises(LoyaltyExportTaskFailed, match="export quota"):
        make_operator(s3_bucket).execute(context_for())
    assert f"{PREFIX}/_manifest.json" not in keys_under(s3_client, s3_bucket)


def test_deferrable_mode_gives_the_same_set(emulator, s3_bucket, s3_client):
    emulator.config.task_duration = 1.0  # each next batch still runs when the previous one has landed
    log = DeferralLog()
    manifest = run_with_deferrals(make_operator(s3_bucket, deferrable=True), context_for(), log)
    assert log.deferrals >= 5
    assert ids_in_s3(s3_client, s3_bucket, manifest) == all_transaction_ids(emulator)
    assert_true_manifest(s3_client, s3_bucket, manifest)


def test_a_task_the_api_forgot_while_deferred_is_created_again(emulator, s3_bucket, s3_client, monkeypatch):
    """The triggerer's error event (the task is not found) sends the worker to check the task itself;
    the loop creates the batch again from its cursor, so the export lands without an Airflow retry."""
    from airflow_provider_loyalty.export import fetch

    monkeypatch.setattr(fetch, "NOT_YET_KNOWN_SECONDS", 0.0)  # not a task too new to be known: gone at once
    emulator.config.task_duration = 0.5
    log = DeferralLog()
    manifest = run_with_deferrals(
        make_operator(s3_bucket, deferrable=True),
        context_for(),
        log,
        before_trigger=lambda deferral: emulator.forget_tasks() if deferral == 2 else None,
    )
    assert log.events[1]["status"] == "error" and "not found" in log.events[1]["message"].lower()
    assert [event["status"] for event in log.events].count("error") == 1
    assert_true_manifest(s3_client, s3_bucket, manifest)
    assert ids_in_s3(s3_client, s3_bucket, manifest) == all_transaction_ids(emulator)


def _unreachable_from_the_triggerer(monkeypatch) -> None:
    """The triggerer's requests fail (a port nobody listens on: connection refused, past one retry),
    a failure that is not final, unlike a refused token."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    connection = {
        "conn_type": "loyalty",
        "host": f"http://127.0.0.1:{port}",
        "password": "any-token",
        "extra": {"retry_backoff": 0.01, "max_retries": 1},
    }
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))


def _worker_reaches_the_api(monkeypatch, emulator) -> None:
    real_complete = LoyaltyTransactionsToS3Operator.execute_complete

    def complete(self, context, **kwargs):
        point_connection_at(monkeypatch, emulator)  # the worker reaches the API; the triggerer does not
        return real_complete(self, context, **kwargs)

    monkeypatch.setattr(LoyaltyTransactionsToS3Operator, "execute_complete", complete)


def test_a_trigger_that_keeps_failing_fails_the_task_with_its_error(emulator, s3_bucket, monkeypatch):
    """The worker checks the task itself after each trigger error, but not forever: after
    MAX_TRIGGER_ERRORS of them in a row the next one fails the task with the trigger's message.
    Deferred again for the same export task, the wait keeps its deadline: ``batch_timeout`` counts
    once per export task, not once per deferral."""
    from airflow_provider_loyalty.exceptions import LoyaltyError
    from airflow_provider_loyalty.operators import export_base

    emulator.config.task_duration = 60  # still running at every check of the worker
    log = DeferralLog()
    _worker_reaches_the_api(monkeypatch, emulator)
    with pytest.raises(LoyaltyError, match=r"Waiting for export task .* failed"):
        run_with_deferrals(
            make_operator(s3_bucket, deferrable=True, batch_timeout=600),
            context_for(),
            log,
            before_trigger=lambda _: _unreachable_from_the_triggerer(monkeypatch),
        )
    assert [event["status"] for event in log.events] == ["error"] * (export_base.MAX_TRIGGER_ERRORS + 1)
    assert len({event["export_task_id"] for event in log.events}) == 1
    assert emulator.stats()["export_tasks_created"] == 1  # the first batch, still running: never created again
    assert len({kwargs["deadline"] for kwargs in log.trigger_kwargs}) == 1


def test_a_trigger_that_keeps_failing_times_out_when_resumed_with_the_event_alone(emulator, s3_bucket, monkeypatch):
    """``dag.test()`` resumes with the event alone: the deferral's kwargs (the error count, the
    deadline) are gone. The failed wait's event carries the deadline, so deferring again for the
    same export task keeps it and batch_timeout still ends the wait (it moved on with every
    deferral: the task deferred forever)."""
    from airflow_provider_loyalty.exceptions import LoyaltyError

    emulator.config.task_duration = 600  # still running at every check of the worker
    log = DeferralLog()
    _worker_reaches_the_api(monkeypatch, emulator)

    def unreachable(deferral: int) -> None:
        assert deferral < 200, "the wait never timed out"
        _unreachable_from_the_triggerer(monkeypatch)

    with pytest.raises(LoyaltyError, match=r"timed out waiting for export task .* deadline passed"):
        run_with_deferrals(
            make_operator(s3_bucket, deferrable=True, batch_timeout=3),
            context_for(),
            log,
            before_trigger=unreachable,
            event_only=True,
        )
    assert len(log.events) > 1 and {event["status"] for event in log.events} == {"error"}
    assert len({kwargs["deadline"] for kwargs in log.trigger_kwargs}) == 1


def test_trigger_errors_count_in_a_row_for_one_export_task_only(emulator, s3_bucket, s3_client, monkeypatch):
    """A trigger error the worker recovers from (it checks the task, lands the batch and creates the
    next) does not count against the next export task: every batch's trigger failing once is not
    MAX_TRIGGER_ERRORS errors in a row."""
    from airflow_provider_loyalty.operators import export_base

    emulator.config.task_duration = 1.0  # running when the worker first checks it, even on a busy machine
    log = DeferralLog()
    _worker_reaches_the_api(monkeypatch, emulator)

    def trigger_fails_then_task_done(_: int) -> None:
        _unreachable_from_the_triggerer(monkeypatch)
        time.sleep(1.2)  # the task completes meanwhile: the worker's check lands it

    manifest = run_with_deferrals(
        make_operator(s3_bucket, deferrable=True), context_for(), log, before_trigger=trigger_fails_then_task_done
    )
    assert all(event["status"] == "error" for event in log.events)
    assert len(log.events) > export_base.MAX_TRIGGER_ERRORS  # more than that many errors, none in a row
    assert ids_in_s3(s3_client, s3_bucket, manifest) == all_transaction_ids(emulator)


def test_a_huge_batch_timeout_is_refused_before_any_request(emulator, s3_bucket):
    """Past ten years a deferral's timeout and the lease's expiry overflow, after the export began."""
    from datetime import timedelta

    for value in (timedelta.max, 1e14):
        with pytest.raises(LoyaltyValidationError, match="batch_timeout: expected at most ten years"):
            make_operator(s3_bucket, deferrable=True, batch_timeout=value)
    assert emulator.stats()["requests_total"] == 0


def test_default_prefix_and_asset_outlet(emulator, s3_bucket, s3_client):
    operator = make_operator(s3_bucket, s3_key_prefix=None)
    manifest = operator.execute(context_for())
    assert manifest["manifest"] == (
        f"s3://{s3_bucket}/loyalty/transactions/program=123/currency=bonus_points/"
        "20230901T000000Z_20230930T235959Z/_manifest.json"
    )
    (asset,) = operator.outlets  # one asset per program and currency
    assert asset.uri == f"s3://{s3_bucket}/loyalty/transactions/program=123/currency=bonus_points/_manifest.json"


def test_each_program_and_currency_has_its_own_default_asset():
    """Issue 18.3: the default asset is per program and currency, so two exports of different
    programs or currencies in one bucket never share an asset URI."""
    currencies = [
        {"loyalty_program_id": 123, "points_currency_eid": "bonus_points"},
        {"loyalty_program_id": 456, "points_currency_eid": "bonus_points"},
        {"loyalty_program_id": 123, "points_currency_eid": "miles"},
        {"loyalty_program_id": 123, "points_currency_eid": None, "points_currency_iid": 7},
    ]
    uris = [make_operator("b", s3_key_prefix=None, **currency).outlets[0].uri for currency in currencies]
    assert uris == [
        "s3://b/loyalty/transactions/program=123/currency=bonus_points/_manifest.json",
        "s3://b/loyalty/transactions/program=456/currency=bonus_points/_manifest.json",
        "s3://b/loyalty/transactions/program=123/currency=miles/_manifest.json",
        "s3://b/loyalty/transactions/program=123/currency=iid-7/_manifest.json",
    ]


def test_without_the_amazon_provider_the_dag_fails_when_parsed_naming_the_extra(monkeypatch):
    """Without ``[amazon]`` the DAG parsed and the task failed at run time with a bare
    ``ModuleNotFoundError: No module named 'airflow.providers.amazon'`` (probe of 2026-12-05)."""
    from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException

    monkeypatch.setitem(sys.modules, "airflow.providers.amazon", None)  # as if not installed
    hint = r"needs the amazon provider .*pip install 'airflow-provider-loyalty\[amazon\]'"
    with pytest.raises(AirflowOptionalProviderFeatureException, match=hint):
        make_operator("bucket")
    with pytest.raises(AirflowOptionalProviderFeatureException, match=hint):
        LoyaltyTransactionsToS3Operator.partial(task_id="mapped", s3_bucket="bucket", loyalty_program_id=123)


@pytest.mark.parametrize("eid", ["a/../b", "a//b", "./x/..", "x/"])
def test_a_currency_eid_that_would_make_odd_key_segments_is_refused_naming_it(emulator, s3_bucket, s3_client, eid):
    """The default prefix holds the eid as it is: ``a/../b`` put a literal ``..`` segment in every key
    and asset URI (probe of 2026-12-05), which the same text in ``s3_key_prefix`` is refused for."""
    with pytest.raises(LoyaltyValidationError, match=r"^points_currency_eid: .*segment"):
        make_operator(s3_bucket, s3_key_prefix=None, points_currency_eid=eid)  # its asset, at parse
    operator = make_operator(s3_bucket, s3_key_prefix=None, outlets=[])
    operator.points_currency_eid = eid  # as a template rendering it at run time
    with pytest.raises(LoyaltyValidationError, match=r"^points_currency_eid: .*segment"):
        operator.execute(context_for())
    assert emulator.stats()["requests_total"] == 0
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_an_eid_ending_in_a_bookkeeping_name_parses_and_runs_alike(emulator, s3_bucket, s3_client):
    """``a/_staging`` is refused as the last segment of a location, but in the default prefix the
    period's segment follows it: the asset check at parse refused what the run accepts."""
    operator = make_operator(s3_bucket, s3_key_prefix=None, points_currency_eid="a/_staging")
    assert operator.outlets[0].uri.endswith("/currency=a/_staging/_manifest.json")
    spec = operator.export_spec(context_for())
    assert operator.key_prefix(spec).endswith("currency=a/_staging/20230901T000000Z_20230930T235959Z")


def test_a_prefix_known_only_at_run_time_has_the_buckets_root_manifest_as_its_asset():
    """A prefix from a mapped task group (``MappedArgument``) made the asset
    ``s3://b/MappedArgument(_input=DictOfListsExpandInput(value=/_manifest.json``: its repr."""
    import pendulum
    from airflow.sdk import DAG, task_group

    seen: list[str] = []
    with DAG("mapped_prefix", schedule=None, start_date=pendulum.datetime(2023, 9, 1, tz="UTC")):

        @task_group
        def export_to(prefix: str) -> None:
            seen.append(make_operator("my-bucket", s3_key_prefix=prefix).outlets[0].uri)

        export_to.expand(prefix=["daily/a", "daily/b"])
    assert seen == ["s3://my-bucket/_manifest.json"]


@pytest.mark.parametrize(
    ("prefix", "uri"),
    [
        ("daily-{{ ds }}", "s3://b/_manifest.json"),  # was s3://b/daily-/_manifest.json: never written
        ("program=123-{{ ds }}/x", "s3://b/_manifest.json"),
        ("exports/daily-{{ ds }}", "s3://b/exports/_manifest.json"),
        ("exports/{{ ds }}", "s3://b/exports/_manifest.json"),
        (2023, "s3://b/2023/_manifest.json"),  # a literal number lands at "2023" (was the bucket root)
    ],
)
def test_the_default_asset_of_a_templated_prefix_holds_only_whole_literal_segments(prefix, uri):
    assert make_operator("b", s3_key_prefix=prefix).outlets[0].uri == uri


@pytest.mark.parametrize(
    "values",
    [
        {"s3_key_prefix": " daily/2023-09-01/ "},
        {"s3_key_prefix": None, "loyalty_program_id": " 123 ", "points_currency_eid": " bonus_points "},
    ],
    ids=["prefix", "program-and-currency"],
)
def test_the_default_asset_names_the_manifest_as_written_when_values_carry_blanks(
    emulator, s3_bucket, s3_client, values
):
    """Blanks around a value are dropped where the export writes (the docs say so), but the default
    asset kept them (``s3://b/%20daily/...``): a DAG scheduled on the manifest never ran."""
    operator = make_operator(f" {s3_bucket} ", **values)
    (asset,) = operator.outlets
    manifest = operator.execute(context_for())
    prefix = manifest["manifest"].removeprefix(f"s3://{s3_bucket}/").rsplit("/", 1)[0]
    asset_key = unquote(urlsplit(asset.uri).path.lstrip("/"))
    if values["s3_key_prefix"]:
        assert asset_key == f"{prefix}/{MANIFEST_NAME}" == f"daily/2023-09-01/{MANIFEST_NAME}"
    else:  # one asset per program and currency: the manifest's prefix less its period
        assert f"{prefix.rsplit('/', 1)[0]}/{MANIFEST_NAME}" == asset_key
        assert asset_key == f"loyalty/transactions/program=123/currency=bonus_points/{MANIFEST_NAME}"
    assert urlsplit(asset.uri).netloc == s3_bucket


def test_a_literal_prefix_with_reserved_characters_is_escaped_in_the_asset(emulator, s3_bucket, s3_client):
    """Issue 19: a literal prefix holding ``#``, ``?`` and a space gives an asset URI Airflow accepts,
    with no fragment or query, from which the stored manifest's key is recovered exactly."""
    from airflow.sdk import Asset

    prefix = "audit #7/why? yes/2023-09"
    operator = make_operator(s3_bucket, s3_key_prefix=prefix)
    (asset,) = operator.outlets
    assert Asset(uri=asset.uri).uri == asset.uri  # Airflow takes it as it is
    parts = urlsplit(asset.uri)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == ("s3", s3_bucket, "", "")
    assert " " not in asset.uri
    key = unquote(parts.path.lstrip("/"))
    assert key == f"{prefix}/{MANIFEST_NAME}"
    manifest = operator.execute(context_for())
    assert manifest["manifest"] == f"s3://{s3_bucket}/{key}"
    stored = json.loads(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert stored["total_rows"] == N
    assert [part["key"] for part in stored["parts"]] == [f"{prefix}/part-0000{i}.csv" for i in range(5)]


def test_on_kill_stops_promptly_and_the_next_try_re_attaches(emulator, s3_bucket, s3_client):
    """Issue 13.13 for the S3 operator: on_kill ends the export at once, removes its temporary batch
    files, and the checkpoint in S3 keeps the pending export task for the next try to re-attach to."""
    emulator.config.task_duration = 30.0
    operator = make_operator(s3_bucket)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            operator.execute(context_for(ti=task_instance(task_id="to_s3")))
        except BaseException as error:  # the thread reports what stopped it
            outcome["error"] = error

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(
        lambda: (stored_checkpoint(s3_client, s3_bucket) or {}).get("pending"), timeout=60, what="a pending task in S3"
    )
    stop_with_on_kill(operator, worker, outcome)
    (pending,) = (stored_checkpoint(s3_client, s3_bucket) or {})["pending"]
    assert f"{PREFIX}/{MANIFEST_NAME}" not in keys_under(s3_client, s3_bucket)
    emulator.config.task_duration = 0.05
    emulator.api.tasks.get(pending["task_id"]).duration = 0.0  # the server finishes the pending task
    manifest = make_operator(s3_bucket).execute(context_for(ti=task_instance(task_id="to_s3", try_number=2)))
    assert manifest["parts"][0]["export_task_id"] == pending["task_id"]  # re-attached, not re-created
    assert ids_in_s3(s3_client, s3_bucket, manifest) == all_transaction_ids(emulator)
    assert_true_manifest(s3_client, s3_bucket, manifest)
    assert f"{PREFIX}/{CHECKPOINT_NAME}" not in keys_under(s3_client, s3_bucket)


def test_crash_after_part_2_of_5_resumes_without_re_exporting(emulator, s3_bucket, s3_client, tmp_path):
    """SIGKILL the worker process after part 2 of 5 landed; the retry resumes from the checkpoint."""
    emulator.config.task_duration = 1.0  # a window, after part 2 lands, to kill the worker in
    kwargs = {
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "s3_bucket": s3_bucket,
        "s3_key_prefix": PREFIX,
        "poll_interval": 0.05,
        "deferrable": False,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.support.transfer_process", json.dumps(kwargs)],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    # Kill once 3 parts landed; on a busy machine the look may come a batch late (4 landed), so what
    # the retry must do is read from the checkpoint the killed worker left, not assumed.
    wait_for(
        lambda: (stored_checkpoint(s3_client, s3_bucket) or {}).get("parts_landed", 0) >= 3,
        timeout=180,
        what="3 parts to land",
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    checkpoint = stored_checkpoint(s3_client, s3_bucket)
    assert checkpoint is not None, "the worker finished before it could be killed"
    landed, pending = checkpoint["parts_landed"], len(checkpoint["pending"])
    assert 3 <= landed < 5 and pending <= 1, checkpoint
    created_before_retry = emulator.stats()["export_tasks_created"]
    # Every task created so far landed or is pending in the checkpoint; at most one more was created
    # in the instant before the kill, too late to be checkpointed.
    assert created_before_retry - (landed + pending) in (0, 1), (created_before_retry, checkpoint)

    manifest = make_operator(s3_bucket, **{k: v for k, v in kwargs.items() if k != "s3_bucket"}).execute(context_for())
    # The pending task is re-attached and no landed part is exported again: only the rest is created.
    assert emulator.stats()["export_tasks_created"] == created_before_retry + (5 - landed - pending)
    assert ids_in_s3(s3_client, s3_bucket, manifest) == all_transaction_ids(emulator)
    assert_true_manifest(s3_client, s3_bucket, manifest)
    assert f"{PREFIX}/_manifest.inprogress.json" not in keys_under(s3_client, s3_bucket)


@pytest.mark.parametrize("prefix", [PREFIX, "exports/run#1?x=2"], ids=["plain", "hash-and-question-mark"])
def test_openlineage_facets_name_the_api_input_and_the_export_prefix(emulator, s3_bucket, prefix: str):
    """A prefix holding ``#`` or ``?`` was named up to it (``exports/run``): a URL parser's
    fragment and query, though the export lands under the whole prefix."""
    pytest.importorskip("airflow.providers.openlineage")
    operator = make_operator(s3_bucket, s3_key_prefix=prefix)
    operator.execute(context_for())
    lineage = operator.get_openlineage_facets_on_complete(None)
    (source,) = lineage.inputs
    assert source.namespace == emulator.url
    assert source.name == "loyalty_program/123/points_transactions"
    assert [(out.namespace, out.name) for out in lineage.outputs] == [  # one dataset per export, not per part
        (f"s3://{s3_bucket}", prefix)
    ]
    assert emulator.token not in repr(lineage)


def test_the_default_asset_names_ids_as_the_export_writes_them(emulator, s3_bucket, s3_client):
    """``"0123"`` is program 123 to the API and in the manifest's key; the asset said ``program=0123``
    (and ``iid-01``), so a DAG scheduled on it never ran, and ``123`` gave another asset."""
    operator = make_operator(
        s3_bucket, s3_key_prefix=None, loyalty_program_id="0123", points_currency_eid=None, points_currency_iid="01"
    )
    (asset,) = operator.outlets
    manifest = operator.execute(context_for())
    asset_key = unquote(urlsplit(asset.uri).path.lstrip("/"))
    assert asset_key == f"loyalty/transactions/program=123/currency=iid-1/{MANIFEST_NAME}"
    prefix = manifest["manifest"].removeprefix(f"s3://{s3_bucket}/").rsplit("/", 2)[0]
    assert f"{prefix}/{MANIFEST_NAME}" == asset_key


@pytest.mark.parametrize(
    ("partial_kwargs", "parameter"),
    [
        ({"s3_bucket": "s3://my-bucket/exports"}, "s3_bucket"),
        ({"s3_bucket": "b", "s3_key_prefix": "../x"}, "s3_key_prefix"),
        ({"s3_bucket": "b", "encrypt": True, "sse_kms_key_id": "k"}, "encrypt/sse_kms_key_id"),
        ({"s3_bucket": "b", "encrypt": "maybe"}, "encrypt"),
        ({"s3_bucket": "b", "extra_upload_args": {"Foo": 1}}, "extra_upload_args"),
        ({"s3_bucket": "b", "transfer_config_args": {"multipart_chunksize": "8MB"}}, "transfer_config_args"),
        ({"s3_bucket": "b", "poll_interval": 0}, "poll_interval"),
    ],
)
def test_partial_refuses_a_literal_bucket_or_prefix_at_dag_parse(partial_kwargs, parameter):
    """A mapped transfer took ``s3_bucket="s3://my-bucket/exports"``, stored the asset
    ``s3://s3://my-bucket/...`` and failed only when each mapped task started."""
    with pytest.raises(LoyaltyValidationError) as refused:
        LoyaltyTransactionsToS3Operator.partial(
            task_id="mapped", loyalty_program_id=123, points_currency_eid="bonus_points", **partial_kwargs
        )
    assert refused.value.parameter == parameter


def test_verify_reads_with_the_identity_the_export_wrote_with(emulator, s3_server, s3_bucket, s3_client, monkeypatch):
    """``aws_conn_id=None`` writes with boto3's own credentials (an instance role; here the
    environment); ``verify=True`` then read with ``aws_default``, another identity (or another
    endpoint: here one that answers nothing), and failed an export that had landed."""
    from airflow_provider_loyalty.testing.s3 import aws_connection_json

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_json("http://127.0.0.1:9"))
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    manifest = make_operator(s3_bucket, aws_conn_id=None, verify=True).execute(context_for())
    assert manifest["total_rows"] == len(ids_in_s3(s3_client, s3_bucket, manifest)) > 0


@pytest.mark.parametrize("where", ["dag", "task_group", "task"])
@pytest.mark.parametrize("mapped", [False, True], ids=["task", "mapped"])
def test_the_default_asset_is_the_same_when_ids_come_from_default_args(where: str, mapped: bool):
    """The program and currency given in ``default_args`` (of the DAG, a task group or the task)
    reach the base operator's parameters after the transfer computed its asset: it was the bucket's
    root (``s3://b/loyalty/transactions/_manifest.json``), not the documented per-program asset a
    consumer DAG schedules on, which then never ran."""
    import pendulum
    from airflow.sdk import DAG, TaskGroup

    ids = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points"}
    expected = "s3://b/loyalty/transactions/program=123/currency=bonus_points/_manifest.json"
    start = pendulum.datetime(2023, 9, 1, tz="UTC")

    def given(level: str) -> dict[str, Any]:
        return {"default_args": ids} if where == level else {}

    with (
        DAG("ids_from_default_args", schedule=None, start_date=start, **given("dag")),
        TaskGroup("group", **given("task_group")),
    ):
        own = given("task")
        if mapped:
            task = LoyaltyTransactionsToS3Operator.partial(task_id="to_s3", s3_bucket="b", **own).expand(
                date_from=["2023-09-01", "2023-09-02"]
            )
        else:
            task = LoyaltyTransactionsToS3Operator(task_id="to_s3", s3_bucket="b", **own)
    assert [asset.uri for asset in task.outlets] == [expected]


def test_a_run_that_waits_for_a_reruns_switch_uses_the_export_it_waited_for(
    emulator, s3_bucket, s3_client, monkeypatch
):
    """A re-run's seal stamps its manifest, then copies each staged part into place (minutes for
    large parts). A second run of the period arriving then waited for it, and turned its export
    away as finished before the wait began: it failed ("set replace=True") or, with replace=True,
    exported the whole period again over it."""
    from airflow_provider_loyalty.export.s3_sink import S3PartSink

    make_operator(s3_bucket).execute(context_for(ti=task_instance(run_id="first")))
    real_move = S3PartSink.move

    def slow_move(self, source: str, target: str) -> None:  # a large part's server-side copy
        time.sleep(0.5)
        real_move(self, source, target)

    monkeypatch.setattr(S3PartSink, "move", slow_move)
    created_before = emulator.stats()["requests"]["export"]
    results: dict[str, Any] = {}

    def rerun() -> None:
        results["rerun"] = make_operator(s3_bucket).execute(context_for(ti=task_instance(run_id="rerun")))

    thread = threading.Thread(target=rerun)
    thread.start()

    def switching() -> bool:
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{MANIFEST_NAME}")["Body"].read()
        return any("/_staging/" in part["key"] for part in json.loads(body)["parts"])

    wait_for(switching, timeout=60, what="the re-run's switch")
    second = make_operator(s3_bucket, replace=True).execute(context_for(ti=task_instance(run_id="manual")))
    thread.join(60)
    assert second["written_by"] == results["rerun"]["written_by"] == "tests/rerun/export/-1"
    assert emulator.stats()["requests"]["export"] - created_before == N // 1000  # one export, not two
