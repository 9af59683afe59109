"""Run an export operator in a process of its own (the "worker" a test can SIGKILL).

Usage: ``python -m tests.support.export_process '<json operator kwargs>'``: the S3 transfer when the
kwargs name ``s3_bucket``, else ``LoyaltyExportOperator``. Connections come from the environment.
Prints the manifest as one JSON line on success.
"""

from __future__ import annotations

import json
import sys

from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from tests.support.operator_driver import context_for, task_instance


def main(argv: list[str]) -> int:
    kwargs = json.loads(argv[0])
    cls = LoyaltyTransactionsToS3Operator if "s3_bucket" in kwargs else LoyaltyExportOperator
    operator = cls(task_id="export", **kwargs)
    manifest = operator.execute(context_for(ti=task_instance(run_id="subprocess")))
    sys.stdout.write(json.dumps(manifest) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
