"""Benchmark 1 — streaming a large export to S3 with flat memory.

``LoyaltyTransactionsToS3Operator`` exports ~1 GiB of CSV (several batches, zips at deflate
level 1, served by the emulator in its own process) into moto's S3 server (another process).
The operator runs in a child process of its own, whose ``VmRSS`` is sampled every 10 ms (and whose
``VmHWM`` is reset before and read after the transfer); the figure is the peak growth over the
RSS just before ``execute``.

In the same run:

* a **baseline** child does the bare minimum with the same libraries: ``requests`` streams the
  same zips to disk, boto3 ``upload_file`` uploads them; no verification, no CSV;
* the **peer** a user would otherwise reach for, the amazon provider's ``HttpToS3Operator``,
  fetches the same zips (with and without ``extra_options={"stream": True}``);
* the operator again at 128 MiB (memory does not grow with the export's size), and on one
  512 MiB file stored uncompressed, where the peer's buffering of the whole body shows.

Child entry point: ``python -m benchmarks.stream child '<json>'``.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_provider_loyalty.testing.s3 import aws_connection_json, moto_s3_server
from benchmarks._common import (
    GIB,
    MIB,
    WORK_ROOT,
    BenchResult,
    EmulatorProcess,
    Figure,
    RssSampler,
    airflow_env,
    human_bytes,
    hwm_bytes,
    load_average,
    loyalty_connection_json,
    process_cpu_seconds,
    reset_hwm,
    rss_bytes,
    run_child,
)

BUCKET = "loyalty-bench"
ROW_PADDING = 2000
POLL_INTERVAL = 0.05
RSS_TARGET = 64 * MIB
TIME_RATIO_TARGET = 1.5


# ---------------------------------------------------------------------------------------- child


def _timed(totals: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so the seconds spent in it add up in ``totals[key]`` (behaviour unchanged)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - started

    return wrapper


def _measure(action: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``action`` with RSS sampling; return its result and the memory/time figures."""
    gc.collect()
    before = rss_bytes()
    hwm_reset = reset_hwm()
    cpu_before = process_cpu_seconds()
    started = time.perf_counter()
    with RssSampler(interval=0.01) as sampler:
        result = action()
    wall = time.perf_counter() - started
    peak = max(sampler.peak, hwm_bytes() if hwm_reset else 0)
    return result, {
        "wall_s": wall,
        "cpu_s": process_cpu_seconds() - cpu_before,
        "rss_before": before,
        "rss_peak": peak,
        "rss_growth": peak - before,
        "rss_samples": sampler.samples,
        "hwm_reset": hwm_reset,
    }


def _child_ours(args: dict[str, Any]) -> dict[str, Any]:
    import airflow_provider_loyalty.export.loop as export_module
    from airflow_provider_loyalty.export.s3_sink import S3PartSink
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
    from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

    totals: dict[str, float] = {}
    LoyaltyHook.download_export = _timed(totals, "download", LoyaltyHook.download_export)  # type: ignore[method-assign]
    export_module.write_part = _timed(totals, "verify", export_module.write_part)
    S3PartSink.put_file = _timed(totals, "upload", S3PartSink.put_file)  # type: ignore[method-assign]
    export_module.ExportLoop.wait = _timed(totals, "wait", export_module.ExportLoop.wait)  # type: ignore[method-assign]
    operator = LoyaltyTransactionsToS3Operator(
        task_id="bench_to_s3",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        s3_bucket=args["bucket"],
        s3_key_prefix=args["prefix"],
        poll_interval=POLL_INTERVAL,
        deferrable=False,
        date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z",
        transfer_config_args=args.get("transfer_config_args"),
    )
    if args.get("tracemalloc"):
        import tracemalloc

        tracemalloc.start(1)
    manifest, figures = _measure(lambda: operator.execute({}))  # type: ignore[arg-type]
    parts = manifest["parts"]
    figures.update(
        {
            "parts": len(parts),
            "rows": manifest["total_rows"],
            "bytes_uploaded": sum(part["bytes"] for part in parts),
            "phases": totals,
        }
    )
    if args.get("tracemalloc"):
        import tracemalloc

        figures["traced_peak"] = tracemalloc.get_traced_memory()[1]
    return figures


def _child_baseline(args: dict[str, Any]) -> dict[str, Any]:
    import boto3
    import requests

    from benchmarks._api import download_to, export_batches

    def transfer() -> dict[str, Any]:
        session = requests.Session()
        s3 = boto3.client("s3", endpoint_url=args["s3_url"], region_name="us-east-1")
        uploaded = 0
        batches = 0
        with tempfile.TemporaryDirectory(dir=args["workdir"]) as tmp:
            for batch in export_batches(session, args["url"], args["token"], POLL_INTERVAL):
                target = os.path.join(tmp, "batch.zip")
                uploaded += download_to(session, args["url"], args["token"], batch.path, target)
                s3.upload_file(target, args["bucket"], f"{args['prefix']}/part-{batches:05d}.zip")
                batches += 1
        return {"bytes_uploaded": uploaded, "parts": batches}

    result, figures = _measure(transfer)
    figures.update(result)
    return figures


def _child_peer(args: dict[str, Any]) -> dict[str, Any]:
    from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator

    operators = [
        HttpToS3Operator(
            task_id=f"peer_{index}",
            endpoint=path,
            http_conn_id="loyalty_http",
            s3_bucket=args["bucket"],
            s3_key=f"{args['prefix']}/part-{index:05d}.zip",
            replace=True,
            extra_options={"stream": True} if args["stream"] else None,
        )
        for index, path in enumerate(args["paths"])
    ]

    def transfer() -> dict[str, Any]:
        for operator in operators:
            operator.execute({})  # type: ignore[arg-type]
        return {"parts": len(operators)}

    result, figures = _measure(transfer)
    figures.update(result)
    return figures


def child_main(argv: list[str]) -> int:
    """Entry point of a measured child: ``child '<json>'``; prints one JSON line of figures."""
    args = json.loads(argv[1])
    runner = {"ours": _child_ours, "baseline": _child_baseline, "peer": _child_peer}[args["mode"]]
    # Import what every mode needs before measuring, so imports do not count as transfer memory.
    import boto3  # noqa: F401
    import requests  # noqa: F401
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # noqa: F401
    from airflow.providers.http.hooks.http import HttpHook  # noqa: F401

    figures = runner(args)
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


# --------------------------------------------------------------------------------------- parent


def csv_row_bytes(row_padding: int, sample: int = 400) -> float:
    """Average CSV bytes per row the emulator writes at ``row_padding`` (from a sample of rows)."""
    from airflow_provider_loyalty.testing.data import program_stream, transaction_to_csv_row

    stream = program_stream(0, 1_000_000, "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z", row_padding)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    for index in range(0, 1_000_000, 1_000_000 // sample):
        writer.writerow(transaction_to_csv_row(stream.transaction(index)))
    return len(text.getvalue().encode()) / sample


class _Scenario:
    """One export shape on the emulator: rows, batch size, deflate level."""

    def __init__(self, label: str, csv_bytes: int, batches: int, level: int, row_bytes: float) -> None:
        self.label = label
        self.rows = max(batches, round(csv_bytes / row_bytes))
        self.batch_size = -(-self.rows // batches)
        self.batches = batches
        self.level = level
        self.nominal = csv_bytes


def _run_mode(
    emulator: EmulatorProcess,
    scenario: _Scenario,
    mode: str,
    env: dict[str, str],
    workdir: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    emulator.configure(
        transactions=scenario.rows,
        batch_size=scenario.batch_size,
        zip_compresslevel=scenario.level,
        row_padding=ROW_PADDING,
        task_duration=0.0,
    )
    tag = f"{scenario.label}-{mode}{'-stream' if extra.get('stream') else ''}"
    tag += "-tracemalloc" if extra.get("tracemalloc") else ""
    before = emulator.stats()
    cpu_before = emulator.cpu_seconds()
    payload = {
        "mode": mode,
        "bucket": BUCKET,
        "prefix": f"bench/{tag}",
        "url": emulator.url,
        "token": emulator.token,
        "workdir": str(workdir),
        **extra,
    }
    started = time.perf_counter()
    figures: dict[str, Any] = run_child("benchmarks.stream", payload, env, workdir / f"{tag}.log", timeout=3600)
    figures["child_wall_s"] = time.perf_counter() - started
    after = emulator.stats()
    figures["emulator_cpu_s"] = emulator.cpu_seconds() - cpu_before
    figures["zip_bytes"] = after["download_bytes"] - before["download_bytes"]
    figures["csv_bytes"] = after["download_csv_bytes"] - before["download_csv_bytes"]
    figures["tag"] = tag
    if mode == "peer":
        figures["bytes_uploaded"] = figures["zip_bytes"]
    print(
        f"  stream/{tag}: {figures['wall_s']:.1f} s, RSS +{human_bytes(figures['rss_growth'])}, "
        f"uploaded {human_bytes(figures['bytes_uploaded'])}",
        flush=True,
    )
    return figures


def _prepare_peer(emulator: EmulatorProcess, scenario: _Scenario) -> list[str]:
    """Create the scenario's export chain up front; the peer downloads its zips by path."""
    import requests

    from benchmarks._api import export_batches

    emulator.configure(
        transactions=scenario.rows,
        batch_size=scenario.batch_size,
        zip_compresslevel=scenario.level,
        row_padding=ROW_PADDING,
        task_duration=0.0,
    )
    with requests.Session() as session:
        return [batch.path for batch in export_batches(session, emulator.url, emulator.token, POLL_INTERVAL)]


def run(quick: bool = False) -> BenchResult:
    """Run the streaming benchmark; ``quick`` uses small sizes (a smoke run)."""
    import boto3

    started = time.perf_counter()
    result = BenchResult(bench="stream", load={"before": load_average()})
    workdir = WORK_ROOT / "stream"
    workdir.mkdir(parents=True, exist_ok=True)
    row_bytes = csv_row_bytes(ROW_PADDING)
    if quick:
        big = _Scenario("64MiB", 64 * MIB, 4, 1, row_bytes)
        small = _Scenario("16MiB", 16 * MIB, 1, 1, row_bytes)
        single = _Scenario("32MiB-stored", 32 * MIB, 1, 0, row_bytes)
    else:
        big = _Scenario("1GiB", GIB, 8, 1, row_bytes)
        small = _Scenario("128MiB", 128 * MIB, 1, 1, row_bytes)
        single = _Scenario("512MiB-stored", 512 * MIB, 1, 0, row_bytes)
    runs: dict[str, dict[str, Any]] = {}
    with (
        moto_s3_server(workdir / "moto.log") as s3_server,
        EmulatorProcess({"row_padding": ROW_PADDING, "task_duration": 0.0}, workdir / "emulator.log") as emulator,
    ):
        boto3.client(
            "s3",
            endpoint_url=s3_server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="x",
        ).create_bucket(Bucket=BUCKET)
        http_conn = json.dumps(
            {"conn_type": "http", "host": emulator.url, "extra": {"Authorization": f"Bearer {emulator.token}"}}
        )
        env = airflow_env(
            workdir,
            loyalty_default=loyalty_connection_json(emulator.url, emulator.token),
            aws_default=aws_connection_json(s3_server.url),
            loyalty_http=http_conn,
        )
        common = {"s3_url": s3_server.url}
        for scenario in (big, small):
            runs[f"{scenario.label}/baseline"] = _run_mode(emulator, scenario, "baseline", env, workdir, common)
            runs[f"{scenario.label}/ours"] = _run_mode(emulator, scenario, "ours", env, workdir, common)
        # Diagnostic at the small size: how much of the operator's memory is live Python objects.
        extra = {**common, "tracemalloc": True}
        runs[f"{small.label}/ours-tracemalloc"] = _run_mode(emulator, small, "ours", env, workdir, extra)
        for scenario in (big, single):
            paths = _prepare_peer(emulator, scenario)
            for stream in (False, True):
                extra = {**common, "paths": paths, "stream": stream}
                figures = _run_mode(emulator, scenario, "peer", env, workdir, extra)
                runs[f"{scenario.label}/peer{'-stream' if stream else ''}"] = figures
        runs[f"{single.label}/ours"] = _run_mode(emulator, single, "ours", env, workdir, common)

    ours, baseline = runs[f"{big.label}/ours"], runs[f"{big.label}/baseline"]
    ratio = ours["wall_s"] / baseline["wall_s"]
    result.figures = [
        Figure(
            "stream",
            f"operator peak RSS growth at {big.label}",
            round(ours["rss_growth"] / MIB, 1),
            "MiB",
            "< 64 MiB",
            ours["rss_growth"] < RSS_TARGET,
        ),
        Figure(
            "stream",
            f"operator peak RSS growth at {small.label}",
            round(runs[f"{small.label}/ours"]["rss_growth"] / MIB, 1),
            "MiB",
        ),
        Figure(
            "stream",
            f"operator peak RSS growth, one {single.label} file",
            round(runs[f"{single.label}/ours"]["rss_growth"] / MIB, 1),
            "MiB",
        ),
        Figure("stream", f"operator wall time at {big.label}", round(ours["wall_s"], 1), "s"),
        Figure("stream", f"baseline wall time at {big.label}", round(baseline["wall_s"], 1), "s"),
        Figure(
            "stream",
            f"operator / baseline wall time at {big.label} (verification on)",
            round(ratio, 2),
            "x",
            "<= 1.5x",
            ratio <= TIME_RATIO_TARGET,
        ),
        Figure("stream", f"operator bytes uploaded at {big.label} (verified CSV)", ours["bytes_uploaded"], "B"),
        Figure("stream", f"baseline bytes uploaded at {big.label} (zips)", baseline["bytes_uploaded"], "B"),
        Figure(
            "stream",
            f"HttpToS3Operator peak RSS growth, {big.label} zips",
            round(runs[f"{big.label}/peer"]["rss_growth"] / MIB, 1),
            "MiB",
        ),
        Figure(
            "stream",
            f"HttpToS3Operator peak RSS growth, one {single.label} file",
            round(runs[f"{single.label}/peer"]["rss_growth"] / MIB, 1),
            "MiB",
        ),
        Figure(
            "stream",
            f"HttpToS3Operator(stream=True) peak RSS growth, one {single.label} file",
            round(runs[f"{single.label}/peer-stream"]["rss_growth"] / MIB, 1),
            "MiB",
        ),
    ]
    result.load["after"] = load_average()
    result.wall_seconds = time.perf_counter() - started
    result.markdown = _markdown(runs, big, small, single, row_bytes, ratio)
    (workdir / "runs.json").write_text(json.dumps(runs, indent=2), encoding="utf-8")
    return result


def _markdown(
    runs: dict[str, dict[str, Any]],
    big: _Scenario,
    small: _Scenario,
    single: _Scenario,
    row_bytes: float,
    ratio: float,
) -> str:
    rows = []
    names = {
        "ours": "`LoyaltyTransactionsToS3Operator` (verified CSV)",
        "ours-tracemalloc": "the operator again, under `tracemalloc` (diagnostic)",
        "baseline": "baseline: requests → disk → boto3 `upload_file` (zips, no verification)",
        "peer": "`HttpToS3Operator` (zips)",
        "peer-stream": '`HttpToS3Operator`, `extra_options={"stream": True}` (zips)',
    }
    for key, run in runs.items():
        label, mode = key.split("/", 1)
        rows.append(
            f"| {label} | {names[mode]} | {run['parts']} | {human_bytes(run['csv_bytes'])} | "
            f"{human_bytes(run['zip_bytes'])} | {human_bytes(run['bytes_uploaded'])} | {run['wall_s']:.1f} | "
            f"{run['cpu_s']:.1f} | {run['emulator_cpu_s']:.1f} | {human_bytes(run['rss_before'])} | "
            f"**+{human_bytes(run['rss_growth'])}** |"
        )
    ours = runs[f"{big.label}/ours"]
    phases = ours.get("phases", {})
    accounted = sum(phases.get(key, 0.0) for key in ("download", "verify", "upload", "wait"))
    verify_rate = ours["csv_bytes"] / MIB / max(phases.get("verify", 1e-9), 1e-9)
    base = runs[f"{big.label}/baseline"]
    traced = runs.get(f"{small.label}/ours-tracemalloc", {}).get("traced_peak", 0)
    tail_work = phases.get("verify", 0) + phases.get("upload", 0)
    pipelined = max(phases.get("download", 0), tail_work) + tail_work / max(big.batches, 1)
    lines = [
        "### Setup",
        "",
        f"* Emulator (own process): `row_padding={ROW_PADDING}` (≈{row_bytes:,.0f} CSV bytes per row), "
        f"`task_duration=0`; {big.label}: {big.rows:,} rows in {big.batches} batches of {big.batch_size:,} "
        f"(zip deflate level {big.level}); {small.label}: {small.rows:,} rows in {small.batches} batch; "
        f"{single.label}: {single.rows:,} rows in one zip stored uncompressed (level 0).",
        "* S3: moto's server mode in its own process. Every transfer runs in a fresh child process; its "
        "`VmRSS` is sampled every 10 ms and `VmHWM` is reset (`/proc/self/clear_refs`) before and read "
        "after; growth = peak - RSS just before the transfer (libraries already imported, clients not yet "
        "created). `poll_interval=0.05` everywhere.",
        "",
        "| size | what | batches | CSV served | zip served | uploaded | wall s | CPU s (child) "
        "| CPU s (emulator) | RSS before | peak RSS growth |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Where the operator's {ours['wall_s']:.1f} s at {big.label} went (timers around the calls, same run): "
        f"download {phases.get('download', 0):.1f} s, verify + write part {phases.get('verify', 0):.1f} s "
        f"({verify_rate:.0f} MiB/s of CSV), S3 upload {phases.get('upload', 0):.1f} s, status polls "
        f"{phases.get('wait', 0):.1f} s, other (create, checkpoints, manifest) "
        f"{ours['wall_s'] - accounted:.1f} s. The baseline took {base['wall_s']:.1f} s.",
        "",
        "### Reading the figures",
        "",
        f"* **Time ratio {ratio:.2f}x"
        + (" (target <= 1.5x met).**" if ratio <= TIME_RATIO_TARGET else " (target <= 1.5x missed).**")
        + " The two sides do different work: the baseline uploads the zips as "
        f"served ({human_bytes(base['bytes_uploaded'])}), the operator unzips, checks CRCs, member names, "
        f"CSV shape and the row count against the API's `total`, de-duplicates batch boundaries, hashes "
        f"(sha256) and uploads the verified CSV ({human_bytes(ours['bytes_uploaded'])}, "
        f"{ours['bytes_uploaded'] / max(base['bytes_uploaded'], 1):.0f}x the bytes). Both are paced by the "
        "emulator, which builds every zip on the fly in Python (its CPU seconds are in the table); a real "
        "API serving stored files would make the download part shorter for both, and the ratio larger. "
        "Measured cause: the operator's phases run strictly one after another per batch "
        "(`_export.py:ExportLoop.run` -> `land_batch`: download, then `write_part`, then "
        f"`sink.put_file`), so verification ({phases.get('verify', 0):.1f} s) and the upload of "
        f"{ours['bytes_uploaded'] / max(base['bytes_uploaded'], 1):.0f}x the baseline's bytes "
        f"({phases.get('upload', 0):.1f} s) add to the download ({phases.get('download', 0):.1f} s) instead "
        "of overlapping it. What would fix it (not implemented): a two-stage pipeline in "
        "`ExportLoop.run`: batch N+1's `from_id` is batch N's `next_from_id`, known from the status reply "
        "before N is downloaded, so the main thread can create, poll and download batch N+1 while a "
        "worker thread verifies and uploads part N (one part in flight, each on disk, so memory stays "
        "flat); part N is checkpointed when its upload has finished, which keeps resume exact. With the "
        "phase times above the wall time would be about max(download, verify + upload) + one batch's "
        f"verify + upload = ~{pipelined:.0f} s here, {pipelined / max(base['wall_s'], 1e-9):.2f}x the "
        "baseline (an estimate from this run's timers, not a measurement).",
        "* **Memory"
        + (" (target < 64 MiB met).**" if ours["rss_growth"] < RSS_TARGET else " (target < 64 MiB missed).**")
        + f" Peak growth: {human_bytes(runs[f'{small.label}/ours']['rss_growth'])} at {small.label}, "
        f"{human_bytes(ours['rss_growth'])} at {big.label}, "
        f"{human_bytes(runs[f'{single.label}/ours']['rss_growth'])} for one {single.label} batch - bounded, "
        "not proportional to the data (downloads go to a temporary file in 1 MiB chunks, the verifier "
        "reads each member in 256 KiB blocks (`export.archive._BLOCK`), parts are uploaded from disk by boto3's "
        "managed transfer). Under `tracemalloc` the operator's live Python allocations peak at "
        f"{human_bytes(traced)} ({small.label}); the rest of the growth is mostly boto3's client "
        "(endpoint and service-model JSON) and the transfer manager, created inside `execute`, and the "
        "allocator's retained heap.",
        "* **The peer.** `HttpToS3Operator` reads the whole body (`response.content`) and hands it to "
        "`S3Hook.load_bytes`, so its memory grows with the largest file; `stream=True` changes nothing "
        "because `response.content` still reads everything. On the level-1 zips of the "
        f"{big.label} export each zip is small (the filler compresses well), so the effect is modest; on one "
        f"{single.label} file it is the file size or more. It also uploads the zip unverified.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        raise SystemExit(child_main(sys.argv[1:]))
    print("\n".join(figure.line() for figure in run(quick="--quick" in sys.argv).figures))
