"""Sphinx configuration of the airflow-provider-loyalty docs (``make docs``: warnings are errors).

Besides the usual settings, this file reads the package's layers off its code for the Architecture
page (``architecture.rst``): the ``loyalty-layers`` directive draws which layer imports which (and
fails the build when an import points up), ``loyalty-modules`` lists every module with the first
paragraph of its docstring. Both are computed at build time, so the page cannot drift from the code.
"""

from __future__ import annotations

import ast
import itertools
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "airflow_provider_loyalty"
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
    "sphinx.ext.graphviz",  # the Architecture page's diagrams, rendered by Graphviz's `dot` at build time
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

graphviz_output_format = "svg"
graphviz_dot_args = ["-Gfontname=Helvetica", "-Nfontname=Helvetica", "-Efontname=Helvetica"]

html_theme = "alabaster"
html_title = f"{project} {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Apache Airflow 3 provider for a loyalty platform's HTTP API",
    "fixed_sidebar": True,
}

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- the layers


#: The layers, top to bottom, each a tuple of module groups (a subpackage, or a root module with its
#: helpers): a module may import from its own group and from any layer below, never from above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("transfers",),
    ("operators", "sensors"),
    ("export", "triggers", "verify"),
    ("hooks", "get_provider_info"),
    ("utils",),
    ("exceptions", "version"),
)
#: Beside the layers: the emulator imports nothing from the provider, so it cannot share a misreading.
ASIDE = "testing"
#: Groups whose modules are internal (not public API), besides modules that say so in their docstring.
INTERNAL_GROUPS = frozenset({"utils", "export"})
#: Groups left out of the diagram (only ``get_provider_info.py`` reads the version).
_UNDRAWN = frozenset({"version"})
_ROLE = re.compile(r":[a-z]+:`~?(?:[^`<]*<)?\.?([^`>]+)>?`")


def module_group(module: str) -> str:
    """The group of a dotted module name: its subpackage, or the root module it belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "version"  # the package itself: only its __version__
    name = parts[1]
    if name.startswith("verify"):
        return "verify"  # verify.py with its helpers verify_parts.py and verify_storage.py
    return "version" if name == "__version__" else name


def layer_rank(group: str) -> int | None:
    """How far down a group sits (0 = top), ``None`` for the emulator aside and unknown groups."""
    for rank, groups in enumerate(LAYERS):
        if group in groups:
            return rank
    return None


@dataclass(frozen=True)
class Module:
    """One source module of the package.

    :param name: dotted name.
    :param path: path relative to the package directory.
    :param summary: the first paragraph of its docstring.
    :param imports: dotted names of the provider modules it imports (at any depth of its code).
    :param says_internal: its docstring says it is for internal usage only (or ``:meta private:``).
    """

    name: str
    path: str
    summary: str
    imports: tuple[str, ...]
    says_internal: bool = False

    @property
    def group(self) -> str:
        """The module's group (see :func:`module_group`)."""
        return module_group(self.name)

    @property
    def internal(self) -> bool:
        """Whether the module is internal: an internal group, or its docstring says so."""
        return self.group in INTERNAL_GROUPS or self.says_internal


def _imported(tree: ast.Module) -> list[str]:
    """Provider modules a module imports, function-level imports included."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PACKAGE):
            module = str(node.module)
            if module == PACKAGE:  # ``from airflow_provider_loyalty import verify`` names modules
                found.extend(f"{PACKAGE}.{alias.name}" for alias in node.names)
            else:
                found.append(module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names if alias.name.startswith(PACKAGE))
    return found


def read_modules() -> list[Module]:
    """Every module of the package, read as source (nothing is imported)."""
    modules = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        relative = path.relative_to(ROOT / PACKAGE)
        dotted = ".".join((PACKAGE, *relative.with_suffix("").parts))
        dotted = dotted.removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstring = ast.get_docstring(tree) or ""
        summary = _ROLE.sub(r"``\1``", " ".join(docstring.split("\n\n")[0].split()))
        internal = "internal usage" in docstring or ":meta private:" in docstring
        modules.append(Module(dotted, relative.as_posix(), summary, tuple(_imported(tree)), internal))
    return modules


def import_edges(modules: list[Module]) -> tuple[Counter[tuple[str, str]], list[str]]:
    """Imports between groups (counted per importing module), and every import that breaks the layering."""
    edges: Counter[tuple[str, str]] = Counter()
    problems = []
    for module in modules:
        for target in sorted({module_group(name) for name in module.imports} - {module.group}):
            edges[(module.group, target)] += 1
            source_rank, target_rank = layer_rank(module.group), layer_rank(target)
            if module.group == ASIDE or target == ASIDE:
                problems.append(f"{module.path} imports from {target}/: the emulator and the provider stay apart")
            elif source_rank is None or target_rank is None:
                unknown = module.group if source_rank is None else target
                problems.append(f"{module.path}: {unknown!r} is in no layer of docs/conf.py LAYERS")
            elif target_rank < source_rank:
                problems.append(f"{module.path} ({module.group}/) imports {target}/, a layer above it")
    return edges, problems


def _label(group: str) -> str:
    """How a group is named on the page: ``export/``, ``verify.py`` ..."""
    files = {"version": "__init__.py", "exceptions": "exceptions.py", "get_provider_info": "get_provider_info.py"}
    return files.get(group, "verify.py" if group == "verify" else f"{group}/")


#: Second lines of some boxes in the diagram.
_NOTES = {
    "exceptions": "(every layer may import it)",
    ASIDE: "(the emulator: imports\\nnothing from the provider)",
}


def _box(group: str, rank: int | None) -> str:
    label = _label(group) + (f"\\n{_NOTES[group]}" if group in _NOTES else "")
    if rank is None:
        return f'  "{group}" [label="{label}", style="rounded,dashed", fillcolor="white"];'
    fill = "#f2f2f2" if group in INTERNAL_GROUPS else "#eef4ff"
    return f'  "{group}" [label="{label}", fillcolor="{fill}", tooltip="layer {rank}"];'


def layers_dot(edges: Counter[tuple[str, str]]) -> str:
    """The layer diagram in DOT: one row per layer, an arrow per importing group (imports point down).

    Imports of ``exceptions.py`` and of the version are checked like every other but not drawn:
    every layer may use them, and their arrows would hide the rest.
    """
    lines = [
        "digraph layers {",
        '  graph [rankdir=TB, nodesep=0.35, ranksep=0.45, fontsize=10, bgcolor="transparent"];',
        '  node [shape=box, style="rounded,filled", fontsize=11, fillcolor="#eef4ff", color="#4a6fa5"];',
        '  edge [color="#4a6fa5", arrowsize=0.7];',
    ]
    rows = [[group for group in groups if group not in _UNDRAWN] for groups in LAYERS]
    for rank, row in enumerate(rows):
        lines.append("  { rank=same; " + " ".join(f'"{group}"' for group in row) + " }")
        lines.extend(_box(group, rank) for group in row)
    for upper, lower in itertools.pairwise(rows):  # keep the rows in order, arrows or not
        lines.append(f'  "{upper[0]}" -> "{lower[0]}" [style=invis];')
    lines.append(_box(ASIDE, None))
    lines.append(f'  "{rows[0][0]}" -> "{ASIDE}" [style=invis];')
    for (source, target), count in sorted(edges.items()):
        if target not in _UNDRAWN and target != "exceptions":
            lines.append(f'  "{source}" -> "{target}" [penwidth={min(1 + count / 3, 3):.1f}];')
    lines.append("}")
    return "\n".join(lines)


class LayersDirective(SphinxDirective):
    """``.. loyalty-layers::`` — the layer diagram, read from the code; an import pointing up fails the build."""

    has_content = False
    option_spec = {"caption": str}

    def run(self) -> list[nodes.Node]:
        modules = read_modules()
        for module in modules:
            self.env.note_dependency(str(ROOT / PACKAGE / module.path))
        edges, problems = import_edges(modules)
        for problem in problems:
            log.warning("import layering: %s", problem, location=self.get_location())
        dot = layers_dot(edges)
        caption = self.options.get("caption", "")
        text = [".. graphviz::", "    :align: center"]
        if caption:
            text.append(f"    :caption: {caption}")
        text.append("")
        text.extend(f"    {line}" for line in dot.splitlines())
        return self.parse_text_to_nodes("\n".join(text))


class ModulesDirective(SphinxDirective):
    """``.. loyalty-modules::`` — every module, layer by layer, with the first paragraph of its docstring."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        modules = [module for module in read_modules() if not module.path.endswith("/__init__.py")]
        by_group: dict[str, list[Module]] = {}
        for module in modules:
            by_group.setdefault(module.group, []).append(module)
        text: list[str] = []
        for groups in LAYERS:
            for group in groups:
                text.extend(self._group(group, by_group.pop(group, [])))
        text.extend(self._group(ASIDE, by_group.pop(ASIDE, []), aside=True))
        for group in by_group:  # in no layer: import_edges warns about its imports; list it anyway
            log.warning("module list: %r is in no layer of docs/conf.py LAYERS", group, location=self.get_location())
            text.extend(self._group(group, by_group[group]))
        return self.parse_text_to_nodes("\n".join(text))

    @staticmethod
    def _group(group: str, modules: list[Module], aside: bool = False) -> list[str]:
        if not modules:
            return []
        heading = f"**{_label(group)}**" + (" — aside: the API emulator" if aside else "")
        lines = [heading, ""]
        for module in modules:
            tag = " *(internal)*" if module.internal else ""
            lines.append(f"* ``{module.path}``{tag} — {module.summary}")
        return [*lines, ""]


# ------------------------------------------------------------------- without Graphviz installed


def _graph_source_instead(translator: Any, node: Any) -> None:
    """Show a diagram's DOT source where Graphviz's ``dot`` is not installed (said once, as a note)."""
    from html import escape

    translator.body.append(
        '<div class="admonition note"><p>This diagram needs Graphviz (<code>dot</code>) to be drawn; '
        f"its source:</p><pre>{escape(node['code'])}</pre></div>"
    )
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the Architecture page's directives; without ``dot``, diagrams degrade to their source."""
    from sphinx.ext.graphviz import graphviz

    app.add_directive("loyalty-layers", LayersDirective)
    app.add_directive("loyalty-modules", ModulesDirective)
    if shutil.which(str(app.config.graphviz_dot)) is None:
        log.info("Graphviz's `dot` is not installed: the Architecture page shows the diagrams' DOT source")
        app.add_node(graphviz, override=True, html=(_graph_source_instead, None))
    return {"parallel_read_safe": True}
