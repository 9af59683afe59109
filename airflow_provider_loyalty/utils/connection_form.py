"""The loyalty connection form: custom fields and field behaviour of the ``loyalty`` type.

Kept free of Airflow imports so :func:`~airflow_provider_loyalty.get_provider_info.get_provider_info` stays cheap,
and shared with :meth:`LoyaltyHook.get_ui_field_behaviour` so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "schema", "port"],
    "relabeling": {"host": "Base URL", "password": "API token"},
    "placeholders": {
        "host": "https://example.com",
        "password": "API token (sent as Authorization: Bearer)",
    },
}

CONN_FIELDS: dict[str, Any] = {
    "content_type": {
        "label": "Content type",
        "description": "Body format of requests: json or xml. Replies are parsed by their own Content-Type either way.",
        "schema": {"type": ["string", "null"], "enum": ["json", "xml"], "default": "json"},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Connect and read timeout of every request.",
        "schema": {"type": ["number", "null"], "default": 60},
    },
    "verify_ssl": {
        "label": "Verify TLS certificate",
        "description": "Keep on in production. Use the extra ca_bundle for a private CA.",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of 429, 5xx, timeouts and connection resets "
        "(exponential backoff with jitter). Auth and validation errors are never retried.",
        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 0},
    },
}
