"""DAGs of the cluster tests: the daily S3 export, deferrable, on a data-interval timetable.

One factory, three DAGs that differ only in what each test exercises:

* ``loyalty_cluster_backfill``: the 14-interval backfill with a worker and a triggerer killed;
* ``loyalty_cluster_rate_limited``: runs share the ``loyalty_default`` pool (one pool per loyalty
  connection, the recipe of docs/production.rst) against an API that answers 429 above N requests;
* ``loyalty_cluster_deadline``: an ``execution_timeout`` that must hold while the task is deferred.

The bucket comes from ``dag_run.conf`` (``airflow backfill create --dag-run-conf``), each interval
lands under ``exports/<data_interval_start>/``. Backfills need the DAG unpaused; ``end_date`` in the
past (and no catchup) keeps the scheduler from making runs of its own, so only the tests' backfills
make runs.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable

from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

START = pendulum.datetime(2024, 1, 1, tz="UTC")
END = pendulum.datetime(2024, 1, 31, tz="UTC")
POLL_INTERVAL = float(os.environ.get("LOYALTY_CLUSTER_POLL_INTERVAL", "1"))
DEADLINE_TIMEOUT = float(os.environ.get("LOYALTY_CLUSTER_DEADLINE_TIMEOUT", "30"))


def export_dag(
    dag_id: str,
    *,
    pool: str = "default_pool",
    execution_timeout: timedelta | None = None,
    retries: int = 4,
) -> DAG:
    """A daily export of one interval's transactions to ``s3://<conf bucket>/exports/<day>/``.

    :param dag_id: the DAG id.
    :param pool: the pool of the export task.
    :param execution_timeout: the export task's ``execution_timeout``.
    :param retries: the export task's retries (a killed worker costs one).
    """
    with DAG(
        dag_id,
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=START,
        end_date=END,
        catchup=False,
        is_paused_upon_creation=False,
        max_active_runs=16,
        params={"bucket": "unset"},
        tags=["loyalty", "cluster-test"],
    ) as dag:
        LoyaltyTransactionsToS3Operator(
            task_id="export",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            s3_bucket="{{ params.bucket }}",
            s3_key_prefix="exports/{{ data_interval_start | ds }}",
            deferrable=True,
            poll_interval=POLL_INTERVAL,
            pool=pool,
            execution_timeout=execution_timeout,
            retries=retries,
            retry_delay=timedelta(seconds=2),
        )
    return dag


backfill_dag = export_dag("loyalty_cluster_backfill")
rate_limited_dag = export_dag("loyalty_cluster_rate_limited", pool="loyalty_default")
deadline_dag = export_dag("loyalty_cluster_deadline", execution_timeout=timedelta(seconds=DEADLINE_TIMEOUT), retries=0)
