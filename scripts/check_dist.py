"""Check the built wheel and sdist as a package index and a new user would see them (``make dist``).

* both carry LICENSE and NOTICE;
* the wheel's metadata has the project URLs, Python classifiers and no relative README links
  (they break on a package index page);
* the wheel alone, installed into a clean virtualenv (with the newest Airflow it allows), is seen
  by ``airflow providers list``, and its console scripts answer ``--help``.

Exit 0 when all of that holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from email.parser import Parser
from pathlib import Path

PACKAGE = "airflow-provider-loyalty"
REQUIRED_URLS = ("Documentation", "Changelog", "Source", "Issue tracker")
LEGAL_FILES = ("LICENSE", "NOTICE")
# Markdown links and images whose target is neither absolute nor an anchor.
RELATIVE_LINK = re.compile(r"!?\[[^\]]*\]\((?!https?://|#|mailto:)([^)\s]+)\)")


class DistError(Exception):
    """What is wrong with the distribution, in one line a person can act on."""


def only(paths: list[Path], what: str) -> Path:
    """The single file of a kind in the dist directory.

    :param paths: the candidates found.
    :param what: what they are, for the error message.
    """
    if len(paths) != 1:
        raise DistError(f"expected exactly one {what} in dist/, found {[p.name for p in paths]}")
    return paths[0]


def documentation_url(wheel: Path) -> str:
    """The ``Documentation`` project URL of the wheel's metadata.

    :param wheel: the built wheel.
    """
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
    for value in metadata.get_all("Project-URL") or []:
        label, _, url = value.partition(",")
        if label.strip() == "Documentation":
            return url.strip()
    raise DistError(f"{wheel.name}: no Documentation project URL")


def check_wheel(wheel: Path) -> None:
    """LICENSE, NOTICE, project URLs, classifiers and absolute README links in the wheel.

    :param wheel: the built wheel.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
    for legal in LEGAL_FILES:
        if not any(name.endswith(f".dist-info/licenses/{legal}") for name in names):
            raise DistError(f"{wheel.name}: no {legal} under .dist-info/licenses/")
    urls = {value.split(",", 1)[0].strip() for value in metadata.get_all("Project-URL") or []}
    missing = [label for label in REQUIRED_URLS if label not in urls]
    if missing:
        raise DistError(f"{wheel.name}: no Project-URL for {missing} (has {sorted(urls)})")
    pythons = [
        c for c in metadata.get_all("Classifier") or [] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    if not pythons:
        raise DistError(f"{wheel.name}: no Python version classifier")
    relative = RELATIVE_LINK.findall(metadata.get_payload() or "")
    if relative:
        raise DistError(f"{wheel.name}: README links that break on a package index page: {relative}")
    print(f"{wheel.name}: LICENSE, NOTICE, {len(urls)} project URLs, {', '.join(pythons)}, README links absolute")


def check_sdist(sdist: Path) -> None:
    """LICENSE and NOTICE at the root of the sdist.

    :param sdist: the built source distribution.
    """
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for legal in LEGAL_FILES:
        if legal not in names:
            raise DistError(f"{sdist.name}: no {legal} at its root")
    print(f"{sdist.name}: LICENSE, NOTICE")


def run(command: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 900) -> str:
    """Run a command; its stdout, or :class:`DistError` with the output tail when it fails.

    :param command: the program and its arguments.
    :param env: the environment (default: this process's).
    :param cwd: the working directory (default: this process's).
    :param timeout: seconds before giving up.
    """
    result = subprocess.run(
        list(command), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise DistError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def check_installed(wheel: Path, uv: str, python: str, venv: Path) -> None:
    """Install ``wheel`` alone into a fresh ``venv``; Airflow lists the provider; the scripts run.

    :param wheel: the built wheel.
    :param uv: the uv executable.
    :param python: the interpreter the virtualenv is made from.
    :param venv: where the throwaway virtualenv goes (replaced if it exists).
    """
    shutil.rmtree(venv, ignore_errors=True)
    run([uv, "venv", "--quiet", "--python", python, str(venv)])
    run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)])
    with tempfile.TemporaryDirectory(prefix="loyalty-dist-airflow-home-") as home:
        env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        env.pop("PYTHONPATH", None)
        # Run from the empty AIRFLOW_HOME: nothing of the checkout can be imported by accident.
        stdout = run([str(venv / "bin" / "airflow"), "providers", "list", "-o", "json"], env=env, cwd=home)
        documents = [line for line in stdout.splitlines() if line.startswith("[")]
        if not documents:
            raise DistError(f"airflow providers list printed no JSON:\n{stdout[-3000:]}")
        listed = {entry["package_name"]: entry["version"] for entry in json.loads(documents[-1])}
        if PACKAGE not in listed:
            raise DistError(f"airflow providers list does not list {PACKAGE}: {sorted(listed)}")
        airflow_version = run(
            [str(venv / "bin" / "python"), "-c", "import airflow; print(airflow.__version__)"], env=env, cwd=home
        )
        print(f"clean virtualenv: Airflow {airflow_version.strip()} lists {PACKAGE} {listed[PACKAGE]}")
        info = run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import json; from airflow_provider_loyalty.get_provider_info import get_provider_info; "
                "print(json.dumps(get_provider_info()))",
            ],
            env=env,
            cwd=home,
        )
        doc_urls = {item.get("external-doc-url") for item in json.loads(info.splitlines()[-1])["integrations"]}
        if doc_urls != {documentation_url(wheel)}:
            raise DistError(f"external-doc-url {doc_urls} is not the Documentation URL {documentation_url(wheel)}")
        print(f"clean virtualenv: external-doc-url is the Documentation URL ({documentation_url(wheel)})")
        for script in console_scripts(wheel):
            run([str(venv / "bin" / script), "--help"], env=env, cwd=home)
            print(f"clean virtualenv: {script} --help answers")


def console_scripts(wheel: Path) -> list[str]:
    """The console scripts the wheel declares whose module it also contains.

    A script whose module has not been written yet (declared ahead in pyproject.toml) is skipped
    with a note rather than failing the check.

    :param wheel: the built wheel.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode("utf-8")
    section = re.search(r"^\[console_scripts\]\n(.*?)(?:^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    scripts: list[str] = []
    for line in section.group(1).splitlines() if section else []:
        if "=" not in line:
            continue
        script, target = (part.strip() for part in line.split("=", 1))
        module = target.split(":", 1)[0].replace(".", "/")
        if f"{module}.py" in names or f"{module}/__init__.py" in names:
            scripts.append(script)
        else:
            print(f"{wheel.name}: {script} points at {target}, not in the wheel yet: not run")
    return scripts


def main(argv: Sequence[str] | None = None) -> int:
    """Check dist/: exit 0 when the wheel and sdist are fit to publish, 1 otherwise.

    :param argv: command-line arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path, help="the directory uv build wrote to")
    parser.add_argument("--uv", default="uv", help="the uv executable")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the clean virtualenv")
    parser.add_argument("--venv", type=Path, default=Path(".venv-dist"), help="where the clean virtualenv goes")
    args = parser.parse_args(argv)
    try:
        wheel = only(sorted(args.dist.glob("*.whl")), "wheel")
        sdist = only(sorted(args.dist.glob("*.tar.gz")), "sdist")
        check_wheel(wheel)
        check_sdist(sdist)
        check_installed(wheel.resolve(), args.uv, args.python, args.venv.resolve())
    except DistError as err:
        print(f"check_dist: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
