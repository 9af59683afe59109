"""Benchmark 2 — verify + write + sha256 of one batch, on one core.

``export/archive.py:write_part`` — what the export loop calls for every batch: open the zip, check
names and caps, inflate, read every record exactly as ``csv.reader`` does, count rows against the
API's ``total``, write the part and hash it — on one large zip, in this process (one thread). The
part goes to a file in a fresh temporary directory, as the loop writes it.

Inputs, each a single-member zip at deflate level 1 (as in the streaming benchmark):

* **ordinary CSV** — the emulator's transaction rows as the API writes them (``row_padding=0``,
  quoted fields where needed, some descriptions with line breaks inside quotes): the target;
* **padded rows** — the 2 KiB-description rows of the 1 GiB streaming export (informational);
* **ordinary CSV to** ``csv.gz`` — the same input, gzip parts (issue 18; informational);
* **ordinary CSV, the verifier before the exact-CSV rewrite** — ``write_part`` of
  ``export/archive.py`` as of :data:`REFERENCE_COMMIT` (read with ``git show``, loaded as a module
  of its own), on the same zip in the same run: "as fast as before" measured, not remembered.

The rows of a base slice of the emulator's dataset are repeated to the wanted size (verification
does not look for duplicate ids inside a batch, so the work per byte is that of fresh rows; the
zip's deflate window, 32 KiB, is far smaller than the slice, so compression is as for fresh rows).
The zips are built once and kept under ``.bench/verification/``.

Throughput = CSV bytes in the zip / CPU seconds of the thread that ran ``write_part``
(``time.thread_time``): what one core does, whatever else the shared machine runs. Wall-clock
throughput is shown beside it. Each input is run :data:`REPEATS` times; the best run counts.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import MIB, WORK_ROOT, BenchResult, Figure, gzip_level, load_average

TARGET_MIB_S = 146.0
#: The last commit with the verifier the 146 MiB/s target was measured with (before the exact-CSV
#: rewrite): its ``export/archive.py`` is ``_batch.py`` of 233629d, the code of the 2026-11-22 run.
REFERENCE_COMMIT = "bdc0efe1d0da2f3bea4cde16863b0a8cd47ec964"
REPEATS = 3
BASE_ROWS = 20_000
_WRITE_CHUNK = 4 * MIB


@dataclass(frozen=True)
class Input:
    """One input of the benchmark.

    :param label: how the docs name it.
    :param row_padding: the emulator's filler characters per description.
    :param csv_bytes: the CSV size to reach (about).
    :param output_format: the part format ``write_part`` writes.
    """

    label: str
    row_padding: int
    csv_bytes: int
    output_format: str = "csv"
    reference: bool = False

    @property
    def key(self) -> str:
        """File-name-safe identity of the zip this input needs."""
        return f"pad{self.row_padding}-{self.csv_bytes // MIB}MiB"


def _base_csv(row_padding: int) -> tuple[bytes, bytes]:
    """The header line and the body of :data:`BASE_ROWS` rows of the emulator's dataset."""
    from airflow_provider_loyalty.testing.archive import ArchiveSpec, BatchRows, write_export_zip
    from airflow_provider_loyalty.testing.data import program_stream

    stream = program_stream(0, BASE_ROWS, "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z", row_padding)
    buffer = io.BytesIO()
    write_export_zip(buffer, BatchRows(stream, 0, BASE_ROWS, "base"), ArchiveSpec(compresslevel=0))
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        text = archive.read(archive.infolist()[0])
    header_end = text.index(b"\r\n") + 2
    return text[:header_end], text[header_end:]


def build_zip(item: Input, directory: Path) -> tuple[Path, int, int]:
    """The input's zip (built once, then reused); its path, data rows and CSV bytes."""
    target = directory / f"{item.key}.zip"
    facts = target.with_suffix(".json")
    if target.exists() and facts.exists():
        known = json.loads(facts.read_text(encoding="utf-8"))
        return target, int(known["rows"]), int(known["csv_bytes"])
    header, body = _base_csv(item.row_padding)
    repeats = max(1, -(-(item.csv_bytes - len(header)) // len(body)))
    partial = target.with_suffix(".part")
    info = zipfile.ZipInfo("Transactions_benchmark.csv", date_time=(2023, 10, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with (
        zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(info, "w", force_zip64=True) as member,
    ):
        member.write(header)
        for chunk in _repeated(body, repeats):
            member.write(chunk)
    partial.rename(target)
    rows = BASE_ROWS * repeats
    csv_bytes = len(header) + len(body) * repeats
    facts.write_text(json.dumps({"rows": rows, "csv_bytes": csv_bytes}), encoding="utf-8")
    return target, rows, csv_bytes


def _repeated(body: bytes, repeats: int) -> Iterator[bytes]:
    for _ in range(repeats):
        for start in range(0, len(body), _WRITE_CHUNK):
            yield body[start : start + _WRITE_CHUNK]


def reference_write_part(directory: Path) -> Any:
    """``write_part`` of ``export/archive.py`` as of :data:`REFERENCE_COMMIT`, or ``None`` (no git)."""
    import importlib.util
    import subprocess

    from benchmarks._common import REPO_ROOT

    try:
        source = subprocess.run(
            ["git", "show", f"{REFERENCE_COMMIT}:airflow_provider_loyalty/export/archive.py"],
            capture_output=True,
            check=True,
            cwd=REPO_ROOT,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = directory / "reference_archive.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("benchmark_reference_archive", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.write_part


def measure(archive: Path, rows: int, output_format: str, write_part: Any = None) -> dict[str, float]:
    """One ``write_part`` of ``archive`` into a fresh temporary directory: CPU and wall seconds."""
    if write_part is None:
        from airflow_provider_loyalty.export.archive import write_part

    workdir = tempfile.mkdtemp(prefix="loyalty-bench-verify-")
    try:
        extra = {} if output_format == "csv" else {"output_format": output_format}
        with open(Path(workdir) / "part", "wb") as part:
            cpu, wall = time.thread_time(), time.perf_counter()
            stats = write_part(str(archive), part, expected_rows=rows, **extra)  # type: ignore[arg-type]
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if stats.rows != rows:
        raise RuntimeError(f"write_part wrote {stats.rows} rows of {rows}")
    return {"cpu_s": cpu, "wall_s": wall, "part_bytes": stats.bytes}


def component_rates(archive: Path, sample_bytes: int) -> dict[str, float]:
    """MiB/s per CPU second of each piece of the work alone, on the first ``sample_bytes`` of CSV.

    Inflating the member (256 KiB reads; by ISA-L as the export does, and by zipfile's own zlib),
    ``csv.reader`` over the decoded text (records
    only: nothing checked, nothing copied), SHA-256, and gzip: ISA-L's level 1 (``csv.gz`` parts), zlib's
    levels 1 and 6.
    """
    import csv
    import hashlib
    import zlib

    def rate(action: Any, size: int) -> float:
        started = time.thread_time()
        action()
        return size / MIB / max(time.thread_time() - started, 1e-9)

    from airflow_provider_loyalty.export.inflate import open_member

    def inflate(by_isal: bool = True) -> bytes:
        blocks = []
        with zipfile.ZipFile(archive) as opened:
            info = opened.infolist()[0]
            with open_member(opened, info) if by_isal else opened.open(info) as member:
                size = 0
                while size < sample_bytes and (block := member.read(256 * 1024)):
                    blocks.append(block)
                    size += len(block)
        return b"".join(blocks)[:sample_bytes]

    data = inflate()
    cut = data.rindex(b"\n") + 1  # whole records only
    data = data[:cut]
    text = data.decode("utf-8")
    size = len(data)

    from isal import isal_zlib

    def gzip_at(level: int, library: Any = zlib) -> Any:
        return lambda: library.compressobj(level, library.DEFLATED, 31).compress(data)

    def gzip_ratio(level: int, library: Any = zlib) -> float:
        compressor = library.compressobj(level, library.DEFLATED, 31)
        return size / len(compressor.compress(data) + compressor.flush())

    return {
        "inflate": rate(inflate, sample_bytes),
        "inflate zlib": rate(lambda: inflate(by_isal=False), sample_bytes),
        "csv.reader": rate(lambda: sum(1 for _ in csv.reader(io.StringIO(text, newline=""))), size),
        "sha256": rate(lambda: hashlib.sha256(data).digest(), size),
        "utf-8 decode": rate(lambda: data.decode("utf-8"), size),
        "isal gzip level 1": rate(gzip_at(1, isal_zlib), size),
        "gzip level 1": rate(gzip_at(1), size),
        "gzip level 6": rate(gzip_at(6), size),
        "isal gzip level 1 ratio": gzip_ratio(1, isal_zlib),
        "gzip level 1 ratio": gzip_ratio(1),
        "gzip level 6 ratio": gzip_ratio(6),
        "quotes per line": data.count(b'"') / max(data.count(b"\n"), 1),
    }


def run(quick: bool = False) -> BenchResult:
    """Run the verification benchmark (256 MiB of CSV per input; ``quick``: 64 MiB)."""
    started = time.perf_counter()
    result = BenchResult(bench="verification", load={"before": load_average()})
    size = (64 if quick else 256) * MIB
    reference = f"the verifier of {REFERENCE_COMMIT[:7]} (before the exact-CSV rewrite)"
    inputs = {
        "ordinary": Input("ordinary CSV", 0, size),
        "padded": Input("padded rows (the streaming export's)", 2000, size),
        "gzip": Input("ordinary CSV, written as csv.gz", 0, size, "csv.gz"),
        "ordinary-reference": Input(f"ordinary CSV, {reference}", 0, size, reference=True),
        "padded-reference": Input(f"padded rows, {reference}", 2000, size, reference=True),
    }
    directory = WORK_ROOT / "verification"
    directory.mkdir(parents=True, exist_ok=True)
    reference_verifier = reference_write_part(directory)
    if reference_verifier is None:
        print("  verification: the reference verifier is skipped (no git history here)", flush=True)
        inputs = {key: item for key, item in inputs.items() if not item.reference}
    zips = {key: build_zip(item, directory) for key, item in inputs.items()}
    trials: dict[str, list[dict[str, float]]] = {key: [] for key in inputs}
    component_trials: list[dict[str, float]] = []
    # Round after round over every input (not each input's runs in a row): a load that changes
    # during the benchmark then weighs on every input alike; the best round of each counts.
    for _ in range(1 if quick else REPEATS):
        for key, item in inputs.items():
            archive, rows, _csv_bytes = zips[key]
            verifier = reference_verifier if item.reference else None
            trials[key].append(measure(archive, rows, item.output_format, verifier))
        component_trials.append(component_rates(zips["ordinary"][0], min(size, 64 * MIB)))
    runs: dict[str, dict[str, Any]] = {}
    for key, item in inputs.items():
        archive, rows, csv_bytes = zips[key]
        best = min(trials[key], key=lambda trial: trial["cpu_s"])
        runs[key] = {
            "label": item.label,
            "output_format": item.output_format,
            "rows": rows,
            "csv_bytes": csv_bytes,
            "zip_bytes": archive.stat().st_size,
            "part_bytes": best["part_bytes"],
            "cpu_mib_s": csv_bytes / MIB / max(best["cpu_s"], 1e-9),
            "wall_mib_s": csv_bytes / MIB / max(best["wall_s"], 1e-9),
            "all_cpu_mib_s": [csv_bytes / MIB / max(trial["cpu_s"], 1e-9) for trial in trials[key]],
        }
        print(
            f"  verification/{item.label}: {runs[key]['cpu_mib_s']:.0f} MiB/s per CPU second, "
            f"{runs[key]['wall_mib_s']:.0f} MiB/s wall",
            flush=True,
        )
    components = {name: max(trial[name] for trial in component_trials) for name in component_trials[0]}
    ordinary = runs["ordinary"]
    result.figures = [
        Figure(
            "verification",
            "verify + write + sha256, ordinary CSV, one core",
            round(ordinary["cpu_mib_s"], 1),
            "MiB/s",
            f">= {TARGET_MIB_S:.0f} MiB/s",
            ordinary["cpu_mib_s"] >= TARGET_MIB_S,
        ),
        Figure("verification", "same, wall clock (shared machine)", round(ordinary["wall_mib_s"], 1), "MiB/s"),
        Figure("verification", "padded rows, one core", round(runs["padded"]["cpu_mib_s"], 1), "MiB/s"),
        Figure("verification", "ordinary CSV to csv.gz, one core", round(runs["gzip"]["cpu_mib_s"], 1), "MiB/s"),
        *[
            Figure(
                "verification",
                f"{inputs[key].label[: inputs[key].label.index(',')]}, verifier of {REFERENCE_COMMIT[:7]}, one core",
                round(runs[key]["cpu_mib_s"], 1),
                "MiB/s",
            )
            for key in ("ordinary-reference", "padded-reference")
            if key in runs
        ],
        Figure(
            "verification", "csv.reader alone on ordinary CSV, one core", round(components["csv.reader"], 1), "MiB/s"
        ),
        Figure("verification", "inflate alone on ordinary CSV, one core", round(components["inflate"], 1), "MiB/s"),
        Figure(
            "verification",
            "inflate alone with zlib (zipfile's own), one core",
            round(components["inflate zlib"], 1),
            "MiB/s",
        ),
    ]
    result.load["after"] = load_average()
    result.wall_seconds = time.perf_counter() - started
    result.markdown = _markdown(runs, components)
    result.data = {"runs": runs, "components": components}
    (directory / "runs.json").write_text(
        json.dumps({"runs": runs, "components": components}, indent=2), encoding="utf-8"
    )
    return result


def _markdown(runs: dict[str, dict[str, Any]], components: dict[str, float]) -> str:
    rows = [
        f"| {run['label']} | {run['rows']:,} | {run['csv_bytes'] / MIB:,.0f} MiB | {run['zip_bytes'] / MIB:,.1f} MiB "
        f"| {run['part_bytes'] / MIB:,.1f} MiB | **{run['cpu_mib_s']:,.0f}** | {run['wall_mib_s']:,.0f} | "
        + ", ".join(f"{value:,.0f}" for value in run["all_cpu_mib_s"])
        + " |"
        for run in runs.values()
    ]
    ordinary = runs["ordinary"]
    met = ordinary["cpu_mib_s"] >= TARGET_MIB_S
    gzip = runs["gzip"]
    lines = [
        "### Setup",
        "",
        "* `airflow_provider_loyalty.export.archive.write_part` on one single-member zip (deflate level 1) "
        "per input, in the runner's process, one thread; the part is written to a file in a fresh "
        "temporary directory, as the export loop does. The rows are a 20,000-row slice of the "
        "emulator's dataset repeated to size (built once, kept in `.bench/verification/`).",
        "* MiB/s = CSV bytes in the zip / CPU seconds of the thread (`time.thread_time`): one core's "
        f"throughput. {REPEATS} rounds, each over every input in turn (so a changing load weighs on all of "
        "them alike); the best round of each input counts. The wall-clock rate depends on how busy the "
        "shared machine is.",
        "",
        "| input | rows | CSV | zip | part written | MiB/s per CPU second | MiB/s wall | all runs (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Each piece of the work alone, on the first 64 MiB of the ordinary CSV, once per round (MiB of CSV per "
        "CPU second, best round):",
        "",
        "| inflate (ISA-L, as the export) | inflate (zlib, zipfile's own) | `csv.reader`, records only | SHA-256 "
        "| UTF-8 decode | gzip level 1 (ISA-L, as the parts) | gzip level 1 (zlib) | gzip level 6 (zlib) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {components['inflate']:,.0f} | {components['inflate zlib']:,.0f} | {components['csv.reader']:,.0f} "
        f"| {components['sha256']:,.0f} | "
        f"{components['utf-8 decode']:,.0f} | {components['isal gzip level 1']:,.0f} "
        f"({components['isal gzip level 1 ratio']:.1f}x smaller) | {components['gzip level 1']:,.0f} "
        f"({components['gzip level 1 ratio']:.1f}x smaller) | {components['gzip level 6']:,.0f} "
        f"({components['gzip level 6 ratio']:.1f}x smaller) |",
        "",
    ]
    verdict = f"**Ordinary CSV: {ordinary['cpu_mib_s']:.0f} MiB/s per core " + (
        f"(target >= {TARGET_MIB_S:.0f} MiB/s met).**" if met else f"(target >= {TARGET_MIB_S:.0f} MiB/s MISSED).**"
    )
    verdict += (
        f" Where the time goes: inflating, by ISA-L ({components['inflate']:.0f} MiB/s alone; zlib, which "
        f"zipfile uses by itself, {components['inflate zlib']:.0f}), and the exact count of records, which "
        "replaces each quoted field by one regular expression (possessive, so linear on any input) and counts "
        f"the commas and line breaks left: {components['quotes per line']:.1f} quotes per line on this CSV (the "
        "`custom_json` field with doubled quotes inside) cost one match per quoted field, not a split at every "
        f"quote; `csv.reader` alone, records only, runs at {components['csv.reader']:.0f} MiB/s. "
    )
    if "ordinary-reference" in runs:
        verdict += (
            f"The verifier before the exact-CSV rewrite ({REFERENCE_COMMIT[:7]}, zlib) runs at "
            f"{runs['ordinary-reference']['cpu_mib_s']:.0f} MiB/s on the same zip in the same rounds: today's is "
            f"{ordinary['cpu_mib_s'] / max(runs['ordinary-reference']['cpu_mib_s'], 1e-9):.2f}x as fast. "
        )
    if not met:
        verdict += (
            f" Measured cause: in the same rounds, inflating the member alone ran at "
            f"{components['inflate']:.0f} MiB/s and `csv.reader` alone at {components['csv.reader']:.0f} MiB/s "
            "(records only, nothing checked or copied). "
            + (
                "Inflating alone is below the target on one core of this machine, so no verifier "
                "that inflates the batch on one core reaches it here, whatever it does with the rows. "
                if components["inflate"] < TARGET_MIB_S
                else ""
            )
        )
        if "ordinary-reference" in runs:
            reference = runs["ordinary-reference"]["cpu_mib_s"]
            padded_reference = runs["padded-reference"]["cpu_mib_s"]
            verdict += (
                f"The verifier the 146 MiB/s were measured with (before the rewrite; 2026-11-22, a quiet "
                f"machine, the padded rows, wall time of the verify phase) runs here at "
                f"{padded_reference:.0f} MiB/s on the padded rows and {reference:.0f} MiB/s on ordinary CSV; "
                f"today's at {runs['padded']['cpu_mib_s']:.0f} and {ordinary['cpu_mib_s']:.0f} MiB/s "
                f"({ordinary['cpu_mib_s'] / max(reference, 1e-9):.2f}x the old one on ordinary CSV). This machine "
                f"does about {padded_reference / TARGET_MIB_S:.2f}x the work per CPU second of the one the target "
                "was measured on (the same verifier on the same rows); scaled by that, ordinary CSV would run at "
                f"{ordinary['cpu_mib_s'] * TARGET_MIB_S / max(padded_reference, 1e-9):.0f} MiB/s there. "
            )
        verdict += (
            f"The padded rows, with the same quotes in lines 8x as long, run at "
            f"{runs['padded']['cpu_mib_s']:.0f} MiB/s: the cost is per quoted field and per line, not per byte."
        )
    lines.append(verdict)
    level = gzip_level()
    lines += [
        "",
        f"`csv.gz` parts: {gzip['cpu_mib_s']:.0f} MiB/s per core, with parts at gzip level {level} "
        f"(`export/part_formats.py:GZIP_LEVEL`, ISA-L's `isal.igzip`). Gzip alone on this CSV: ISA-L level 1 "
        f"{components['isal gzip level 1']:.0f} MiB/s ({components['isal gzip level 1 ratio']:.1f}x smaller); "
        f"zlib level 1 {components['gzip level 1']:.0f} MiB/s ({components['gzip level 1 ratio']:.1f}x smaller), "
        f"level 6 {components['gzip level 6']:.0f} MiB/s ({components['gzip level 6 ratio']:.1f}x smaller).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n".join(figure.line() for figure in run(quick="--quick" in sys.argv).figures))
