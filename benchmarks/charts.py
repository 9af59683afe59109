"""The benchmark report's charts, drawn with matplotlib (a benchmark-only dependency).

Each chart is drawn from the series a benchmark hands back in :attr:`BenchResult.data` and saved
as ``bench-*.png`` in the report's image folder (``docs/img/`` for ``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import BenchResult

#: Colours per series, the same in every chart.
COLOURS = {
    "ours": "#7b2cbf",
    "baseline": "#2a9d8f",
    "peer": "#e76f51",
    "control": "#6c757d",
}
PHASE_COLOURS = {
    "begin": "#adb5bd",
    "wait": "#ffd166",
    "download": "#2a9d8f",
    "blocked": "#ef476f",
    "verify": "#7b2cbf",
    "upload": "#118ab2",
    "seal": "#495057",
    "download + upload": "#e76f51",
}
DPI = 110


def require_matplotlib() -> None:
    """Fail early, with the fix, when matplotlib is missing.

    :raises SystemExit: matplotlib cannot be imported.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(
            "the benchmark report's charts need matplotlib, the [bench] extra: run `make bench`, which installs it, "
            'or .venv/bin/uv pip install --python .venv/bin/python -e ".[bench]"'
        ) from None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(results: list[BenchResult], folder: Path) -> list[Path]:
    """Draw every chart the results have data for; return the files written.

    :param results: the benchmarks' results.
    :param folder: where the PNGs go.
    """
    folder.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, list[tuple[str, Callable[[Any, dict[str, Any], Path], None]]]] = {
        "stream": [("bench-stream-rss.png", _stream_rss), ("bench-stream-phases.png", _stream_phases)],
        "triggerer": [("bench-triggerer-lag.png", _triggerer_lag)],
        "bookkeeping": [("bench-bookkeeping.png", _bookkeeping)],
    }
    plt = _pyplot()
    written = []
    for result in results:
        for name, drawer in drawers.get(result.bench, []):
            if not result.data:
                continue
            path = folder / name
            drawer(plt, result.data, path)
            written.append(path)
    return written


def _save(plt: Any, figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(figure)


def _stream_rss(plt: Any, data: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(9, 4.2))
    colours = iter((COLOURS["ours"], COLOURS["baseline"], COLOURS["peer"]))
    for name, series in data["rss"].items():
        if series:
            times, values = zip(*series, strict=True)
            axes.plot(times, values, label=name, color=next(colours), linewidth=1.6)
    axes.axhline(64, color="#333333", linestyle="--", linewidth=1)
    axes.annotate(
        "64 MiB: the operator's target ",
        (1.0, 64),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom",
        fontsize=8,
        color="#333333",
    )
    axes.set_xlabel("seconds since the transfer started")
    axes.set_ylabel("RSS growth (MiB)")
    axes.set_title(f"Memory while exporting {data['label']} to S3 (each in its own process)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="center right", fontsize=8)
    _save(plt, figure, path)


def _stream_phases(plt: Any, data: dict[str, Any], path: Path) -> None:
    runs = data["phases"]
    figure, panels = plt.subplots(len(runs), 1, figsize=(9, 1.2 + 1.5 * len(runs)), sharex=True)
    for panel, (title, intervals) in zip(panels, runs.items(), strict=True):
        lanes = [phase for phase in PHASE_COLOURS if any(item[0] == phase for item in intervals)]
        for row, phase in enumerate(lanes):
            spans = [(begun, ended - begun) for name, begun, ended in intervals if name == phase]
            panel.broken_barh(spans, (row - 0.35, 0.7), color=PHASE_COLOURS[phase])
        panel.set_yticks(range(len(lanes)), lanes, fontsize=8)
        panel.invert_yaxis()
        panel.set_title(title, fontsize=9, loc="left")
        panel.grid(axis="x", alpha=0.3)
    panels[-1].set_xlabel("seconds since the transfer started")
    figure.suptitle(f"Where the time goes: {data['label']} export, phase by phase", fontsize=10)
    _save(plt, figure, path)


def _triggerer_lag(plt: Any, data: dict[str, Any], path: Path) -> None:
    names = {
        "async": ("LoyaltyExportTaskTrigger", COLOURS["ours"]),
        "bare": ("bare aiohttp poller", COLOURS["control"]),
    }
    figure, axes = plt.subplots(figsize=(9, 4.2))
    for key, series in data["lag"].items():
        if series:
            label, colour = names.get(key, (key, None))
            times, values = zip(*series, strict=True)
            axes.plot(times, [max(value, 0.01) for value in values], label=label, color=colour, linewidth=1.1)
    axes.axhline(200, color="#d62828", linestyle="--", linewidth=1)
    axes.text(0.2, 200, " 200 ms: max target", va="bottom", fontsize=8, color="#d62828")
    axes.axhline(20, color="#f77f00", linestyle="--", linewidth=1)
    axes.text(0.2, 20, " 20 ms: p99 target", va="bottom", fontsize=8, color="#f77f00")
    axes.set_yscale("log")
    axes.set_xlabel("seconds since the triggers started")
    axes.set_ylabel("largest loop lag per 100 ms (ms, log scale)")
    axes.set_title(f"Triggerer event loop, {data.get('triggers', 1000):,} triggers polling every second")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper right", fontsize=8)
    _save(plt, figure, path)


def _bookkeeping(plt: Any, data: dict[str, Any], path: Path) -> None:
    windows = data["windows"]
    figure, axes = plt.subplots(figsize=(9, 3.8))
    axes.plot(range(len(windows)), [value / 1024 for value in windows], color=COLOURS["ours"], linewidth=0.6)
    for window, label in ((data["early"], "batch 10"), (data["late"], f"batch {len(windows):,}")):
        axes.axvspan(window[0], window[-1] + 1, color="#ffd166", alpha=0.6)
        axes.text(window[0], max(windows) / 1024 * 1.02, label, fontsize=8)
    axes.set_xlabel("batch")
    axes.set_ylabel("bookkeeping written (KiB)")
    axes.set_ylim(bottom=0, top=max(windows) / 1024 * 1.15)
    axes.set_title("Bookkeeping written per batch (checkpoint, part record, lease); shaded: batches that defer")
    axes.grid(alpha=0.3)
    _save(plt, figure, path)
