"""What Airflow's ProvidersManager reads about this provider (entry point ``apache_airflow_provider``).

Kept free of Airflow imports so discovery stays cheap.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_loyalty import __version__
from airflow_provider_loyalty.utils.connection_form import CONN_FIELDS, UI_FIELD_BEHAVIOUR

_INTEGRATION = "Loyalty"
#: Versions released before this one, newest first (each has its section in docs/changelog.rst).
RELEASED_VERSIONS = ("2.0.0", "1.0.0")


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-loyalty",
        "name": "Loyalty",
        "description": "Points-transaction exports and member histories from a loyalty platform's HTTP API.",
        "versions": [__version__, *(version for version in RELEASED_VERSIONS if version != __version__)],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://github.com/airflow-provider-loyalty/airflow-provider-loyalty/blob/main/docs/index.rst",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_loyalty.hooks.loyalty",
                    "airflow_provider_loyalty.hooks.loyalty_async",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_loyalty.operators.loyalty"],
            }
        ],
        "sensors": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_loyalty.sensors.loyalty"],
            }
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_loyalty.triggers.loyalty"],
            }
        ],
        "transfers": [
            {
                "source-integration-name": _INTEGRATION,
                "target-integration-name": "Amazon Simple Storage Service (S3)",
                "python-module": "airflow_provider_loyalty.transfers.loyalty_to_s3",
            }
        ],
        "extra-links": ["airflow_provider_loyalty.operators.links.LoyaltyManifestLink"],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_loyalty.hooks.loyalty.LoyaltyHook",
                "hook-name": "Loyalty",
                "connection-type": "loyalty",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
