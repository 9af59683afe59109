"""Operators of the loyalty provider: exports to files, and member histories."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import BaseOperator, Context, ObjectStoragePath

from airflow_provider_loyalty.exceptions import LoyaltyValidationError, LoyaltyVerificationError
from airflow_provider_loyalty.export.layout import is_reserved_location_name
from airflow_provider_loyalty.export.sinks import ObjectStorageSink, PartSink, object_location, publish_file
from airflow_provider_loyalty.export.spec import ExportSpec
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.operators.export_base import LoyaltyExportBaseOperator
from airflow_provider_loyalty.operators.lineage import operator_lineage
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.json_lines import json_line
from airflow_provider_loyalty.verify_storage import NO_CONNECTION

__all__ = ["LoyaltyAccountTransactionsOperator", "LoyaltyExportOperator"]

_EXPORT_OUTPUT = "a local directory or an object storage URL"
_HISTORY_OUTPUT = "a JSON Lines file path or object storage URL"


class LoyaltyExportOperator(LoyaltyExportBaseOperator):
    """
    Export points transactions of a period as verified parts in a directory or object store.

    Creates an export task, waits for it (in the worker, or deferred to the triggerer), downloads
    and verifies its zip, writes ``part-NNNNN.csv`` (or ``.csv.gz`` / ``.parquet``), and follows
    ``next_from_id`` until the period is exhausted; ``_manifest.json`` is written last. Returns the
    manifest (metadata only; without its ``parts`` list above 100 parts).

    .. seealso::
        :ref:`howto/operator:LoyaltyExportOperator`

    :param output_path: a local directory or an ``ObjectStoragePath`` URL (``file://``,
        ``s3://`` ...). Shared storage is the choice for multi-worker deployments. (templated)
    :param output_conn_id: connection of the object store in ``output_path``, if any. (templated)

    Every parameter of both export operators applies too (program, currency, period,
    ``output_format``, ``deferrable``, ``fail_on_empty``, ``verify``, limits …): see
    :ref:`howto/operator:export-parameters`.
    """

    template_fields: Sequence[str] = (*LoyaltyExportBaseOperator.template_fields, "output_path", "output_conn_id")
    conn_id_parameters = (*LoyaltyExportBaseOperator.conn_id_parameters, "output_conn_id")

    def __init__(
        self, *, output_path: str | ObjectStoragePath, output_conn_id: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.output_path = _literal_output_path(output_path)
        self.output_conn_id = validation.check_optional_conn_id(output_conn_id, "output_conn_id")

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As the base class's; a literal ``output_path`` given here is checked too."""
        if "output_path" in kwargs:
            _literal_output_path(kwargs["output_path"])
        validation.check_conn_ids(kwargs)
        return super().partial(**kwargs)

    def build_sink(self, context: Context, spec: ExportSpec) -> PartSink:
        """Parts go under ``output_path``."""
        self.output_path = _check_location_name(validation.check_output_path(self.output_path, _EXPORT_OUTPUT))
        return ObjectStorageSink(self.output_path, conn_id=self.output_conn_id)

    def verify_conn_id(self) -> str | None:
        """``verify=True`` reads the location with ``output_conn_id``, else with the connection the
        ``output_path`` URL names (``s3://my_conn@bucket/…``), as the export wrote it."""
        if self.output_conn_id:
            return self.output_conn_id
        path = self.output_path
        if isinstance(path, str) and "://" not in path:
            return None  # a local directory
        conn_id = urlsplit(path).username if isinstance(path, str) else getattr(path, "conn_id", None)
        # None named: the store's own credentials, as the export wrote (not aws_default).
        return conn_id if isinstance(conn_id, str) and conn_id else NO_CONNECTION


def _literal_output_path(output_path: Any) -> Any:
    """The export's ``output_path`` as given, checked as far as it can be before it is rendered."""
    output_path = validation.check_output_path(output_path, _EXPORT_OUTPUT)
    if not validation.is_template(output_path):
        _check_location_name(output_path)
    return output_path


def _check_location_name(output_path: Any) -> Any:
    """``output_path``, unless it names another location's bookkeeping folder (``<dir>/_staging``,
    ``<dir>/_parts``, ``<dir>/_tmp-…``): an export at ``<dir>`` clears those and would delete it."""
    name = output_path.name if isinstance(output_path, ObjectStoragePath) else str(output_path).rstrip("/")
    name = name.rsplit("/", 1)[-1]
    if is_reserved_location_name(name):
        raise LoyaltyValidationError(
            "output_path",
            f"{str(output_path)[:120]!r} ends in {name!r}, a name the exports keep their bookkeeping under",
        )
    return output_path


def _checked_history_settings(values: dict[str, Any]) -> dict[str, Any]:
    """``matching``, ``limit`` and ``output_path`` among ``values``, checked (errors name them)."""
    checks: dict[str, Callable[[Any], Any]] = {
        "matching": validation.check_matching_mode,
        "limit": validation.check_limit,
        "output_path": lambda path: validation.check_output_path(path, _HISTORY_OUTPUT),
    }
    return {name: check(values[name]) for name, check in checks.items() if name in values}


class LoyaltyAccountTransactionsOperator(BaseOperator):
    """
    Write one member's whole points history (every page) as JSON Lines.

    Pages ``POST /api/v1.1/loyalty/account/transactions`` with ``from_id`` / ``limit`` until
    ``next_from_id`` is empty, one page in memory at a time, and checks the rows written against
    the API's ``total_count``. Map it over many members with ``.partial(...).expand(member_email=[...])``.
    A member the API does not find fails the task (``LoyaltyNotFoundError``); a member without
    transactions gives an empty file and ``rows == 0``.

    .. seealso::
        :ref:`howto/operator:LoyaltyAccountTransactionsOperator`

    :param loyalty_program_id: the loyalty program. (templated)
    :param matching: how the member is found: ``email``, ``phone``, ``profile_id`` or ``custom``.
    :param member_email: the member's email, with ``matching="email"`` (not ``email``: that is
        ``BaseOperator``'s list of alert recipients, and must never be a customer). (templated)
    :param phone: member phone in international format, with ``matching="phone"``. (templated)
    :param profile_id: member profile id, with ``matching="profile_id"``. (templated)
    :param field_name: custom field name, with ``matching="custom"``. (templated)
    :param field_value: custom field value, with ``matching="custom"``. (templated)
    :param points_currency_eid: external points currency id; give this or the iid. (templated)
    :param points_currency_iid: internal points currency id; give this or the eid. (templated)
    :param output_path: the JSON Lines file (local path or object storage URL); a path ending in
        ``/`` is a directory, the file then named from a hash of the member key (no PII in
        names). (templated)
    :param output_conn_id: connection of the object store in ``output_path``, if any. (templated)
    :param limit: records per page, 1..100.
    :param loyalty_conn_id: the ``loyalty`` connection. (templated)
    """

    template_fields: Sequence[str] = (
        "loyalty_program_id",
        "member_email",
        "phone",
        "profile_id",
        "field_name",
        "field_value",
        "points_currency_eid",
        "points_currency_iid",
        "output_path",
        "output_conn_id",
        "loyalty_conn_id",
    )

    def __init__(
        self,
        *,
        loyalty_program_id: int | str,
        matching: str,
        output_path: str | ObjectStoragePath,
        member_email: str | None = None,
        phone: str | None = None,
        profile_id: str | None = None,
        field_name: str | None = None,
        field_value: str | int | None = None,
        points_currency_eid: str | None = None,
        points_currency_iid: int | str | None = None,
        output_conn_id: str | None = None,
        limit: int = 100,
        loyalty_conn_id: str = LoyaltyHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loyalty_program_id = loyalty_program_id
        settings = _checked_history_settings({"matching": matching, "limit": limit, "output_path": output_path})
        self.matching: str = settings["matching"]  # never templated: checked at parse
        self.member_email = member_email
        self.phone = phone
        self.profile_id = profile_id
        self.field_name = field_name
        self.field_value = field_value
        self.points_currency_eid = points_currency_eid
        self.points_currency_iid = points_currency_iid
        self.output_path = output_path
        self.output_conn_id = output_conn_id
        self.limit: int = settings["limit"]
        validation.check_conn_ids({"loyalty_conn_id": loyalty_conn_id, "output_conn_id": output_conn_id})
        self.loyalty_conn_id = loyalty_conn_id
        # Literal values are checked when the DAG is parsed (templates wait for run time): a DAG
        # passing ``email=`` (the alert recipients) instead of ``member_email`` never runs.
        if not any(validation.is_template(value) for value in self._member().values()):
            self._member_fields()
        validation.check_literal_program_and_currency(
            {name: getattr(self, name) for name in ("loyalty_program_id", "points_currency_eid", "points_currency_iid")}
        )

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As :meth:`BaseOperator.partial`, with the literal program, currency, ``matching``,
        ``limit`` and ``output_path`` given here checked at DAG-parse time (the mapped values, and
        the member, wait for run time)."""
        validation.check_literal_program_and_currency(kwargs)
        _checked_history_settings(kwargs)
        validation.check_conn_ids(kwargs)
        return super().partial(**kwargs)

    def _member(self) -> dict[str, Any]:
        return {
            "email": self.member_email,
            "phone": self.phone,
            "profile_id": self.profile_id,
            "field_name": self.field_name,
            "field_value": self.field_value,
        }

    def _member_fields(self) -> dict[str, Any]:
        """The member lookup as request fields; errors name this operator's ``member_email``."""
        try:
            return validation.check_matching(self.matching, **self._member())
        except LoyaltyValidationError as error:
            if error.parameter == "email":  # the API's field name; this operator's parameter is member_email
                raise LoyaltyValidationError("member_email", str(error).partition(": ")[2]) from None
            raise

    def _target(self, history_key: dict[str, Any]) -> ObjectStoragePath:
        """The history file: ``output_path``, or a file named from ``history_key`` in it when it is
        a directory (a string ending in ``/``, or a path of an existing directory)."""
        raw = validation.check_output_path(self.output_path, _HISTORY_OUTPUT)
        if isinstance(raw, ObjectStoragePath):
            path = raw
        else:
            text = str(raw)
            if text.endswith("/"):
                text += _history_file_name(history_key)
            if "://" in text:
                path = ObjectStoragePath(text, conn_id=self.output_conn_id)
            else:
                path = ObjectStoragePath(f"file://{os.path.abspath(os.path.expanduser(text))}")
        # A path naming an existing directory is one, with or without its trailing "/": publishing
        # the file over it failed only once the whole history was fetched.
        return path / _history_file_name(history_key) if _is_directory(path) else path

    def execute(self, context: Context) -> dict[str, Any]:
        """Page the member's history into the JSON Lines file; return path, rows, total_count and
        duplicates_dropped (records repeated at page boundaries, written once).

        The file is written under a temporary name and published only once complete and checked,
        so a failed run leaves the previous file untouched.
        """
        validation.check_conn_ids({"loyalty_conn_id": self.loyalty_conn_id, "output_conn_id": self.output_conn_id})
        member_fields = self._member_fields()
        program = validation.check_program_id(self.loyalty_program_id)
        currency = validation.check_currency(self.points_currency_eid, self.points_currency_iid)
        history_key = {"loyalty_program_id": program, **currency, **member_fields}
        target = self._target(history_key)
        if target.name != _history_file_name(history_key):  # one file named by output_path itself
            _refuse_one_file_for_many_members(context, self.task_id)
        _check_local_target(target)  # before the history is fetched, not when it is published
        hook = LoyaltyHook(self.loyalty_conn_id)
        with tempfile.TemporaryDirectory(prefix="loyalty-member-") as workdir:
            local = os.path.join(workdir, "history.jsonl")
            history = self._write_history(hook, local)
            publish_file(local, target)
        self.log.info(
            "Member history: %d transaction(s) written to %s (%d repeated at page boundaries, dropped)",
            history.rows,
            object_location(target),
            history.duplicates_dropped,
        )
        self._written = object_location(target)
        return {
            "path": self._written,
            "rows": history.rows,
            "total_count": history.total_count,
            "duplicates_dropped": history.duplicates_dropped,
        }

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage: the API's transactions as input; the output is known once the file is written."""
        return operator_lineage(self.loyalty_conn_id, self.loyalty_program_id, None)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the API's transactions as input, the history file as the output."""
        return operator_lineage(self.loyalty_conn_id, self.loyalty_program_id, getattr(self, "_written", None))

    def _write_history(self, hook: LoyaltyHook, local: str) -> _History:
        """Write every page to ``local``; return the rows, the ``total_count`` they match and the
        records dropped as repeats of the page before (see :meth:`LoyaltyHook.iter_account_transaction_pages`).

        Seed 001 says only "Total number of transactions". Read as the member's whole history, the
        last page's count is the one to match (the member may earn points during the walk); read
        as the transactions from the page's ``from_id`` on, it shrinks page by page: the rows
        before a page plus its count (less the repeats it dropped) are the history as that page
        saw it, the first page's (from the start) and the last page's (which sees what was earned
        during the walk) among them. Either reading that the rows match is complete. More rows
        than any count so far reads matches neither: the walk stops there, not at its end. Read
        from the cursor on, the history may grow during the walk to twice the first page's count,
        no further: a server that has one more record on every page (past its count of 1) is a
        runaway, not a member earning points as fast as they are read.
        """
        rows = dropped = 0
        totals: list[int] = []  # as the API gave them
        seen_from_cursor: list[int] = []  # each read as the count from the page's from_id on
        with open(local, "wb") as sink:
            for page in hook.iter_account_transaction_pages(
                loyalty_program_id=self.loyalty_program_id,
                matching=self.matching,
                points_currency_eid=self.points_currency_eid,
                points_currency_iid=self.points_currency_iid,
                limit=self.limit,
                **self._member(),
            ):
                before, repeats = rows, page.get("duplicates_dropped", 0)
                for record in page["data"]:
                    sink.write(json_line(record))
                    rows += 1
                dropped += repeats
                if page["total_count"] is not None:
                    totals.append(page["total_count"])
                    seen_from_cursor.append(before + page["total_count"] - repeats)
                ceiling = max(*totals, min(max(seen_from_cursor, default=0), 2 * totals[0])) if totals else None
                if ceiling is not None and rows > ceiling:
                    raise LoyaltyVerificationError(
                        f"member history: {rows} transactions so far, more than any total_count the API "
                        f"gave (at most {ceiling}, read either way); stopping"
                    )
        if not totals:
            return _History(rows, None, dropped)
        first, last = totals[0], totals[-1]
        if rows not in (first, last, seen_from_cursor[-1]):
            counted = f"{last}" if first == last else f"{first} on the first page and {last} on the last"
            raise LoyaltyVerificationError(
                f"member history: wrote {rows} transactions but the API's total_count says {counted}"
            )
        return _History(rows, rows, dropped)


class _History(NamedTuple):
    """What :meth:`LoyaltyAccountTransactionsOperator._write_history` wrote."""

    rows: int
    total_count: int | None
    duplicates_dropped: int


def _refuse_one_file_for_many_members(context: Context, task_id: str) -> None:
    """Refuse a mapped task whose ``output_path`` names one file that other mapped tasks of the
    operator write too (mapped over the member, the path the same literal): each would replace the
    others' history and succeed. Mapped over ``output_path`` too, or with a path that is a template
    (it may differ per task), it is left alone.

    Called only when this task's path names one file (not a directory)."""
    index = getattr(context.get("ti"), "map_index", -1)
    dag = context.get("dag")
    if index is None or index < 0 or dag is None:
        return
    declared = getattr(dag, "task_dict", {}).get(task_id)  # a context made by hand may lack the task
    if declared is None:
        return
    expand_input = getattr(declared, "expand_input", None)
    if expand_input is not None:  # mapped with .expand() / .expand_kwargs(): the DAG's operator says what varies
        given = _path_every_mapped_task_shares(declared, getattr(expand_input, "value", None), index)
    else:  # in a mapped task group
        given = getattr(declared, "output_path", None)
    if not isinstance(given, str | os.PathLike | ObjectStoragePath) or validation.is_template(given):
        return
    directory = (
        "give an ObjectStoragePath of an existing directory (it drops a trailing '/') or a string ending in '/'"
        if isinstance(given, ObjectStoragePath)
        else "end it with '/'"
    )
    raise LoyaltyValidationError(
        "output_path",
        f"{str(given)[:200]!r} is one file, and other mapped tasks of {task_id!r} write it too, each "
        f"replacing the others' history: {directory} for one file per member in that directory, or map "
        "output_path too",
    )


def _path_every_mapped_task_shares(declared: Any, mapped: Any, index: int) -> Any:
    """The ``output_path`` this mapped task shares with others, or ``None`` (it may be its own)."""
    partial = getattr(declared, "partial_kwargs", {})
    if isinstance(mapped, dict):  # .expand(): the path is the partial's unless mapped too
        return None if "output_path" in mapped else partial.get("output_path")
    if "output_path" in partial and getattr(declared, "_disallow_kwargs_override", False):
        return partial["output_path"]  # .expand_kwargs(), strict: no dict may give another path
    if isinstance(mapped, list) and 0 <= index < len(mapped) and all(isinstance(kw, dict) for kw in mapped):
        paths = [kw.get("output_path", partial.get("output_path")) for kw in mapped]  # a literal list of dicts
        mine = paths[index]
        if paths.count(mine) > 1:
            return mine
    return None


def _history_file_name(history_key: dict[str, Any]) -> str:
    """``member-<hash>.jsonl``: one name per program, currency and member, and no email address or
    phone number in it. A ``field_value`` of ``1`` and of ``"1"`` is one member (native rendering
    makes a number of a templated id), so one name; so are ``Member@Example.com`` and
    ``member@example.com`` (the API finds one member by either)."""
    if isinstance(history_key.get("field_value"), int):
        history_key = {**history_key, "field_value": str(history_key["field_value"])}
    if isinstance(history_key.get("email"), str):
        history_key = {**history_key, "email": history_key["email"].lower()}
    key = json.dumps(history_key, sort_keys=True, default=str)
    return f"member-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


def _check_local_target(target: ObjectStoragePath) -> None:
    """A local history file's directory can be made and written: its nearest existing ancestor is
    a writable directory (nothing is created here). Checked before any request: a path under a
    file, or in a read-only directory, failed with the OS's words once the whole history was fetched."""
    if target.protocol not in ("file", "local"):
        return
    directory = os.path.dirname(target.path)
    ancestor = directory
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise LoyaltyValidationError(
            "output_path", f"{object_location(target)} cannot be written: {ancestor} is a file, not a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise LoyaltyValidationError(
            "output_path", f"{object_location(target)} cannot be written: {ancestor} is not writable by this worker"
        )


def _is_directory(path: ObjectStoragePath) -> bool:
    """Whether an ``ObjectStoragePath`` names an existing directory (or an S3 prefix with objects)."""
    try:
        return bool(path.is_dir())
    except OSError:
        return False
