"""Celery configuration of the cluster's workers: Airflow's defaults, with the provider preloaded.

A Celery worker forks a process for every task it runs, and whatever the worker imported before
forking is already in memory there. Airflow preloads its own expensive modules that way; listing
the provider's S3 transfer (and with it the amazon S3 hook and boto3) in Celery's ``imports`` does
the same for ours, so a task start, and every resume after a deferral, skips those imports.
Selected with ``[celery] celery_config_options = tests.cluster.celery_config.CELERY_CONFIG``.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

#: Imported once by each worker before it forks its pool.
PRELOADED_MODULES: tuple[str, ...] = (
    "airflow_provider_loyalty.transfers.loyalty_to_s3",
    "airflow.providers.amazon.aws.hooks.s3",
)

CELERY_CONFIG: dict[str, Any] = {**DEFAULT_CELERY_CONFIG, "imports": PRELOADED_MODULES}
