"""Check that every direct dependency of the installed provider sits exactly at its declared floor.

Run with the interpreter of the lowest-direct virtualenv (``make test-lowest``). ``uv pip compile
--resolution lowest-direct`` puts each direct requirement at the lowest version the whole
dependency tree allows; when that is above the declared ``>=`` floor, something (Airflow itself,
another provider) needs more, the floor is not installable and so untested: the declared floor
must move up to what is tested. Requirements of the selected extras are followed, including the
project's references to its own extras (``airflow-provider-loyalty[amazon,parquet]``).

Exit 0 when every floor is installed, 1 otherwise (with a table of what differs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, distribution, version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "airflow-provider-loyalty"


def selected_requirements(project: str, extras: Iterable[str]) -> list[Requirement]:
    """The project's requirements that apply with ``extras``, following self-referencing extras.

    :param project: the installed distribution whose metadata is read.
    :param extras: the extras asked for (the core requirements always apply).
    """
    declared = [Requirement(line) for line in distribution(project).requires or []]
    pending, seen = {""} | set(extras), set()
    chosen: dict[str, Requirement] = {}
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for requirement in declared:
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
                continue
            if requirement.marker is None and extra:
                continue  # a core requirement, already taken with extra ""
            name = canonicalize_name(requirement.name)
            if name == canonicalize_name(project):
                pending |= set(requirement.extras) - seen
                continue
            chosen.setdefault(f"{name} {requirement.specifier}", requirement)
    return sorted(chosen.values(), key=lambda requirement: canonicalize_name(requirement.name))


def floor_of(requirement: Requirement) -> Version | None:
    """The ``>=`` bound of ``requirement``, if it declares one.

    :param requirement: a requirement of the project.
    """
    floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return max(floors) if floors else None


def main(argv: Sequence[str] | None = None) -> int:
    """Print every direct dependency with its floor and installed version; 1 if any differs.

    :param argv: command-line arguments (``--extra`` may be repeated).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="an extra installed in this environment")
    args = parser.parse_args(argv)

    wrong: list[str] = []
    print(f"{'dependency':45} {'floor':>12} {'installed':>12}")
    for requirement in selected_requirements(PROJECT, args.extra):
        floor = floor_of(requirement)
        try:
            installed = Version(version(requirement.name))
        except PackageNotFoundError:
            installed = None
        mark = ""
        if floor is None:
            mark = "  (no floor declared)"
        elif installed != floor:
            mark = "  <-- not at its floor"
            wrong.append(f"{requirement.name}: declared >={floor}, installed {installed}")
        print(f"{requirement.name:45} {floor or '-'!s:>12} {installed or 'missing'!s:>12}{mark}")
    if wrong:
        print(
            "\nThese floors are not what the lowest-direct resolution installs, so they are not tested."
            "\nA dependency above the floor means the dependency tree needs more: raise the floor in"
            "\npyproject.toml to the installed version (after finding out why). A missing one means the"
            "\nenvironment is not the lowest-direct one (run `make test-lowest`).\n  " + "\n  ".join(wrong),
            file=sys.stderr,
        )
        return 1
    print("Every direct dependency is installed at its declared floor.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
