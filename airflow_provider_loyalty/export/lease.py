"""One location, one writer: the lease an export holds on its output location while it writes.

The lease is a small document (``_lease.json``) naming the writer (its Airflow task instance,
try, host and a per-attempt id), the period it exports and until when it holds the location. It
is created only if absent and replaced only if unchanged (see
:meth:`~airflow_provider_loyalty.export.sinks.PartSink.create_exclusive`). When an export finds a
lease held by someone else:

* the same task instance (a retry after a crash, or the task resuming after a deferral) takes it
  over at once. Airflow does not mean to run two tries together, but a try it gave up on (missed
  heartbeats) may still run for a moment: :class:`LeasedSink` checks the lease before every write
  the writer makes (and after each part upload), so such a try stops at its next write;
* an expired lease (its writer died) is taken over;
* a live lease of a *different* period fails at once, naming the location and the holder;
* a live lease of the *same* period from another task is waited for: when it is released the
  waiting export finds that export's manifest (and adopts it) or its checkpoint (and resumes it).

The writer renews its lease on every batch; a deferring writer extends it to the trigger's
deadline. Released at the end of the export, also when the export fails.

What no lease can stop (without the store fencing its writes): a writer that stalls *during* one
write for longer than the lease (a part upload frozen for over 10 minutes) and then completes it.
The check after each upload stops that writer before it records the part, so the part is not
counted as its; the other export's seal then finds a part whose size is not its record's, unless
that export sealed before the stalled upload landed: then only ``loyalty-verify`` finds the part
changed (docs/reliability.md).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pendulum

from airflow_provider_loyalty.exceptions import LoyaltyExportStopped, LoyaltyLocationBusyError
from airflow_provider_loyalty.export.layout import LEASE_NAME
from airflow_provider_loyalty.export.sinks import DelegatingSink, PartSink, UnreadableDocument, encode_document
from airflow_provider_loyalty.export.spec import describe_period

#: How long a writer working in a worker holds the location without renewing it.
DEFAULT_LEASE_SECONDS = 600.0
#: How often a waiting export looks at the lease again.
WAIT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class WriterIdentity:
    """Who writes: an Airflow task instance (when there is one) and this attempt.

    :param task: ``dag_id/run_id/task_id/map_index`` of the task instance, or ``None``.
    :param try_number: the task instance's try.
    :param writer_id: unique per attempt at the export (per ``execute`` call).
    :param host: the host name and process id.
    :param first_try: the first try since the task instance was last cleared (or first run): tries
        from it to ``try_number`` are retries of one run of the task, an earlier one is a re-run's.
        ``None`` when the context does not say.
    """

    task: str | None
    try_number: int | None
    writer_id: str
    host: str
    first_try: int | None = None

    @classmethod
    def from_context(cls, context: Any, *, retries: Any = None) -> WriterIdentity:
        """The identity of the task instance in an Airflow context (``None`` fields outside one).

        :param context: the task's context.
        :param retries: the task's ``retries``: with the task instance's ``max_tries`` it says which
            try began this run of the task (Airflow's own reckoning: clearing a task instance sets
            ``max_tries`` to its try number plus ``retries``).
        """
        ti = context.get("ti") if hasattr(context, "get") else None
        task = None
        if ti is not None and getattr(ti, "task_id", None):
            task = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"
        max_tries = getattr(ti, "max_tries", None)
        first_try = None
        if _is_count(max_tries) and _is_count(retries):
            first_try = max(max_tries - retries + 1, 1)
        return cls(
            task=task,
            try_number=getattr(ti, "try_number", None) if ti is not None else None,
            writer_id=uuid.uuid4().hex,
            host=f"{socket.gethostname()}:{os.getpid()}",
            first_try=first_try,
        )

    def same_run(self, try_number: Any) -> bool | None:
        """Whether ``try_number`` of this task instance is a try of this run of the task (this try,
        or an earlier one it retries), not one from before the task instance was cleared (this try
        is then a re-run). ``None`` when the context does not say."""
        if not (_is_count(try_number) and _is_count(self.try_number) and self.first_try is not None):
            return None
        return bool(self.first_try <= try_number <= self.try_number)  # type: ignore[operator]

    def describe(self) -> str:
        """``task dag/run/task/-1 (try 2) on host:pid``."""
        who = f"task {self.task} (try {self.try_number})" if self.task else "an export outside any Airflow task"
        return f"{who} on {self.host}"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_live(document: dict[str, Any]) -> bool:
    """Whether a lease document still holds its location: its ``expires_at`` has not passed."""
    expires_at = document.get("expires_at")
    return isinstance(expires_at, int | float) and not isinstance(expires_at, bool) and expires_at >= time.time()


def _lease_path(location: str) -> str:
    """The lease's own path at ``location`` (an S3 prefix ends in ``/``, a directory does not)."""
    return f"{location.rstrip('/')}/{LEASE_NAME}"


def _holder_text(document: dict[str, Any]) -> str:
    task = document.get("task")
    who = f"task {task} (try {document.get('try_number')})" if task else "an export outside any Airflow task"
    expires = document.get("expires") or "?"
    return f"{who} on {document.get('host', '?')}, lease valid until {expires}"


class LocationLease:
    """Take, renew and release the lease of one output location.

    :param sink: the location.
    :param identity: who we are.
    :param period: the period we export (see :attr:`ExportSpec.period`).
    :param log: logger.
    :param seconds: how long a renewal holds the location.
    :param stop: set to stop waiting for another writer.
    """

    def __init__(
        self,
        sink: PartSink,
        identity: WriterIdentity,
        period: dict[str, Any],
        log: Any,
        *,
        seconds: float = DEFAULT_LEASE_SECONDS,
        stop: threading.Event | None = None,
    ) -> None:
        self.sink = sink
        self.identity = identity
        self.period = period
        self.log = log
        self.seconds = seconds
        self.stop = stop or threading.Event()
        self._tag: str | None = None
        self._lost = False  # taken by another writer: nothing more is written
        self._renewed_at = 0.0
        self.waited_since: float | None = None
        #: The lease of the export this one waited for (the first seen), if it waited.
        self.waited_for: dict[str, Any] | None = None
        self.taken_from: dict[str, Any] | None = None

    @property
    def left_by_earlier_try(self) -> dict[str, Any] | None:
        """The lease document this writer took over from an earlier try of the same task instance:
        that try stopped (crashed, killed) without releasing the location."""
        holder = self.taken_from
        if not holder or self.identity.task is None or holder.get("task") != self.identity.task:
            return None
        return holder if holder.get("try_number") != self.identity.try_number else None

    @property
    def held(self) -> bool:
        """Whether we hold the lease now."""
        return self._tag is not None

    def _document(self, until: float) -> bytes:
        return encode_document(
            {
                "writer_id": self.identity.writer_id,
                "task": self.identity.task,
                "try_number": self.identity.try_number,
                "host": self.identity.host,
                **self.period,
                "acquired_at": pendulum.now("UTC").to_iso8601_string(),
                "expires_at": until,
                "expires": pendulum.from_timestamp(until, tz="UTC").to_iso8601_string(),
            }
        )

    def acquire(self, max_wait: float) -> None:
        """Take the location, waiting up to ``max_wait`` seconds for a same-period writer.

        :raises LoyaltyLocationBusyError: a different period holds it, or the wait ran out.
        """
        started = time.monotonic()
        while True:
            try:
                found = self.sink.tagged(LEASE_NAME)
            except UnreadableDocument:
                found = ({}, "")  # a torn lease document: nobody can prove they hold it
            if found is None:
                self._tag = self.sink.create_exclusive(LEASE_NAME, self._document(time.time() + self.seconds))
                if self._tag is not None:
                    return self._took("took")
                continue
            holder, tag = found
            if self._may_take_over(holder):
                self._tag = (
                    self.sink.replace_if(LEASE_NAME, self._document(time.time() + self.seconds), tag) if tag else None
                )
                if self._tag is None and not tag:
                    self.sink.delete([LEASE_NAME])  # unreadable: remove it and create ours
                    continue
                if self._tag is not None:
                    self.taken_from = holder
                    return self._took(f"took over from {_holder_text(holder)}")
                continue  # it changed meanwhile: look again
            self._wait_or_fail(holder, started, max_wait)

    def _may_take_over(self, holder: dict[str, Any]) -> bool:
        if not holder or holder.get("writer_id") == self.identity.writer_id:
            return True
        if not is_live(holder):
            return True
        if holder.get("task") is not None:
            return bool(holder.get("task") == self.identity.task)
        # Outside Airflow nothing tells a crashed attempt from a live one: same period, same export.
        same_period = {name: holder.get(name) for name in self.period} == self.period
        return self.identity.task is None and same_period

    def _wait_or_fail(self, holder: dict[str, Any], started: float, max_wait: float) -> None:
        location = self.sink.describe()
        theirs = {name: holder.get(name) for name in self.period}
        if theirs != self.period:
            raise LoyaltyLocationBusyError(
                location,
                _holder_text(holder),
                f"{location} is being written by another export ({describe_period(theirs)}): {_holder_text(holder)}. "
                f"This export ({describe_period(self.period)}) needs a location of its own: give each period its "
                f"own output path/prefix. If that writer is gone, delete {_lease_path(location)}.",
            )
        if self.waited_since is None:
            self.waited_since = time.time()
            self.waited_for = dict(holder)
            self.log.info(
                "Another export of the same period writes at %s (%s); waiting for it", location, _holder_text(holder)
            )
        if time.monotonic() - started > max_wait:
            raise LoyaltyLocationBusyError(
                location,
                _holder_text(holder),
                f"{location}: waited {max_wait:g} s for another export of this period, {_holder_text(holder)}, "
                "to finish. A retry waits again and uses its export once it finished; if that writer is gone "
                f"(its task no longer runs), its lease lapses at the time it names, or delete {_lease_path(location)}.",
            )
        if self.stop.wait(WAIT_POLL_SECONDS):
            raise LoyaltyExportStopped("stopped while waiting for another export's lease")

    def _took(self, how: str) -> None:
        self._renewed_at = time.monotonic()
        self.log.debug("Lease of %s %s", self.sink.describe(), how)

    def renew(self, until: float | None = None, *, force: bool = False) -> None:
        """Extend the lease (to ``until``, epoch seconds, or by its usual length).

        Cheap to call often: without ``until``/``force`` it writes only when a third of the lease
        has passed since the last renewal.

        :raises LoyaltyLocationBusyError: the lease was taken by someone else meanwhile.
        """
        if self._tag is None:
            return
        if until is None and not force and time.monotonic() - self._renewed_at < self.seconds / 3:
            return
        expiry = until if until is not None else time.time() + self.seconds
        tag = self.sink.replace_if(LEASE_NAME, self._document(expiry), self._tag)
        if tag is None:
            self._tag, self._lost = None, True
            raise LoyaltyLocationBusyError(
                self.sink.describe(),
                "another writer",
                f"{self.sink.describe()}: the lease was taken by another export while this one wrote "
                "(it had expired); stopping rather than writing over it",
            )
        self._tag = tag
        self._renewed_at = time.monotonic()

    def keep(self) -> None:
        """Before a write: make sure the lease is still ours (:meth:`check`), renewing it instead
        when a third of it has passed (:meth:`renew` checks too). A seal of thousands of parts, or
        of slow server-side copies, outlasted its lease with no batch left to renew it: another
        export took the location over in the middle of it.

        :raises LoyaltyLocationBusyError: the lease was taken by someone else meanwhile.
        """
        if self._tag is not None and time.monotonic() - self._renewed_at >= self.seconds / 3:
            self.renew()
        else:
            self.check()

    def check(self) -> None:
        """Make sure the lease is still ours before a write that says where the export stands (one
        read): a try Airflow gave up on (a missed heartbeat) whose retry took the location over
        stops at its next checkpoint instead of writing over the retry's.

        :raises LoyaltyLocationBusyError: the lease was taken by someone else meanwhile (also on every
            call after that).
        """
        if self._tag is None:
            if self._lost:
                raise LoyaltyLocationBusyError(
                    self.sink.describe(),
                    "another writer",
                    f"{self.sink.describe()}: this export ({self.identity.describe()}) lost its lease and "
                    "writes nothing more",
                )
            return
        found = self._stored()
        if found is None or found[1] != self._tag:
            self._tag, self._lost = None, True
            holder = _holder_text(found[0]) if found is not None else "nobody (the lease is gone)"
            raise LoyaltyLocationBusyError(
                self.sink.describe(),
                holder,
                f"{self.sink.describe()}: the lease is now held by {holder}; this export ({self.identity.describe()}) "
                "stops rather than write over it (Airflow may have given up on this try and started another)",
            )

    def release(self) -> None:
        """Give the location up (only if the lease is still ours)."""
        if self._tag is None:
            return
        found = self._stored()
        if found is not None and found[1] == self._tag:
            self.sink.delete([LEASE_NAME])
        self._tag = None

    def release_left_at_deferral(self) -> bool:
        """Give up the location this try of the task held when it deferred, without taking it
        first: Airflow failed the deferral (no triggerer answered by its timeout, or the trigger
        could not run), so no ``execute_complete`` will. Its lease was renewed past the wait's
        deadline and would hold other exports off that long. A lease another try or another export
        holds is left alone.

        :return: whether a lease was given up.
        """
        found = self._stored()
        if found is None or self.identity.task is None:
            return False
        holder, tag = found
        if holder.get("task") != self.identity.task or holder.get("try_number") != self.identity.try_number:
            return False
        self._tag = tag
        self.release()
        return True

    def _stored(self) -> tuple[dict[str, Any], str] | None:
        """The lease document at the location and its tag; ``None`` when absent or torn."""
        try:
            return self.sink.tagged(LEASE_NAME)
        except UnreadableDocument:
            return None


class LeasedSink(DelegatingSink):
    """The location as its writer writes it: every write first makes sure the lease is still the
    writer's (:meth:`LocationLease.keep`: one read, or a renewal when a third of the lease has
    passed, so a long seal keeps it), and a part upload, long enough for a stalled process to
    outlive its lease, makes sure again after it, before anything records the part.

    A writer whose lease another export took (it had expired while this one stalled, or Airflow
    started another try) stops at its next write instead of writing over the other's parts,
    records, manifest or checkpoint. Reads go straight to the location.

    :param sink: the location.
    :param lease: the writer's lease of it.
    """

    def __init__(self, sink: PartSink, lease: LocationLease) -> None:
        super().__init__(sink)
        self.lease = lease

    def put_file(self, name: str, local_path: str, sha256: str | None = None) -> None:
        self.lease.keep()
        super().put_file(name, local_path, sha256)
        self.lease.check()

    def write_bytes(self, name: str, payload: bytes) -> None:
        self.lease.keep()
        super().write_bytes(name, payload)

    def write_json(self, name: str, document: dict[str, Any]) -> str:
        self.lease.keep()
        return super().write_json(name, document)

    def create_exclusive(self, name: str, payload: bytes) -> str | None:
        self.lease.keep()
        return super().create_exclusive(name, payload)

    def replace_if(self, name: str, payload: bytes, tag: str) -> str | None:
        self.lease.keep()
        return super().replace_if(name, payload, tag)

    def delete(self, names: list[str]) -> None:
        if names:
            self.lease.keep()
            super().delete(names)

    def move(self, source: str, target: str) -> None:
        self.lease.keep()
        super().move(source, target)
