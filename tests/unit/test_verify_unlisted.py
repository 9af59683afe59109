"""loyalty-verify finds every object the manifest does not list: beside a checkpoint that tells of a
re-run's switch unless that switch is at work (its writer holds the lease), and under a key ending
in ``/`` that holds bytes. On disk and in moto's S3 server (loopback)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.export.layout import CHECKPOINT_NAME, LEASE_NAME
from airflow_provider_loyalty.export.progress import CLEANUP, EXPORTING, SEALING, ExportProgress
from airflow_provider_loyalty.export.spec import ExportSpec
from airflow_provider_loyalty.verify import main, verify_manifest
from tests.unit.test_verify import HEADER, kinds, land_local, land_s3

PREFIX = "compliance/2023-09"
#: The period ``land_local`` / ``land_s3`` write into their manifests.
SPEC = ExportSpec(123, "bonus_points", None, "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z")
OTHER_PROGRAM = ExportSpec(7, "bonus_points", None, "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z")
CSV_GZ = ExportSpec(123, "bonus_points", None, "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z", output_format="csv.gz")


class Location:
    """One export location, local or under an S3 prefix: write a document or an object there, verify it."""

    def __init__(self, request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        if kind == "local":
            self.directory = tmp_path / "export"
            land_local(self.directory)
            self.url = str(self.directory)
        else:
            self.bucket = request.getfixturevalue("s3_bucket")
            self.client = request.getfixturevalue("s3_client")
            land_s3(self.client, self.bucket, PREFIX)
            self.url = f"s3://{self.bucket}/{PREFIX}/"

    def put(self, name: str, body: bytes) -> None:
        if self.kind == "local":
            (self.directory / name).write_bytes(body)
        else:
            self.client.put_object(Bucket=self.bucket, Key=f"{PREFIX}/{name}", Body=body)

    def put_json(self, name: str, document: dict[str, Any]) -> None:
        self.put(name, json.dumps(document).encode())

    def delete(self, name: str) -> None:
        if self.kind == "local":
            (self.directory / name).unlink()
        else:
            self.client.delete_object(Bucket=self.bucket, Key=f"{PREFIX}/{name}")

    def verify(self) -> Any:
        return verify_manifest(self.url, conn_id="aws_default" if self.kind == "s3" else None)


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    return Location(request, request.param, tmp_path)


def checkpoint(phase: str, spec: ExportSpec = SPEC) -> dict[str, Any]:
    """A checkpoint as an export writes it, of a re-run at ``phase``."""
    return ExportProgress(spec=spec.to_dict(), staged=True, phase=phase, parts_landed=2, batches_done=2).to_dict()


def lease(expires_in: float, spec: ExportSpec = SPEC) -> dict[str, Any]:
    """A lease as an export writes it, valid for ``expires_in`` more seconds (expired when negative)."""
    until = time.time() + expires_in
    return {
        "writer_id": "a1b2",
        "task": "loyalty_daily/scheduled__2023-10-01/export/-1",
        "try_number": 1,
        "host": "worker-1:4242",
        **spec.period,
        "acquired_at": "2023-10-01T00:00:01Z",
        "expires_at": until,
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
    }


@pytest.mark.parametrize(
    "bookkeeping",
    [
        {CHECKPOINT_NAME: {"phase": "cleanup"}},  # not a checkpoint an export writes
        {CHECKPOINT_NAME: checkpoint(CLEANUP)},  # its seal stopped: nobody holds the lease
        {CHECKPOINT_NAME: checkpoint(SEALING), LEASE_NAME: lease(-60)},  # its writer's lease expired
        {CHECKPOINT_NAME: checkpoint(CLEANUP), LEASE_NAME: lease(600, OTHER_PROGRAM)},
        {CHECKPOINT_NAME: checkpoint(CLEANUP, CSV_GZ), LEASE_NAME: lease(600)},
        {CHECKPOINT_NAME: checkpoint(EXPORTING), LEASE_NAME: lease(600)},  # exporting, not switching
    ],
    ids=[
        "hand-written-checkpoint",
        "switch-stopped",
        "lease-expired",
        "lease-of-another-period",
        "checkpoint-of-another-format",
        "checkpoint-exporting",
    ],
)
def test_an_unlisted_part_beside_a_switch_that_is_not_at_work_is_a_stray(
    location: Location, bookkeeping: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Any checkpoint saying ``sealing`` or ``cleanup`` turned every unlisted part into "the previous
    set's", INTACT with "no stray objects": a hand-written one, or that of a switch whose writer
    failed (its clean-up denied, a copy failed) and left the old parts for good."""
    for name, document in bookkeeping.items():
        location.put_json(name, document)
    location.put("part-00003.csv", HEADER.encode())

    report = location.verify()

    assert report.exit_code == 1 and not report.intact
    assert kinds(report) == [("stray", "part-00003.csv")]
    assert report.awaiting_cleanup == 0
    assert not any("is switching this location over" in note for note in report.notes), report.notes
    assert main([location.url, "--aws-conn-id", "aws_default"] if location.kind == "s3" else [location.url]) == 1
    assert "stray      part-00003.csv" in capsys.readouterr().out


def test_a_stopped_switch_is_said_so(location: Location) -> None:
    location.put_json(CHECKPOINT_NAME, checkpoint(CLEANUP))
    location.put("part-00003.csv", HEADER.encode())
    location.put("part-00004.csv", HEADER.encode())

    report = location.verify()

    assert kinds(report) == [("stray", "part-00003.csv"), ("stray", "part-00004.csv")]
    assert any(
        note.startswith("a re-run's switch stopped before its clean-up (checkpoint phase 'cleanup', no writer holds")
        and "its 2 part(s) the manifest does not list are strays" in note
        for note in report.notes
    ), report.notes


@pytest.mark.parametrize("phase", [SEALING, CLEANUP])
def test_a_switch_at_work_leaves_the_replaced_parts_as_notes_and_says_the_location_is_not_clean(
    location: Location, phase: str
) -> None:
    """The writer switching the location over holds its lease: the old set's parts are its to remove
    (tests/unit/export/test_lease.py verifies at every step of a real switch); the report says they
    are there, not "no stray objects"."""
    location.put_json(CHECKPOINT_NAME, checkpoint(phase))
    location.put_json(LEASE_NAME, lease(600))
    location.put("part-00003.csv", HEADER.encode())
    location.put("notes.txt", b"not a part")  # no switch removes it: a stray all the same

    report = location.verify()

    assert kinds(report) == [("stray", "notes.txt")]
    assert report.awaiting_cleanup == 1
    assert any(
        f"is switching this location over (checkpoint phase {phase!r}, lease held by loyalty_daily/" in note
        for note in report.notes
    ), report.notes

    location.delete("notes.txt")
    report = location.verify()
    assert report.exit_code == 0 and report.awaiting_cleanup == 1
    summary = report.to_text().splitlines()[-1]
    assert "no stray objects" not in summary
    assert "1 unlisted part(s) left until a re-run's switch finishes" in summary
    assert report.to_dict()["awaiting_cleanup"] == 1


@pytest.mark.parametrize("scheme", ["s3", "s3a"])
def test_an_object_whose_key_ends_in_a_slash_and_holds_bytes_is_a_stray(
    s3_bucket: str, s3_client: Any, scheme: str
) -> None:
    """``part-00009.csv/`` with rows in it went unseen: every key ending in ``/`` was taken for a
    console "folder" marker, and with the listing's delimiter it came back as a sub-prefix."""
    land_s3(s3_client, s3_bucket, PREFIX)
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/misc/", Body=b"")  # a folder marker: not an object
    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/_staging/", Body=b"")
    s3_client.put_object(
        Bucket=s3_bucket, Key=f"{PREFIX}/daily/part-00000.csv", Body=HEADER.encode()
    )  # another location
    assert verify_manifest(f"{scheme}://{s3_bucket}/{PREFIX}", conn_id="aws_default").intact

    s3_client.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/part-00009.csv/", Body=HEADER.encode() + b"tx-1,a,1,b\r\n")

    report = verify_manifest(f"{scheme}://{s3_bucket}/{PREFIX}", conn_id="aws_default")

    assert report.exit_code == 1
    assert [(problem.kind, problem.part) for problem in report.problems] == [("stray", "part-00009.csv/")]
