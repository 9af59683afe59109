"""Every third-party module the package imports is a dependency pyproject.toml declares.

A module that only arrives with Airflow today (``asgiref`` did) may leave with the next Airflow;
declared, its floor is installed and tested by ``make test-lowest``.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "airflow_provider_loyalty"


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _imported() -> Iterator[tuple[str, str]]:
    """(module, where) for every absolute import in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, f"{path.relative_to(ROOT)}:{node.lineno}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.module, f"{path.relative_to(ROOT)}:{node.lineno}"


def _distributions(module: str) -> set[str]:
    """The distributions that may provide ``module`` (empty: the standard library or ours)."""
    parts = module.split(".")
    if parts[0] in sys.stdlib_module_names or parts[0] in ("__future__", PACKAGE.name):
        return set()
    if parts[:2] == ["airflow", "providers"] and len(parts) > 2:
        name = "-".join(parts[2:4]) if parts[2] == "common" else parts[2]
        return {f"apache-airflow-providers-{name}"}
    if parts[0] == "airflow":
        return {"apache-airflow"}
    return {canonicalize_name(name) for name in packages_distributions().get(parts[0], [parts[0]])}


def test_every_third_party_import_is_declared():
    declared = _declared() | {canonicalize_name("airflow-provider-loyalty")}
    undeclared = sorted(
        f"{where}: {module} ({' or '.join(sorted(distributions))})"
        for module, where in _imported()
        if (distributions := _distributions(module)) and not distributions & declared
    )
    assert undeclared == [], "imported but not in pyproject.toml:\n" + "\n".join(undeclared)


def test_the_check_sees_an_undeclared_import():
    """The rule itself: a module of a distribution not declared is found, one of Airflow's is not."""
    declared = _declared()
    assert _distributions("yaml") and not _distributions("yaml") & declared  # PyYAML: Airflow's, not ours
    assert _distributions("airflow.providers.common.compat.sdk") == {"apache-airflow-providers-common-compat"}
    assert _distributions("json") == set()
