"""The ``loyalty`` connection type in the real Airflow UI, driven by headless Chromium.

Runs on Airflow 3.3 (``make test``) and 3.1 (``make test-min``), the two ways a form is built:
3.2 and newer read ``conn-fields`` / ``ui-field-behaviour`` from the provider info; 3.1 calls the
hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour`` (wtforms fields it converts to
the same JSON schema). Both UIs look and behave alike, and this test holds them to the same form.

What the React UI really shows (and what is asserted here):

* Admin -> Connections -> "Add Connection" opens a dialog: Connection ID, Connection Type (a
  searchable select), then three accordion sections, one open at a time: "Standard Fields"
  (open first: Description + the non-hidden standard fields, with our labels and placeholders),
  "Extra Fields" (our four fields, rendered from their JSON schema: a select for the enum,
  number inputs with their defaults, a switch for the boolean, each with its description) and
  "Extra Fields JSON". Airflow 3.1 always lands on the home page after a full page load, so the
  test gets to the connections list as a user does, through the Admin menu.
* The dialog has no Test button. "Test Connection" is a per-row action of the connections list,
  so the flow is: fill -> Save -> Test in the row. The api-server runs the test with the stored
  connection (it merges the redacted password back in) and shows a toast: title "Test Connection
  Successful" / "Test Connection Failed", description = the message of ``LoyaltyHook.test_connection``.
* Airflow 3.3.1-3.3.2 answer that Test with 400 "Bad Request" for any connection without a port
  (the UI posts ``port: 0``; apache/airflow#73298). :class:`~tests.browser.support.PortlessTestShim`
  re-sends such a request with ``port: null`` (only after that exact 400), so the test still proves
  the stored connection and ``LoyaltyHook.test_connection`` behind the real button and toast.

Set ``UPDATE_SCREENSHOTS=1`` to (re)write ``docs/img/connection-form.png`` (``make screenshots``,
Airflow 3.3): the dialog with its standard fields filled in, next to the same dialog with the extra
fields at their defaults. Otherwise the picture goes to the test's temp directory, so a test run
leaves the work tree untouched.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.testing import LoyaltyEmulator
from airflow_provider_loyalty.utils.connection_form import CONN_FIELDS
from tests.browser.support import PortlessTestShim, diagnostics, side_by_side
from tests.e2e.airflow_cluster import AirflowCluster

# The first run may have to apt-get install Chromium inside the session fixture.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "img" / "connection-form.png"

CUSTOM_FIELDS = {  # label -> helper text start, as declared in utils.connection_form.CONN_FIELDS
    "Content type": "Body format of requests: json or xml.",
    "Timeout (seconds)": "Connect and read timeout of every request.",
    "Verify TLS certificate": "Keep on in production.",
    "Max retries": "Retries of 429, 5xx, timeouts and connection resets",
}
TIMEOUT_MS = 30_000
FIRST_RENDER_MS = 120_000  # a busy 2-core machine parses the UI's JavaScript slowly


def rest_connection(cluster: AirflowCluster, conn_id: str) -> dict[str, Any]:
    """The stored connection as the public REST API returns it.

    With ``simple_auth_manager_all_admins`` Airflow 3.3 lets an unauthenticated request in; 3.1
    wants a bearer token, which ``GET /auth/token`` hands out without credentials in that mode.
    """
    with urllib.request.urlopen(f"{cluster.api_url}/auth/token", timeout=10) as reply:  # noqa: S310 - loopback http
        token = json.load(reply)["access_token"]
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{cluster.api_url}/api/v2/connections/{urllib.parse.quote(conn_id)}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback http
        data: dict[str, Any] = json.load(reply)
    return data


def open_connections_list(page: Any, cluster: AirflowCluster) -> None:
    """Home, then Admin -> Connections, as a user clicks (3.1 sends every full page load home)."""
    from playwright.sync_api import expect

    page.goto(f"{cluster.api_url}/", wait_until="networkidle")
    admin = page.get_by_role("button", name="Admin")
    # After a full page load: the login redirect, then the first render of the UI's bundle.
    expect(admin).to_be_visible(timeout=FIRST_RENDER_MS)
    admin.click()
    page.get_by_role("menuitem", name="Connections").click()
    page.wait_for_url("**/connections")


def open_add_form(page: Any, cluster: AirflowCluster, conn_id: str) -> Any:
    """Open Add Connection, type the id and choose the "Loyalty" type; return the dialog."""
    open_connections_list(page, cluster)
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Connection ID").fill(conn_id)
    dialog.get_by_role("combobox").first.fill("Loyal")
    page.get_by_role("option", name="Loyalty", exact=True).click()
    return dialog


def fill_standard_fields(dialog: Any, base_url: str, token: str) -> None:
    """Base URL and API token (the "Standard Fields" section is open after choosing the type)."""
    dialog.get_by_label("Base URL").fill(base_url)
    dialog.get_by_label("API token").fill(token)


def fill_and_confirm(section: Any, values: dict[str, str], deadline_s: float = 30.0) -> None:
    """Fill each labelled field, then confirm every one still holds its value, filling again until
    all do or the deadline passes.

    The form may re-render from its own state just after a choice elsewhere (the content type's
    list closing): a value typed in that moment was seen replaced by the field's default (Airflow
    3.1, CI of 2026-12-04). Checking all fields together after the last fill catches that.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        for label, value in values.items():
            section.get_by_label(label).fill(value)
        held = {label: section.get_by_label(label).input_value() for label in values}
        if held == values:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the form did not keep the values typed: {held} (typed {values})")


def save_and_test(page: Any, dialog: Any, conn_id: str) -> None:
    """Save the dialog, then press the "Test Connection" action of the connection's row."""
    from playwright.sync_api import expect

    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=conn_id, exact=True))
    expect(row).to_have_count(1)
    expect(row.get_by_role("cell", name="loyalty", exact=True)).to_be_visible()
    row.get_by_role("button", name="Test Connection").click()


def expect_toast(page: Any, title: str, description_start: str) -> None:
    """A toast with ``title`` whose description starts with ``description_start``, in one check.

    Title and description are matched together because a toast disappears after a few seconds: two
    separate waits on a busy machine may see the title and then miss the description.
    """
    from playwright.sync_api import expect

    notifications = page.get_by_role("region", name=re.compile("Notifications"))
    expect(notifications).to_contain_text(
        re.compile(rf"{re.escape(title)}\s*{re.escape(description_start)}"), timeout=TIMEOUT_MS
    )


@pytest.fixture
def page(browser_context: Any, airflow_api: AirflowCluster) -> Iterator[Any]:
    """A fresh tab (no toasts left over from another test); generous timeouts for a busy 2-core box."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    tab = browser_context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    try:
        yield tab
    finally:
        tab.close()


@pytest.fixture
def port_shim(page: Any) -> PortlessTestShim:
    """Work around Airflow 3.3.1-3.3.2 rejecting Test of a port-less connection (see support.py)."""
    return PortlessTestShim().install(page)


def test_add_loyalty_connection_test_and_save(
    page: Any,
    port_shim: PortlessTestShim,
    airflow_api: AirflowCluster,
    emulator: LoyaltyEmulator,
    browser_context: Any,
    tmp_path: Path,
) -> None:
    import airflow
    from playwright.sync_api import expect

    print(f"Airflow {airflow.__version__}")
    conn_id = "loyalty_ui"
    with diagnostics(page, airflow_api, tmp_path):
        dialog = open_add_form(page, airflow_api, conn_id)

        # Standard fields: host relabelled "Base URL", password "API token"; login/schema/port hidden.
        standard = dialog.get_by_role("region", name="Standard Fields")
        expect(standard).to_be_visible()
        base_url = standard.get_by_label("Base URL")
        token = standard.get_by_label("API token")
        expect(base_url).to_have_attribute("name", "host")
        expect(base_url).to_have_attribute("placeholder", "https://example.com")
        expect(token).to_have_attribute("name", "password")
        expect(token).to_have_attribute("type", "password")
        for hidden in ("login", "schema", "port"):
            expect(dialog.locator(f"[name={hidden}]")).to_have_count(0)
        for label in ("Host", "Password", "Login", "Schema", "Port"):
            expect(dialog.locator("label", has_text=re.compile(rf"^\s*{label}\s*$"))).to_have_count(0)
        fill_standard_fields(dialog, emulator.url, emulator.token)
        dialog.get_by_role("heading", name="Add Connection").click()  # blur: no focus ring in the picture
        pictures = [dialog.screenshot()]

        # Extra fields: our four fields, with their labels, descriptions and defaults.
        dialog.get_by_role("button", name="Extra Fields", exact=True).click()
        # (The section's aria-labelledby id contains a space, so the region has no accessible name.)
        extra = dialog.get_by_role("region").filter(has_text="Max retries")
        expect(extra).to_be_visible()
        for label, description in CUSTOM_FIELDS.items():
            expect(extra.locator("label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))).to_have_count(1)
            expect(extra.get_by_text(description)).to_be_visible()
        expect(extra.get_by_label("Timeout (seconds)")).to_have_value("60")
        expect(extra.get_by_label("Max retries")).to_have_value("5")
        expect(extra.get_by_label("Verify TLS certificate")).to_be_checked()
        pictures.append(dialog.screenshot())
        shot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "connection-form.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        side_by_side(browser_context, pictures, shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        extra.get_by_role("combobox", name="Content type").click()
        # One option per enum value; the None that lets the field be cleared is shown as "null".
        enum = CONN_FIELDS["content_type"]["schema"]["enum"]
        expect(page.get_by_role("option")).to_have_text(["null" if value is None else value for value in enum])
        page.get_by_role("option", name="json", exact=True).click()
        expect(page.get_by_role("option")).to_have_count(0)  # the list closed: the form took the choice
        fill_and_confirm(extra, {"Timeout (seconds)": "30", "Max retries": "2"})

        save_and_test(page, dialog, conn_id)
        expect_toast(page, "Test Connection Successful", "Connection successful: the API accepted the token")
        if port_shim.rewrites:
            print("Airflow rejected Test of a port-less connection (port: 0); re-sent with port: null")

        stored = rest_connection(airflow_api, conn_id)
        assert stored["conn_type"] == "loyalty"
        assert stored["host"] == emulator.url
        assert stored["password"] == "***"  # stored (redacted in the API); the Test above proved it is the token
        assert stored["login"] is None and stored["schema"] is None and stored["port"] is None
        assert json.loads(stored["extra"]) == {
            "content_type": "json",
            "timeout": 30,
            "verify_ssl": True,
            "max_retries": 2,
        }


def test_wrong_token_fails_the_test_button(
    page: Any, port_shim: PortlessTestShim, airflow_api: AirflowCluster, emulator: LoyaltyEmulator, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    conn_id = "loyalty_ui_wrong_token"
    with diagnostics(page, airflow_api, tmp_path):
        dialog = open_add_form(page, airflow_api, conn_id)
        fill_standard_fields(dialog, emulator.url, "not-the-token")
        save_and_test(page, dialog, conn_id)
        expect_toast(page, "Test Connection Failed", "The API refused the token")
        expect(page.get_by_text("Connection successful")).to_have_count(0)
        assert "not-the-token" not in page.inner_text("body")
        assert rest_connection(airflow_api, conn_id)["conn_type"] == "loyalty"
