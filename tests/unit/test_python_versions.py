"""Every Python version the classifiers claim is tested, in CI: 3.11 by every target, the others by
``make test-py<version>`` (``.ci/run``). A classifier without a test run is a claim nobody checks."""

from __future__ import annotations

import re
import tomllib

from tests.support.dag_runner import REPO


def test_every_python_the_classifiers_claim_is_tested_in_ci() -> None:
    classifiers = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["classifiers"]
    claimed = {
        match[1] for c in classifiers if (match := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    }
    makefile = (REPO / "Makefile").read_text()
    other = set(re.search(r"^OTHER_PYTHONS := (.+)$", makefile, re.MULTILINE)[1].split())  # type: ignore[index]
    ci = (REPO / ".ci" / "run").read_text()
    in_ci = set(re.findall(r"\btest-py(3\.\d+)\b", ci))
    assert claimed == {"3.11"} | other, "classifiers and the Makefile's OTHER_PYTHONS disagree"
    assert in_ci == other, f".ci/run runs test-py for {sorted(in_ci)}, not {sorted(other)}"
    assert "python3.11" in makefile  # the default interpreter of every other target
