"""The loyalty connection form: custom fields and field behaviour of the ``loyalty`` type.

Declared once, read two ways:

* Airflow 3.2 and newer read :data:`CONN_FIELDS` and :data:`UI_FIELD_BEHAVIOUR` from
  :func:`~airflow_provider_loyalty.get_provider_info.get_provider_info` (``conn-fields`` and
  ``ui-field-behaviour``) and never call the hook's form methods.
* Airflow 3.1's UI knows only the hook's ``get_connection_form_widgets`` (wtforms fields) and
  ``get_ui_field_behaviour`` (snake_case keys); :func:`connection_form_widgets` and
  :func:`hook_field_behaviour` derive both from the declarations above, so the forms cannot drift.

Kept free of module-level Airflow and wtforms imports so ``get_provider_info`` stays cheap; wtforms
is imported inside :func:`connection_form_widgets`, as official providers do (Airflow 3.1 builds the
form only where wtforms can be imported, and replaces its field classes while it does).
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


def hook_field_behaviour() -> dict[str, Any]:
    """:data:`UI_FIELD_BEHAVIOUR` in the format of ``BaseHook.get_ui_field_behaviour`` (Airflow 3.1).

    Provider info spells the keys in kebab-case (``hidden-fields``), the hook method in snake_case
    (``hidden_fields``, required by Airflow 3.1 together with ``relabeling``).
    """
    behaviour = {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}
    behaviour.setdefault("hidden_fields", [])
    behaviour.setdefault("relabeling", {})
    return behaviour


def connection_form_widgets() -> dict[str, Any]:
    """:data:`CONN_FIELDS` as the wtforms fields of ``BaseHook.get_connection_form_widgets`` (Airflow 3.1).

    Airflow 3.1 accepts only ``StringField``, ``IntegerField``, ``PasswordField`` and ``BooleanField``:
    a JSON-schema ``number`` (the timeout) becomes an ``IntegerField`` there, so that UI takes whole
    seconds (the extra itself still accepts fractions). Every field is optional (an empty value
    means the default); an ``enum`` becomes ``any_of`` (a select in the UI), a ``minimum`` a
    ``NumberRange``.

    :raises ImportError: wtforms is not installed (Airflow then shows the form without these fields).
    """
    from wtforms import BooleanField, IntegerField, StringField
    from wtforms.validators import NumberRange, Optional, any_of

    field_classes = {"string": StringField, "integer": IntegerField, "number": IntegerField, "boolean": BooleanField}
    widgets: dict[str, Any] = {}
    for name, spec in CONN_FIELDS.items():
        schema = spec["schema"]
        (kind,) = [kind for kind in schema["type"] if kind != "null"]
        validators: list[Any] = [Optional()]
        if "enum" in schema:
            validators.append(any_of([value for value in schema["enum"] if value is not None]))
        if "minimum" in schema:
            validators.append(NumberRange(min=schema["minimum"]))
        widgets[name] = field_classes[kind](
            label=spec["label"],
            description=spec.get("description", ""),
            default=schema.get("default"),
            validators=validators,
        )
    return widgets
