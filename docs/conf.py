"""Sphinx configuration of the airflow-provider-loyalty docs (``make docs``: warnings are errors)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# autodoc imports the provider, and with it Airflow (mocking nothing: what builds here imports).
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow_provider_loyalty import __version__  # noqa: E402 - needs sys.path above

project = "airflow-provider-loyalty"
author = "airflow-provider-loyalty developers"
copyright = "airflow-provider-loyalty developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",  # benchmarks.md and reliability.md are Markdown
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# Markdown headings get anchors, so pages written in Markdown can be linked to by section.
myst_heading_anchors = 3
# benchmarks.md is generated (`make bench`): a skipped heading level there must not fail `make docs`.
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show `default_deferrable()`, not the value read at build time
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"

html_theme = "alabaster"
html_title = f"{project} {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Apache Airflow 3 provider for a loyalty platform's HTTP API",
    "fixed_sidebar": True,
}
