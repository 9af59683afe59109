"""Loyalty API emulator: a real HTTP server of the seed API for tests, demos and benchmarks.

Quick start::

    from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator

    with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000)) as emulator:
        emulator.set_faults([FaultRule(endpoint="status", kind="rate_limit", count=1)])
        ...  # talk to emulator.url with "Authorization: Bearer " + emulator.token

Pytest users get the fixtures automatically: the package registers this plugin under the ``pytest11``
entry point (with plugin autoload disabled, pass ``-p loyalty_emulator``);
the console script ``loyalty-emulator`` (or ``python -m airflow_provider_loyalty.testing``) serves it
from the command line.
"""

from __future__ import annotations

from airflow_provider_loyalty.testing.config import CURSOR_MODES, HASHED_FILE_STYLES, EmulatorConfig
from airflow_provider_loyalty.testing.data import TRANSACTION_FIELDS
from airflow_provider_loyalty.testing.faults import FAULT_KINDS, FaultRule
from airflow_provider_loyalty.testing.server import ERROR_CODES, LoyaltyEmulator

__all__ = [
    "CURSOR_MODES",
    "ERROR_CODES",
    "FAULT_KINDS",
    "HASHED_FILE_STYLES",
    "TRANSACTION_FIELDS",
    "EmulatorConfig",
    "FaultRule",
    "LoyaltyEmulator",
]
