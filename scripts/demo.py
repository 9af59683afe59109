"""`make demo`: the example compliance DAG through real Airflow, against loopback servers.

Starts moto's S3 server and the loyalty API emulator (50,000 transactions of 2023-09-01, batches of
10,000) on free loopback ports, points ``loyalty_default`` / ``aws_default`` at them, runs
``example_loyalty_transactions_to_s3`` with ``airflow dags test`` (SQLite metadata DB under
``.demo/airflow-home``), prints a short summary, and stops everything it started — also on
Ctrl-C or failure. Airflow's full output goes to ``.demo/airflow-dags-test.log``.

``--keep`` (or ``LOYALTY_DEMO_KEEP=1``) keeps the S3 server running after the run, with the export
in it, and prints how to browse it, until Ctrl-C. Otherwise its data is discarded at the end.

Against a real platform instead: ``LOYALTY_DEMO_REAL=1`` with ``AIRFLOW_CONN_LOYALTY_DEFAULT``,
``AIRFLOW_CONN_AWS_DEFAULT`` and ``LOYALTY_EXAMPLE_BUCKET`` set in the environment (and optionally
``LOYALTY_DEMO_DATE``, the day to export, default 2023-09-01).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from airflow_provider_loyalty.testing.s3 import LoopbackS3, aws_connection_json, moto_s3_server

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".demo"
DAG_ID = "example_loyalty_transactions_to_s3"
TRANSACTIONS = 50_000
BATCH_SIZE = 10_000
REAL_VARIABLES = ("AIRFLOW_CONN_LOYALTY_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT", "LOYALTY_EXAMPLE_BUCKET")
SHOW = re.compile(
    r"(batch \d+:.*?MiB/s.*?|Export complete: [^\[]*|Resuming export[^\[]*|Task failed.*|Traceback.*)(\s+\[|$)"
)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; ``--help`` prints it and exits 0 before anything starts."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo.py",
        description=(
            "Run the example daily S3 export DAG through real Airflow (airflow dags test) against the loyalty "
            "API emulator and moto's S3 server on loopback, print a summary, and stop what it started."
        ),
        epilog=(
            "environment: LOYALTY_DEMO_KEEP=1 (as --keep); LOYALTY_DEMO_DATE (the day to export, default "
            "2023-09-01); LOYALTY_EXAMPLE_BUCKET (default loyalty-demo); LOYALTY_EXAMPLE_POLL_INTERVAL (seconds, "
            "default 1); LOYALTY_DEMO_REAL=1 with " + ", ".join(REAL_VARIABLES) + " runs against a real platform "
            "and S3 instead. Work files and logs: .demo/"
        ),
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        default=os.environ.get("LOYALTY_DEMO_KEEP") == "1",
        help="keep the S3 server running after the run, with the export in it, until Ctrl-C",
    )
    return parser.parse_args(argv)


@contextmanager
def process(
    command: list[str], name: str, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A child process in its own group, always stopped on exit."""
    log = log_path.open("w")
    child = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env or os.environ.copy(), start_new_session=True
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        log.close()
        say(f"stopped {name}")


def wait_until(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"[demo] timed out waiting for {what}")


def start_emulator(stack: ExitStack, day: str) -> tuple[str, str]:
    """Start the emulator; return its URL and the (random, per-run) token it accepts."""
    log_path = WORK / "emulator.log"
    token = f"demo-token-{os.urandom(8).hex()}"
    command = [sys.executable, "-m", "airflow_provider_loyalty.testing", "--port", "0"]
    command += ["--transactions", str(TRANSACTIONS), "--batch-size", str(BATCH_SIZE), "--task-duration", "2"]
    command += ["--period-start", f"{day}T00:00:00Z", "--period-end", f"{day}T23:59:59Z", "--token", token]
    stack.enter_context(process(command, "the loyalty API emulator", log_path))
    line = wait_until(lambda: re.search(r"listening on (http://\S+)", log_path.read_text()), "the emulator")
    url = line.group(1)
    say(f"loyalty API emulator on {url} ({TRANSACTIONS:,} transactions on {day}, batches of {BATCH_SIZE:,})")
    return url, token


def start_s3(stack: ExitStack) -> LoopbackS3:
    """moto's S3 server on a free loopback port, stopped when the demo ends."""
    server = stack.enter_context(moto_s3_server(WORK / "s3.log"))
    stack.callback(say, "stopped moto's S3 server")
    say(f"S3 server (moto) on {server.url}")
    return server


def s3_client(server: LoopbackS3 | None) -> Any:
    """A client of the loopback S3, or of the real one through ``aws_default``."""
    if server is not None:
        return server.client()
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id="aws_default").get_conn()


def airflow_env(home: Path, bucket: str) -> dict[str, str]:
    """The environment of every Airflow command the demo runs."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "LOYALTY_EXAMPLE_BUCKET": bucket,
        "LOYALTY_EXAMPLE_POLL_INTERVAL": os.environ.get("LOYALTY_EXAMPLE_POLL_INTERVAL", "1"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }


def run_dag(stack: ExitStack, env: dict[str, str], day: str) -> bool:
    """``airflow dags test`` for the day after ``day`` (whose data interval is ``day``); show its key lines."""
    say("preparing Airflow's metadata DB (SQLite) under .demo/airflow-home")
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    next_day = (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat()
    say(f"airflow dags test {DAG_ID} {next_day}  (data interval {day} .. {next_day})")
    log_path = WORK / "airflow-dags-test.log"
    with log_path.open("w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, next_day],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        stack.callback(lambda: run.poll() is None and os.killpg(run.pid, signal.SIGTERM))
        assert run.stdout is not None
        for line in run.stdout:
            log.write(line)
            shown = SHOW.search(line)
            if shown:
                print("         " + shown.group(1).strip()[:140], flush=True)
        code = run.wait()
    if code != 0:
        say(f"airflow dags test failed (exit {code}); see {log_path.relative_to(REPO)}")
    return code == 0


def print_summary(client: Any, bucket: str, prefix: str, started: float) -> None:
    """The manifest's figures and every key under the export's prefix."""
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    manifest = json.loads(client.get_object(Bucket=bucket, Key=prefix + "_manifest.json")["Body"].read())
    print()
    say("summary")
    print(f"  batches      {len(manifest['parts'])}")
    dropped = manifest.get("duplicates_dropped", 0)
    print(f"  rows         {manifest['total_rows']:,}  (boundary duplicates dropped: {dropped})")
    print(f"  bytes        {manifest['total_bytes']:,}")
    print(f"  period       {manifest['date_from']} .. {manifest['date_to']}")
    print(f"  manifest     {manifest['manifest']}")
    print(f"  S3 keys      ({len(listing)})")
    for item in sorted(listing, key=lambda obj: obj["Key"]):
        print(f"    {item['Size']:>12,}  s3://{bucket}/{item['Key']}")
    print(f"  time         {time.monotonic() - started:.1f} s")
    print(f"  full log     {(WORK / 'airflow-dags-test.log').relative_to(REPO)}")


def keep_serving(server: LoopbackS3, bucket: str, prefix: str) -> None:
    """Say how to browse the kept S3 server, then serve until Ctrl-C (or SIGTERM)."""
    print()
    say(f"S3 server kept running on {server.url} with the export in it; browse it from another terminal:")
    print(
        "  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \\\n"
        f"    aws s3 ls --endpoint-url {server.url} --recursive s3://{bucket}/{prefix}"
    )
    print("  or in Python:")
    print(
        "    import boto3\n"
        f"    s3 = boto3.client('s3', endpoint_url='{server.url}', aws_access_key_id='testing',\n"
        "                      aws_secret_access_key='testing', region_name='us-east-1')\n"
        f"    print(s3.get_object(Bucket='{bucket}', Key='{prefix}_manifest.json')['Body'].read().decode())"
    )
    say("press Ctrl-C to stop it (its data lives in memory only and goes with it)")
    try:
        signal.pause()
    except KeyboardInterrupt:
        print()


def missing_real_variables() -> list[str]:
    return [name for name in REAL_VARIABLES if name not in os.environ]


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    day = os.environ.get("LOYALTY_DEMO_DATE", "2023-09-01")
    bucket = os.environ.get("LOYALTY_EXAMPLE_BUCKET", "loyalty-demo")
    real = os.environ.get("LOYALTY_DEMO_REAL") == "1"
    if real and missing_real_variables():
        say(f"LOYALTY_DEMO_REAL=1 needs {', '.join(missing_real_variables())} in the environment")
        return 2
    WORK.mkdir(exist_ok=True)
    (WORK / "airflow-home").mkdir(exist_ok=True)
    env = airflow_env(WORK / "airflow-home", bucket)
    prefix = f"loyalty/transactions/program=123/day={day}/"
    started = time.monotonic()
    with ExitStack() as stack:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        server: LoopbackS3 | None = None
        with ExitStack() as api:
            if real:
                say("using the real platform and S3 from the environment")
            else:
                server = start_s3(stack)
                url, token = start_emulator(api, day)
                env["AIRFLOW_CONN_LOYALTY_DEFAULT"] = json.dumps(
                    {"conn_type": "loyalty", "host": url, "password": token, "extra": {"content_type": "json"}}
                )
                env["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_json(server.url)
                server.client().create_bucket(Bucket=bucket)
            if not run_dag(api, env, day):
                return 1
        print_summary(s3_client(server), bucket, prefix, started)
        if server is None:
            return 0
        if options.keep:
            keep_serving(server, bucket, prefix)
        else:
            say("S3 data discarded: moto's server keeps it in memory only (--keep or LOYALTY_DEMO_KEEP=1 keeps it)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        raise SystemExit(130) from None
