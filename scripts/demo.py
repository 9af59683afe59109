"""`make demo`: the example compliance DAG through real Airflow, against loopback servers.

Starts the loyalty API emulator (50,000 transactions of 2023-09-01, batches of 10,000) and moto's
S3 server on free loopback ports, points ``loyalty_default`` / ``aws_default`` at them, runs
``example_loyalty_transactions_to_s3`` with ``airflow dags test`` (SQLite metadata DB under
``.demo/airflow-home``), prints a short summary, and stops everything it started — also on
Ctrl-C or failure. Airflow's full output goes to ``.demo/airflow-dags-test.log``.

Against a real platform instead: ``LOYALTY_DEMO_REAL=1`` with ``AIRFLOW_CONN_LOYALTY_DEFAULT``,
``AIRFLOW_CONN_AWS_DEFAULT`` and ``LOYALTY_EXAMPLE_BUCKET`` set in the environment (and optionally
``LOYALTY_DEMO_DATE``, the day to export, default 2023-09-01).
"""

from __future__ import annotations

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

from airflow_provider_loyalty.testing.s3 import aws_connection_json, moto_s3_server

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".demo"
DAG_ID = "example_loyalty_transactions_to_s3"
TRANSACTIONS = 50_000
BATCH_SIZE = 10_000
DAY = os.environ.get("LOYALTY_DEMO_DATE", "2023-09-01")
BUCKET = os.environ.get("LOYALTY_EXAMPLE_BUCKET", "loyalty-demo")
REAL = os.environ.get("LOYALTY_DEMO_REAL") == "1"
SHOW = re.compile(
    r"(batch \d+:.*?MiB/s.*?|Export complete: [^\[]*|Resuming export[^\[]*|Task failed.*|Traceback.*)(\s+\[|$)"
)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


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


def start_emulator(stack: ExitStack) -> tuple[str, str]:
    """Start the emulator; return its URL and the (random, per-run) token it accepts."""
    log_path = WORK / "emulator.log"
    token = f"demo-token-{os.urandom(8).hex()}"
    stack.enter_context(
        process(
            [
                sys.executable,
                "-m",
                "airflow_provider_loyalty.testing",
                "--port",
                "0",
                "--transactions",
                str(TRANSACTIONS),
                "--batch-size",
                str(BATCH_SIZE),
                "--task-duration",
                "2",
                "--period-start",
                f"{DAY}T00:00:00Z",
                "--period-end",
                f"{DAY}T23:59:59Z",
                "--token",
                token,
            ],
            "the loyalty API emulator",
            log_path,
        )
    )
    line = wait_until(lambda: re.search(r"listening on (http://\S+)", log_path.read_text()), "the emulator")
    url = line.group(1)
    say(f"loyalty API emulator on {url} ({TRANSACTIONS:,} transactions on {DAY}, batches of {BATCH_SIZE:,})")
    return url, token


def start_s3(stack: ExitStack) -> str:
    """moto's S3 server on a free loopback port, stopped when the demo ends."""
    server = stack.enter_context(moto_s3_server(WORK / "s3.log"))
    stack.callback(say, "stopped moto's S3 server")
    say(f"S3 server (moto) on {server.url}")
    return server.url


def s3_client(endpoint: str | None) -> Any:
    import boto3

    if endpoint is None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id="aws_default").get_conn()
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="demo", aws_secret_access_key="demo", region_name="us-east-1"
    )


def main() -> int:
    WORK.mkdir(exist_ok=True)
    home = WORK / "airflow-home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "LOYALTY_EXAMPLE_BUCKET": BUCKET,
        "LOYALTY_EXAMPLE_POLL_INTERVAL": os.environ.get("LOYALTY_EXAMPLE_POLL_INTERVAL", "1"),
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    started = time.monotonic()
    with ExitStack() as stack:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        endpoint: str | None = None
        if REAL:
            missing = [
                n
                for n in ("AIRFLOW_CONN_LOYALTY_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT", "LOYALTY_EXAMPLE_BUCKET")
                if n not in os.environ
            ]
            if missing:
                say(f"LOYALTY_DEMO_REAL=1 needs {', '.join(missing)} in the environment")
                return 2
            say("using the real platform and S3 from the environment")
        else:
            emulator_url, token = start_emulator(stack)
            endpoint = start_s3(stack)
            env["AIRFLOW_CONN_LOYALTY_DEFAULT"] = json.dumps(
                {"conn_type": "loyalty", "host": emulator_url, "password": token, "extra": {"content_type": "json"}}
            )
            env["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_json(endpoint)
            s3_client(endpoint).create_bucket(Bucket=BUCKET)
        say("preparing Airflow's metadata DB (SQLite) under .demo/airflow-home")
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
        next_day = (datetime.date.fromisoformat(DAY) + datetime.timedelta(days=1)).isoformat()
        say(f"airflow dags test {DAG_ID} {next_day}  (data interval {DAY} .. {next_day})")
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
            return 1
        client = s3_client(endpoint)
        prefix = f"loyalty/transactions/program=123/day={DAY}/"
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        manifest = json.loads(client.get_object(Bucket=BUCKET, Key=prefix + "_manifest.json")["Body"].read())
        elapsed = time.monotonic() - started
        print()
        say("summary")
        print(f"  batches      {len(manifest['parts'])}")
        dropped = manifest.get("duplicates_dropped", 0)
        print(f"  rows         {manifest['total_rows']:,}  (boundary duplicates dropped: {dropped})")
        print(f"  bytes        {manifest['total_bytes']:,}")
        print(f"  period       {manifest['date_from']} .. {manifest['date_to']}")
        print(f"  manifest     s3://{BUCKET}/{prefix}_manifest.json")
        print(f"  S3 keys      ({len(listing)})")
        for item in sorted(listing, key=lambda obj: obj["Key"]):
            print(f"    {item['Size']:>12,}  s3://{BUCKET}/{item['Key']}")
        print(f"  time         {elapsed:.1f} s")
        print(f"  full log     {log_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        raise SystemExit(130) from None
