"""The connection form as Airflow's API server describes it to the UI, on every supported Airflow.

Airflow 3.2 and newer build it from ``get_provider_info()`` (``conn-fields``, ``ui-field-behaviour``);
Airflow 3.1 from the hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour``, which
:mod:`airflow_provider_loyalty.utils.connection_form` derives from the same declarations. Either way
the UI must get the same four fields with their defaults and the same hidden and relabelled
standard fields. The browser test (``tests/browser``) shows the rendered form on 3.1 and 3.3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.utils.connection_form import CONN_FIELDS, UI_FIELD_BEHAVIOUR, hook_field_behaviour

# What the API server's /ui/connections/hook_meta endpoint computes, in a process of its own (the
# service resets and re-initialises Airflow's ProvidersManager, which must not leak into this one).
HOOK_META = """
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
(meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "loyalty"]
print(meta.model_dump_json())
"""


@pytest.fixture(scope="module")
def hook_meta() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", HOOK_META],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_the_ui_gets_the_four_fields_with_their_defaults(hook_meta):
    extra = hook_meta["extra_fields"]
    assert list(extra) == list(CONN_FIELDS)
    for name, declared in CONN_FIELDS.items():
        field = extra[name]
        assert field["value"] == declared["schema"]["default"], name
        assert field["schema"]["title"] == declared["label"], name
        assert field["description"] == declared["description"], name
        assert "null" in field["schema"]["type"], name  # every field may be left empty
    assert extra["content_type"]["schema"]["enum"] == ["json", "xml"]
    assert "boolean" in extra["verify_ssl"]["schema"]["type"]
    assert "integer" in extra["max_retries"]["schema"]["type"]


def test_the_ui_hides_and_relabels_the_standard_fields(hook_meta):
    standard = hook_meta["standard_fields"]
    hidden = {name for name, field in standard.items() if field and field["hidden"]}
    assert hidden == {"url_schema", "port", "login"}  # the UI calls the schema field "url_schema"
    assert standard["host"] == {"hidden": False, "title": "Base URL", "placeholder": "https://example.com"}
    assert standard["password"]["title"] == "API token"
    assert standard["password"]["placeholder"] == UI_FIELD_BEHAVIOUR["placeholders"]["password"]


def test_hook_field_behaviour_is_the_provider_info_in_the_hook_methods_spelling():
    assert LoyaltyHook.get_ui_field_behaviour() == hook_field_behaviour()
    assert hook_field_behaviour() == {
        "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
        "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
        "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
    }


def test_widgets_use_only_the_field_classes_airflow_31_accepts():
    import wtforms

    widgets = LoyaltyHook.get_connection_form_widgets()
    assert list(widgets) == list(CONN_FIELDS)
    accepted = {wtforms.StringField, wtforms.IntegerField, wtforms.PasswordField, wtforms.BooleanField}
    for name, widget in widgets.items():
        assert widget.field_class in accepted, name
        assert widget.kwargs["label"] == CONN_FIELDS[name]["label"], name
        assert widget.kwargs["default"] == CONN_FIELDS[name]["schema"]["default"], name
    assert widgets["verify_ssl"].field_class is wtforms.BooleanField
    assert widgets["max_retries"].field_class is wtforms.IntegerField
