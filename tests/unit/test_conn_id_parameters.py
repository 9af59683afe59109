"""Connection ids and the S3 bucket are checked when the DAG is parsed, naming the parameter.

A number, a list, an empty id or one with a pasted line break can only fail at run time (after
export tasks were created, for the S3 bucket), so the DAG's parse reports them, in the constructor
and in ``partial()`` alike. The operators template their connection ids, as official providers do:
a template waits for run time and is checked once rendered, before any request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook
from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator, LoyaltyExportOperator
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

EXPORT = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "date_from": "2023-09-01"}
MEMBER = {
    "loyalty_program_id": 123,
    "points_currency_eid": "bonus_points",
    "matching": "email",
    "member_email": "a@example.com",
}

BUILDERS: dict[str, Callable[..., Any]] = {
    "s3": lambda **kw: LoyaltyTransactionsToS3Operator(task_id="t", s3_bucket="compliance", **EXPORT, **kw),
    "s3-partial": lambda **kw: LoyaltyTransactionsToS3Operator.partial(task_id="t", s3_bucket="compliance", **kw),
    "file": lambda **kw: LoyaltyExportOperator(task_id="t", output_path="/tmp/exports", **EXPORT, **kw),
    "file-partial": lambda **kw: LoyaltyExportOperator.partial(task_id="t", output_path="/tmp/exports", **kw),
    "member": lambda **kw: LoyaltyAccountTransactionsOperator(task_id="t", output_path="/tmp/h.jsonl", **MEMBER, **kw),
    "member-partial": lambda **kw: LoyaltyAccountTransactionsOperator.partial(
        task_id="t", output_path="/tmp/h.jsonl", **MEMBER, **kw
    ),
    "sensor": lambda **kw: LoyaltyExportTaskSensor(task_id="t", export_task_id="task_1", **kw),
    "hook": lambda **kw: LoyaltyHook(**kw),
    "async-hook": lambda **kw: LoyaltyAsyncHook(**kw),
}

CASES = [
    # (builder, parameter, value, message)
    *(
        (builder, "loyalty_conn_id", value, message)
        for builder in BUILDERS
        for value, message in (
            (5, "expected a connection id string, got 5"),
            (["loyalty_default"], "expected a connection id string, got \\['loyalty_default'\\]"),
            ("", "expected a connection id string, got ''"),
            (None, "expected a connection id string, got None"),
            ("loyalty_default\n", "a connection id holds no control character"),
        )
    ),
    ("s3", "aws_conn_id", 7, "expected a connection id string, got 7"),
    ("s3-partial", "aws_conn_id", 7, "expected a connection id string, got 7"),
    ("file", "output_conn_id", 3, "expected a connection id string, got 3"),
    ("file-partial", "output_conn_id", ("fs",), "expected a connection id string, got \\('fs',\\)"),
    ("member", "output_conn_id", 3, "expected a connection id string, got 3"),
    ("member-partial", "output_conn_id", 3, "expected a connection id string, got 3"),
]


@pytest.mark.parametrize(
    ("builder", "parameter", "value", "message"),
    CASES,
    ids=[f"{builder}-{parameter}-{value!r}" for builder, parameter, value, _ in CASES],
)
def test_a_connection_id_that_is_no_id_fails_naming_the_parameter(
    builder: str, parameter: str, value: Any, message: str
) -> None:
    with pytest.raises(LoyaltyValidationError, match=f"^{parameter}: {message}"):
        BUILDERS[builder](**{parameter: value})


@pytest.mark.parametrize(
    ("builder", "parameter", "value"),
    [
        ("s3", "aws_conn_id", None),  # boto3's own credential chain (instance role)
        ("s3", "aws_conn_id", "aws_compliance"),
        ("file", "output_conn_id", None),
        ("file", "output_conn_id", "fs_default"),
        ("member", "output_conn_id", None),
        ("sensor", "loyalty_conn_id", "loyalty_eu"),
        ("hook", "loyalty_conn_id", "loyalty_eu"),
        ("async-hook", "loyalty_conn_id", "loyalty_eu"),
    ],
)
def test_a_connection_id_is_kept_as_given(builder: str, parameter: str, value: Any) -> None:
    built = BUILDERS[builder](**{parameter: value})
    assert getattr(built, parameter) == value


@pytest.mark.parametrize("bucket", [5, ["compliance"], b"compliance"])
@pytest.mark.parametrize("partial", [False, True])
def test_a_bucket_that_is_no_name_fails_naming_it(bucket: Any, partial: bool) -> None:
    """``str(5)`` used to pass as the bucket "5" (no S3 bucket name has one character)."""
    with pytest.raises(LoyaltyValidationError, match=r"^s3_bucket: expected a bucket name string, got"):
        if partial:
            LoyaltyTransactionsToS3Operator.partial(task_id="t", s3_bucket=bucket)
        else:
            LoyaltyTransactionsToS3Operator(task_id="t", s3_bucket=bucket, **EXPORT)


OPERATORS = [name for name in BUILDERS if "hook" not in name]
TEMPLATED = [
    *((builder, "loyalty_conn_id") for builder in OPERATORS),
    ("s3", "aws_conn_id"),
    ("s3-partial", "aws_conn_id"),
    ("file", "output_conn_id"),
    ("file-partial", "output_conn_id"),
    ("member", "output_conn_id"),
    ("member-partial", "output_conn_id"),
]


@pytest.mark.parametrize(("builder", "parameter"), TEMPLATED, ids=[f"{b}-{p}" for b, p in TEMPLATED])
def test_a_connection_id_is_templated(builder: str, parameter: str) -> None:
    """``loyalty_conn_id="loyalty_{{ params.region }}"`` was looked up as written at run time (the
    conn ids were in no ``template_fields``, as they are in the http, dbt-cloud and amazon providers)."""
    operator_class = {
        "s3": LoyaltyTransactionsToS3Operator,
        "file": LoyaltyExportOperator,
        "member": LoyaltyAccountTransactionsOperator,
        "sensor": LoyaltyExportTaskSensor,
    }[builder.removesuffix("-partial")]
    assert parameter in operator_class.template_fields
    BUILDERS[builder](**{parameter: "conn_{{ params.region }}"})  # kept for rendering, not refused


@pytest.mark.parametrize("hook", ["hook", "async-hook"])
def test_a_hooks_connection_id_is_never_a_template(hook: str) -> None:
    """Nothing renders a hook's arguments: "loyalty_{{ x }}" would be looked up as written."""
    with pytest.raises(LoyaltyValidationError, match=r"^loyalty_conn_id: a hook's connection id is not rendered"):
        BUILDERS[hook](loyalty_conn_id="loyalty_{{ params.region }}")
