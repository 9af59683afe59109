"""The provider registers with Airflow: entry point, schema-valid provider info, the connection type."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import airflow_provider_loyalty
from airflow_provider_loyalty.get_provider_info import get_provider_info
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook


def test_entry_point_points_at_get_provider_info():
    (point,) = [ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_provider")]
    assert point.load() is get_provider_info


def test_provider_info_matches_airflows_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import airflow

    schema_path = Path(airflow.__file__).parent / "provider_info.schema.json"
    if not schema_path.exists():
        pytest.skip("this Airflow ships no provider_info schema")
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))


def test_connection_form_hides_and_relabels():
    info = get_provider_info()["connection-types"][0]
    assert info["connection-type"] == LoyaltyHook.conn_type == "loyalty"
    # The same declarations: provider info in kebab-case, the hook's method in snake_case (Airflow 3.1).
    hook_behaviour = LoyaltyHook.get_ui_field_behaviour()
    assert {key.replace("-", "_"): value for key, value in info["ui-field-behaviour"].items()} == {
        key: value for key, value in hook_behaviour.items() if key in {"hidden_fields", "relabeling", "placeholders"}
    }
    assert set(info["ui-field-behaviour"]["hidden-fields"]) == {"login", "schema", "port"}
    assert info["ui-field-behaviour"]["relabeling"]["password"] == "API token"
    assert set(info["conn-fields"]) == {"content_type", "timeout", "verify_ssl", "max_retries"}
    for name, field in info["conn-fields"].items():
        assert field["label"], name
        assert "null" in field["schema"]["type"], name
    versions = get_provider_info()["versions"]
    assert versions[0] == airflow_provider_loyalty.__version__ and versions[-1] == "1.0.0"
    assert len(set(versions)) == len(versions)


def test_every_version_the_provider_lists_has_its_changelog_section():
    """The version a build claims and every earlier one listed are in docs/changelog.rst, each with
    a date or, for the version being built, "(unreleased)": no second build claims a released number."""
    changelog = (Path(__file__).resolve().parents[2] / "docs" / "changelog.rst").read_text(encoding="utf-8")
    headings = dict(re.findall(r"^(\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2}|unreleased)\)\n-+$", changelog, re.M))
    versions = get_provider_info()["versions"]
    assert list(headings) == versions  # newest first, none missing, none extra
    assert all(headings[version] != "unreleased" for version in versions[1:])


def test_airflow_cli_lists_the_provider_and_its_connection_type(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "get", "airflow-provider-loyalty", "--full", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (provider,) = _json_output(listed.stdout)
    (connection_type,) = provider["connection-types"]
    assert connection_type["connection-type"] == "loyalty"
    assert set(connection_type["conn-fields"]) == {"content_type", "timeout", "verify_ssl", "max_retries"}
    hooks = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "hooks", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert any(hook.get("connection_type") == "loyalty" for hook in _json_output(hooks.stdout))


def _json_output(stdout: str) -> list:
    """The CLI's JSON document (log lines may precede it on stdout)."""
    (document,) = [line for line in stdout.splitlines() if line.startswith("[")][-1:]
    return json.loads(document)


def test_every_public_module_of_a_listed_kind_is_listed():
    """``LoyaltyAsyncHook`` lives in ``hooks/loyalty_async.py``, which "hooks" did not list (probe):
    each module under hooks/, operators/, sensors/, triggers/ defining a public class is listed."""
    import importlib
    import inspect
    import pkgutil

    import airflow_provider_loyalty
    from airflow_provider_loyalty.get_provider_info import get_provider_info

    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        listed = {module for entry in info[kind] for module in entry["python-modules"]}
        package = importlib.import_module(f"airflow_provider_loyalty.{kind}")
        for found in pkgutil.iter_modules(package.__path__):
            name = f"{airflow_provider_loyalty.__name__}.{kind}.{found.name}"
            module = importlib.import_module(name)
            public = [
                cls for cls_name, cls in inspect.getmembers(module, inspect.isclass)
                if cls.__module__ == name and not cls_name.startswith("_")
                and cls_name.startswith("Loyalty") and cls_name.endswith(kind[:-1].capitalize())
                and not inspect.isabstract(cls)
            ]  # fmt: skip
            assert not public or name in listed, f"{name} ({[c.__name__ for c in public]}) missing from {kind}"
