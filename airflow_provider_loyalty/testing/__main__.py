"""``python -m airflow_provider_loyalty.testing``: same as the ``loyalty-emulator`` console script."""

from __future__ import annotations

import sys

from airflow_provider_loyalty.testing.cli import main

if __name__ == "__main__":
    sys.exit(main())
