"""Token secrecy end to end: the API token never shows up in anything Airflow keeps or prints.

Example DAGs run through Airflow itself (``dag.test()`` in a subprocess, see
``tests/support/dag_runner.py``) with a long, distinctive token, in a passing run and in failing ones,
including a server that echoes the token back in its error texts. Then everything Airflow produced
is scanned: the captured stdout/stderr, every file under ``AIRFLOW_HOME/logs``, the metadata DB's
``xcom`` and ``rendered_task_instance_fields`` rows (and the raw DB files as a whole), and the
exception texts of the failing tasks. Zero hits allowed.

In-process tests cover the worker-side paths that turn server text into exceptions (the
non-deferrable operator and the sensor's poke) directly.
"""

from __future__ import annotations

import html
import json
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyTransientError
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from tests.reliability.support import PROGRAM, loopback_server, send
from tests.support.dag_runner import REPO, run_dag_test
from tests.support.helpers import point_connection_at
from tests.support.operator_driver import context_for

TOKEN = "lyl-SECRET-7c1e9a4b2d8f-token-0f3e6a9c5b1d4e7a8b2c-END"
EXAMPLES = REPO / "example_dags"
SENSOR_DAG = (EXAMPLES / "example_loyalty_export_with_sensor.py", "example_loyalty_export_with_sensor")


def loyalty_env(emulator: LoyaltyEmulator, token: str = TOKEN, **extra: str) -> dict[str, str]:
    connection = {
        "conn_type": "loyalty",
        "host": emulator.url,
        "password": token,
        "extra": {"retry_backoff": 0.01, "max_retries": 1},
    }
    return {"AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection), "LOYALTY_EXAMPLE_POLL_INTERVAL": "0.2", **extra}


def scan_airflow_home(home: Path) -> list[str]:
    """Every place under AIRFLOW_HOME that holds the token: log files, DB rows, raw DB files."""
    hits: list[str] = []
    needle = TOKEN.encode()
    for path in sorted((home / "logs").rglob("*")) if (home / "logs").exists() else []:
        if path.is_file() and needle in path.read_bytes():
            hits.append(f"log file {path}")
    db = home / "airflow.db"
    with sqlite3.connect(db) as conn:
        for table in ("xcom", "rendered_task_instance_fields"):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            assert columns, f"no table {table} in the metadata DB"
            for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
                for column, value in zip(columns, row, strict=True):
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    if TOKEN in text:
                        hits.append(f"{table}.{column}")
    for path in home.glob("airflow.db*"):
        if needle in path.read_bytes():
            hits.append(f"raw DB file {path.name}")
    return hits


def assert_no_token(outcome_output: str, home: Path) -> None:
    assert TOKEN not in outcome_output, "the token appears in Airflow's stdout/stderr"
    hits = scan_airflow_home(home)
    assert hits == [], f"the token was found in: {hits}"


def run(dag: tuple[Path, str], env: dict[str, str], **kwargs):
    return run_dag_test(dag[0], dag[1], env, **kwargs)


# --------------------------------------------------------------------------------------- through Airflow


def test_sensor_dag_success_and_echoed_token_failure_leak_nothing(airflow_db, tmp_path):
    home = Path(os.environ["AIRFLOW_HOME"])
    config = EmulatorConfig(transactions=1500, batch_size=1000, task_duration=0.3, token=TOKEN)
    with LoyaltyEmulator(config) as emulator:
        ok = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "ok")))
        assert ok.state == "success", ok.output[-4000:]
        assert ok.tasks["download_export"] == "success"

        # The server fails the export task and echoes the token in its text: still nowhere.
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": f"quota for {TOKEN}"})])
        failed = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "failed")))
    assert failed.state == "failed", failed.output[-4000:]
    assert failed.tasks["wait_for_export"] == "failed"
    assert "quota for" in failed.output  # the API's reason is shown, just not the token
    assert_no_token(ok.output + failed.output, home)


@pytest.mark.slow
def test_auth_error_and_echoing_api_error_leak_nothing(airflow_db, tmp_path):
    home = Path(os.environ["AIRFLOW_HOME"])
    config = EmulatorConfig(transactions=500, task_duration=0.1, token="the-emulators-own-token")
    with LoyaltyEmulator(config) as emulator:
        refused = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "a")))
        emulator.config.token = TOKEN
        emulator.set_faults(
            [FaultRule(endpoint="export", kind="api_error", params={"code": 1001, "text": f"bad {TOKEN}"})]
        )
        echoed = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "b")))
    assert refused.state == "failed" and refused.tasks["create_export_task"] == "failed"
    assert "Authentication failed" in refused.output or "401" in refused.output
    assert echoed.state == "failed" and echoed.tasks["create_export_task"] == "failed"
    assert_no_token(refused.output + echoed.output, home)


# -------------------------------------------------------------------------------------------- in-process


@pytest.fixture
def echoing_emulator(monkeypatch) -> LoyaltyEmulator:
    """An emulator whose export tasks fail with the caller's token in the failure text."""
    with LoyaltyEmulator(EmulatorConfig(transactions=100, task_duration=0.0, token=TOKEN)) as emulator:
        point_connection_at(monkeypatch, emulator, max_retries=1)
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": f"denied: {TOKEN}"})])
        yield emulator


@pytest.mark.parametrize("deferrable", [False, True])
def test_export_operator_failure_text_is_redacted(echoing_emulator, tmp_path, deferrable):
    operator = LoyaltyExportOperator(
        task_id="secret", **PROGRAM, output_path=str(tmp_path), date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z", poll_interval=0.05, deferrable=deferrable,
    )  # fmt: skip
    with pytest.raises(LoyaltyError) as caught:
        operator.execute(context_for())
    assert "denied" in str(caught.value)
    assert TOKEN not in str(caught.value), f"token in the exception: {caught.value}"
    assert TOKEN not in repr(caught.value.__dict__)


def test_sensor_poke_failure_text_is_redacted(echoing_emulator):
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    task_id = LoyaltyHook().create_transactions_export(
        **PROGRAM, date_from="2023-09-01T00:00:00Z", date_to="2023-09-30T23:59:59Z"
    )
    sensor = LoyaltyExportTaskSensor(task_id="wait", export_task_id=task_id, poke_interval=0.05, timeout=5)
    with pytest.raises(LoyaltyError) as caught:
        sensor.poke(context_for())
    assert "denied" in str(caught.value)
    assert TOKEN not in str(caught.value), f"token in the exception: {caught.value}"


# ------------------------------------------------------------------------------------- every kind of token
#
# Tokens a platform may hand out or a person may paste: spaces, URL-reserved characters (which the URI
# form of the connection must percent-encode), characters JSON, XML and repr() escape, and pasted ones
# with surrounding blanks (stripped). Each one works, sync and async, in both connection forms and both
# content types, and none of its spellings appears in an exception (its whole cause/context chain and
# traceback), a log line or a trigger event, even when the server echoes it in every error text.

TOKENS = {
    "spaces": ("tok with spaces 7c1e9a4b", "tok with spaces 7c1e9a4b"),
    "url-reserved": ("a/b?c#d&e=f+g%h 7c1e9a4b", "a/b?c#d&e=f+g%h 7c1e9a4b"),
    "escaped": ('q"uote\\back<&>slash 7c1e9a4b', 'q"uote\\back<&>slash 7c1e9a4b'),
    "trailing-newline": ("pasted-token-7c1e9a4b\n", "pasted-token-7c1e9a4b"),
    "surrounding-blanks": ("  \tpadded-token-7c1e9a4b \r\n", "padded-token-7c1e9a4b"),
}
REFUSED_TOKENS = {
    "inner-newline": "first-half-7c1e9a4b\nsecond-half-0f3e6a9c",
    "inner-tab": "first-half-7c1e9a4b\tsecond-half-0f3e6a9c",
    "nul": "first-half-7c1e9a4b\x00second-half-0f3e6a9c",
    "del": "first-half-7c1e9a4b\x7fsecond-half-0f3e6a9c",
    "non-ascii": "first-half-7c1e9a4b-tökén-second-half-0f3e6a9c",
}
FORMS = ["json-form/json", "uri-form/xml"]


def spellings(token: str) -> set[str]:
    """The token as any text might hold it (the same forms ``utils/redaction.py`` removes, and more)."""
    import json as _json
    from urllib.parse import quote, quote_plus
    from xml.sax.saxutils import escape

    return {token, quote(token, safe=""), quote(token), quote_plus(token), repr(token)[1:-1],
            _json.dumps(token)[1:-1], escape(token), token.encode("unicode_escape").decode()}  # fmt: skip


def connect(monkeypatch, emulator: LoyaltyEmulator, pasted: str, form: str, **extra) -> None:
    from urllib.parse import quote, urlencode

    connection_form, content_type = form.split("/")
    options = {"content_type": content_type, "retry_backoff": 0.01, "max_retry_wait": 1, "max_retries": 2, **extra}
    if connection_form == "json-form":
        value = json.dumps({"conn_type": "loyalty", "host": emulator.url, "password": pasted, "extra": options})
    else:
        host = quote(emulator.url, safe="")
        value = f"loyalty://:{quote(pasted, safe='')}@{host}?{urlencode(options)}"
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", value)


def exception_texts(error: BaseException) -> list[str]:
    """Everything an exception can show: its chain's texts, arguments, attributes and the traceback."""
    import traceback

    texts = ["".join(traceback.format_exception(error))]
    pending, seen = [error], []
    while pending:
        item = pending.pop()
        if any(item is known for known in seen):
            continue
        seen.append(item)
        texts += [str(item), repr(item), repr(item.args), repr(getattr(item, "__dict__", {}))]
        pending += [linked for linked in (item.__cause__, item.__context__) if linked is not None]
    return texts


def leaks(token: str, texts: list[str]) -> list[str]:
    forms = spellings(token)
    return [text[:300] for text in texts if any(form in text for form in forms)]


def echo_faults(token: str) -> list[FaultRule]:
    """Every endpoint's errors echo the token back (retried ones too, so retry log lines carry it)."""
    echo = f"request by {token} refused"
    return [
        FaultRule(endpoint="export", kind="api_error", count=1, params={"code": 1001, "text": echo}),
        FaultRule(endpoint="status", kind="http_503", count=1, params={"text": echo}),
        FaultRule(endpoint="status", kind="task_failed", params={"text": echo}),
        FaultRule(endpoint="account", kind="api_error", params={"code": 1001, "text": echo}),
        FaultRule(endpoint="download", kind="download_error_envelope", params={"text": echo}),
    ]


@pytest.fixture
def token_emulator() -> LoyaltyEmulator:
    with LoyaltyEmulator(EmulatorConfig(transactions=300, batch_size=100, task_duration=0.0)) as emulator:
        yield emulator


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", list(TOKENS))
def test_every_kind_of_token_works_and_never_leaks_sync(
    token_emulator, monkeypatch, caplog, capfd, tmp_path, kind: str, form: str
) -> None:
    import logging

    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    pasted, token = TOKENS[kind]
    token_emulator.config.token = token
    connect(monkeypatch, token_emulator, pasted, form)
    caplog.set_level(logging.DEBUG)
    hook = LoyaltyHook()
    assert hook.settings.token == token
    task_id = hook.create_transactions_export(**PROGRAM, date_from="2023-09-01", date_to="2023-09-30")
    result = hook.get_export_task_status(task_id).completed_result()
    assert hook.download_export(result.hashed_file, tmp_path / "b.zip") > 0
    member = {**PROGRAM, "matching": "email", "email": "member0@example.com"}
    assert len(list(hook.iter_account_transactions(**member))) == 250  # the token also travels in this body

    token_emulator.set_faults(echo_faults(token))
    texts: list[str] = []
    calls = [
        lambda: hook.create_transactions_export(**PROGRAM, date_from="2023-09-01", date_to="2023-09-30"),
        lambda: hook.download_export(result.hashed_file, tmp_path / "c.zip"),
        lambda: list(hook.iter_account_transactions(**member)),
        lambda: hook.get_export_task_status(task_id).raise_for_failure(),  # fails the task for good
    ]
    for call in calls:
        with pytest.raises(LoyaltyError) as caught:
            call()
        assert "request by *** refused" in str(caught.value), caught.value
        texts += exception_texts(caught.value)
    assert token_emulator.stats()["faults_applied"]["http_503"] == 1  # a retry was logged with the echo
    texts += [record.getMessage() for record in caplog.records] + list(capfd.readouterr())
    assert any("retry 1 of 2" in text for text in texts)
    assert leaks(token, texts) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", list(TOKENS))
def test_every_kind_of_token_works_and_never_leaks_async(
    token_emulator, monkeypatch, caplog, capfd, kind: str, form: str
) -> None:
    import asyncio
    import logging

    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
    from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook
    from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

    pasted, token = TOKENS[kind]
    token_emulator.config.token = token
    connect(monkeypatch, token_emulator, pasted, form)
    caplog.set_level(logging.DEBUG)
    task_ids = [
        LoyaltyHook().create_transactions_export(**PROGRAM, date_from="2023-09-01", date_to="2023-09-30")
        for _ in range(2)
    ]

    async def scenario() -> list[str]:
        texts: list[str] = []
        async with LoyaltyAsyncHook() as hook:
            assert (await hook.get_export_task_status(task_ids[0])).completed_result().total == 100
            token_emulator.set_faults(echo_faults(token))
            with pytest.raises(LoyaltyError) as caught:
                (await hook.get_export_task_status(task_ids[0])).raise_for_failure()
            texts += exception_texts(caught.value)
        events = [event.payload async for event in LoyaltyExportTaskTrigger(task_ids[1], poll_interval=0.05).run()]
        assert events[0]["status"] == "error" and "request by *** refused" in events[0]["message"], events
        return [*texts, json.dumps(events)]

    texts = asyncio.run(scenario())
    texts += [record.getMessage() for record in caplog.records] + list(capfd.readouterr())
    assert any("retry 1 of 2" in text for text in texts)
    assert leaks(token, texts) == []


@pytest.mark.parametrize("kind", list(REFUSED_TOKENS))
def test_a_token_no_header_can_carry_is_refused_without_quoting_it(token_emulator, monkeypatch, kind: str) -> None:
    import asyncio

    from airflow_provider_loyalty.exceptions import LoyaltyValidationError
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
    from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook
    from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

    token = REFUSED_TOKENS[kind]
    connect(monkeypatch, token_emulator, token, "json-form/json")
    with pytest.raises(LoyaltyValidationError) as sync_error:
        _ = LoyaltyHook().settings  # reading the connection parses the token
    assert sync_error.value.parameter == "password"
    ok, message = LoyaltyHook().test_connection()
    assert ok is False and "API token" in message

    async def scenario() -> tuple[BaseException, list[dict]]:
        with pytest.raises(LoyaltyValidationError) as async_error:
            await LoyaltyAsyncHook().open()
        events = [event.payload async for event in LoyaltyExportTaskTrigger("task_x").run()]
        return async_error.value, events

    async_error, events = asyncio.run(scenario())
    texts = [*exception_texts(sync_error.value), *exception_texts(async_error), message, json.dumps(events)]
    assert token_emulator.stats()["requests_total"] == 0  # refused before anything was sent
    for half in ("first-half-7c1e9a4b", "second-half-0f3e6a9c"):
        assert not [text for text in texts if half in text]


def test_errors_raised_by_http_libraries_themselves_are_redacted(token_emulator, monkeypatch) -> None:
    """``http.client`` quotes a header value it refuses, aiohttp may too: force a token past the parse
    checks into the settings, and no text of what leaves the hooks holds it."""
    import asyncio
    import dataclasses

    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
    from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook

    forced = "forced-7c1e9a4b\nInjected: header-0f3e6a9c"
    connect(monkeypatch, token_emulator, "valid-token", "json-form/json")
    hook = LoyaltyHook()
    hook.__dict__["settings"] = dataclasses.replace(hook.settings, token=forced)
    with pytest.raises(LoyaltyError) as sync_error:
        hook.get_task_status("task_x")

    async def scenario() -> BaseException:
        async_hook = LoyaltyAsyncHook()
        async_hook.settings = dataclasses.replace(await async_hook.get_settings(), token=forced)
        with pytest.raises(LoyaltyError) as caught:
            async with async_hook:
                await async_hook.get_task_status("task_x")
        return caught.value

    async_error = asyncio.run(scenario())
    for error in (sync_error.value, async_error):
        assert "the request could not be sent" in str(error)
        assert not isinstance(error, LoyaltyTransientError)  # no retry can help
        texts = exception_texts(error)
        assert any("ValueError" in text for text in texts)  # the library's error is still in the chain ...
        assert leaks(forced, texts) == [] and not [t for t in texts if "header-0f3e6a9c" in t]  # ... cleaned
    assert token_emulator.stats()["requests_total"] == 0


# ------------------------------------------------------------------------------------- forms and pieces

_SLASHED = "Ab3/xYz+9kLm/QrSt=="
_LONG = "eyJhbGciOiJIUzI1NiJ9." + "x7" * 120


@pytest.mark.parametrize(
    ("token", "text"),
    [
        (_SLASHED, json.dumps({"error_text": f"bad token {_SLASHED}"}).replace("/", "\\/")),  # PHP's json_encode
        (_SLASHED, "GET /x?t=Ab3%2fxYz%2b9kLm%2fQrSt%3d%3d"),  # lower-case percent escapes
        (_SLASHED, "<error_text>Ab3&#x2F;xYz&#x2B;9kLm&#x2F;QrSt&#x3D;&#x3D;</error_text>"),
        (_SLASHED, "<error_text>Ab3&#47;xYz&#43;9kLm&#47;QrSt&#61;&#61;</error_text>"),
        (_LONG, f"field 'total': expected integer, got {_LONG[:40]!r}"),  # a field cut to 40 characters
        (_LONG, f"redirect to https://evil.example/?t={_LONG[:200]}"),  # a Location cut to 200
        (_SLASHED, f"refused authorization: bearer {_SLASHED.lower()}"),  # an echoed header line, lower-cased
        (_LONG, f"TOKEN {_LONG.upper()} REFUSED"),
    ],
    ids=["php-json", "percent-lower", "hex-refs", "decimal-refs", "cut-at-40", "cut-at-200", "lower", "upper"],
)
def test_escaped_and_cut_short_tokens_are_masked(token: str, text: str) -> None:
    from airflow_provider_loyalty.utils.redaction import PIECE, redact, scrub

    cleaned = redact(text, token)
    assert "***" in cleaned
    assert token[:PIECE].lower() not in cleaned.lower() and "xyz" not in cleaned.lower()
    error = scrub(LoyaltyError(text), token)
    assert token[:PIECE].lower() not in str(error).lower() and "***" in str(error)


_MARKUP = "Ab1\"Cd2'Ef3<Gh4>&Ij5Kl6Mn7"


@pytest.mark.parametrize(
    ("token", "text", "shown"),
    [
        (_MARKUP, f"Bad request for token {html.escape(_MARKUP)}", html.escape(_MARKUP)),  # Python's html.escape
        (_MARKUP, f"token {html.escape(_MARKUP).replace('&#x27;', '&#039;')}", "Ef3&lt;Gh4"),  # PHP's ENT_QUOTES
        (_SLASHED, f"redirect to https://login.example.com/cb/{quote(_SLASHED)}", "9kLm/QrSt%3D%3D"),  # path: "/" kept
        (_SLASHED, f"redirect to /cb/{quote(_SLASHED).lower()}", "9klm/qrst%3d%3d"),
    ],
    ids=["html-escape", "php-htmlspecialchars", "percent-path", "percent-path-lower"],
)
def test_a_token_escaped_for_html_or_a_path_is_masked(token: str, text: str, shown: str) -> None:
    """A server echoing the token HTML-escaped in its error text showed it whole (escaped, so
    readable); one echoing it in a path (``quote`` keeps ``/``) showed everything after its first ``/``."""
    from airflow_provider_loyalty.utils.redaction import redact, scrub

    assert shown in text
    for cleaned in (redact(text, token), str(scrub(LoyaltyError(text), token))):
        assert shown not in cleaned and "***" in cleaned


def test_words_that_begin_like_the_token_in_another_case_are_left_alone() -> None:
    """Lower- and upper-case forms of the token are masked whole only: as pieces, ordinary words
    matched (``loyalty_`` of a token ``Loyalty_7f3a…``), and a file name in a status reply was
    mangled (``Transactions_***1.zip``), so the deferrable export downloaded a name that is not."""
    from airflow_provider_loyalty.utils.redaction import redact, redact_values

    token = "Loyalty_7f3a9c2e1b0d"
    assert redact("loyalty_program_id: expected an integer", token) == "loyalty_program_id: expected an integer"
    assert redact(f"echo {token.lower()} and {token.upper()}", token) == "echo *** and ***"
    data = {"hashed_file": "ab/Transactions_Loyalty_1.zip", "note": f"sent {token}"}
    assert redact_values(data, token) == {"hashed_file": "ab/Transactions_Loyalty_1.zip", "note": "sent ***"}


# ------------------------------------------------------------------------------------- a token at a cut
#
# Server text is cut short where an error quotes it (a field to 40 characters, a page's words to 80,
# a Location to 200), in the codec, before the hook knows which token to remove. A token straddling
# such a cut must not leave its first few characters behind (too short to be recognised as a piece
# of it afterwards): the cut keeps the token whole or drops it whole.

_CUT_TOKENS = {"plain": "s3cr3tTOKENvalue0123456789", "spaces": "Zq9x with spaces 7c1e9a4b"}


def _reply_cutting(where: str, token: str):
    """A responder whose reply quotes ``token`` across the place ``where`` the error cuts it."""

    def respond(handler, _server) -> None:
        if where == "location":
            target = "https://sso.example.com/login?" + "x" * 163 + token
            send(handler, 302, b"", "text/plain", Location=target)
        elif where == "page":
            title = "https://sso.example.com/login?next=%2Fapi&access_to" + "k" * 20 + token
            send(handler, 200, f"<html><title>{title}</title></html>".encode(), "text/html")
        else:  # a documented integer field that is not one, the token straddling its 40th character
            total = "see https://status.example.com/x?key" + token
            body = {"error": 0, "data": {"status": "completed", "result": {"hashed_file": "a/b.zip", "total": total}}}
            send(handler, 200, json.dumps(body).encode(), "application/json")

    return respond


@pytest.mark.parametrize("kind", list(_CUT_TOKENS))
@pytest.mark.parametrize("where", ["location", "page", "field"])
def test_a_token_straddling_a_cut_leaves_no_piece_in_errors(monkeypatch, where: str, kind: str) -> None:
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    token = _CUT_TOKENS[kind]
    with loopback_server(_reply_cutting(where, token)) as api:
        connection = {"conn_type": "loyalty", "host": api.url, "password": token, "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        hook = LoyaltyHook()
        with pytest.raises(LoyaltyError) as caught:
            hook.get_task_status("task_1")
        ok, message = hook.test_connection()
        hook.close()
    assert ok is (where == "field")  # error 0 is the call accepted, whatever its data holds
    assert {"location": "redirects", "page": "HTML page", "field": "'data.result.total'"}[where] in str(caught.value)
    first_word = token.split()[0][:4]
    for text in [*exception_texts(caught.value), message]:
        assert first_word not in text, f"a piece of the token in: {text[:400]}"


def _not_http(handler, _server) -> None:
    """A port that is no HTTP server: its status line cannot be read."""
    handler.wfile.write(b"HTTP/1.1 abc\r\n\r\n")
    handler.wfile.flush()
    handler.close_connection = True


def test_a_reply_no_library_can_read_leaves_no_token_in_the_error_chain(monkeypatch) -> None:
    """aiohttp's error for an unreadable reply keeps the request's headers (``request_info``), the
    token among them; it rode along as the ``__context__`` of the async hook's error (``raise ...
    from None`` hides a context from tracebacks, not from whatever walks the chain or reprs it)."""
    import asyncio

    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
    from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook

    with loopback_server(_not_http) as api:
        connection = {"conn_type": "loyalty", "host": api.url, "password": TOKEN, "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        with pytest.raises(LoyaltyError) as sync_error:
            LoyaltyHook().get_task_status("task_1")

        async def scenario() -> BaseException:
            with pytest.raises(LoyaltyError) as caught:
                async with LoyaltyAsyncHook() as hook:
                    await hook.get_task_status("task_1")
            return caught.value

        async_error = asyncio.run(scenario())
    for error in (sync_error.value, async_error):
        assert "HTTP reply" in str(error)
        assert leaks(TOKEN, exception_texts(error)) == []
