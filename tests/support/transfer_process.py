"""Run LoyaltyTransactionsToS3Operator in a process of its own (the "worker" a test can SIGKILL).

Usage: ``python -m tests.support.transfer_process '<json operator kwargs>'``; connections come from the
environment (``AIRFLOW_CONN_LOYALTY_DEFAULT``, ``AIRFLOW_CONN_AWS_DEFAULT``). Prints the manifest
as one JSON line on success.
"""

from __future__ import annotations

import json
import sys

from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from tests.support.operator_driver import context_for


def main(argv: list[str]) -> int:
    kwargs = json.loads(argv[0])
    operator = LoyaltyTransactionsToS3Operator(task_id="to_s3", **kwargs)
    manifest = operator.execute(context_for())
    sys.stdout.write(json.dumps(manifest) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
