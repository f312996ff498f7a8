"""The console in a real browser: Playwright driving Debian's headless Chromium against
``herald serve`` on a loopback port, with its worker delivering to a webhook sink whose answers
the test switches.

One browser and one server for the module. With ``HERALD_CONSOLE_SCREENSHOTS=DIR`` set, the
pages are also saved as PNG files in ``DIR`` (``make console-screenshots`` writes them to
docs/console/).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.store.migrate import upgrade
from tests.ops.support import free_port, need_tool, wait_until
from tests.support.processes import HERALD

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect
expect.set_options(timeout=15_000)  # a live refresh every 2 s, on a machine that may be busy

ADMIN = "sk-browser-admin-0123456789abcdef0123"
APP = "sk-browser-app-0123456789abcdef012345"
VIEWER = "sk-browser-view-0123456789abcdef01234"
SCRIPT = "<script>window.__xss = 'script'</script>"
ONERROR = "<img src=x onerror=\"window.__xss = 'onerror'\">"
LATER = "2099-01-01T00:00:00Z"
SHOTS = os.environ.get("HERALD_CONSOLE_SCREENSHOTS")


class Sink(BaseHTTPRequestHandler):
    """The webhook's receiver: answers ``status`` (switched by the tests)."""

    status = 500

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(type(self).status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Herald:
    def __init__(self, base: str, sink: type[Sink]) -> None:
        self.base = base
        self.sink = sink
        self.http = httpx.Client(base_url=base, timeout=10)

    def send(self, key: str = ADMIN, **body: Any) -> str:
        response = self.http.post(
            "/v1/notifications", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 202, response.text
        notification_id: str = response.json()["id"]
        return notification_id

    def get(self, notification_id: str) -> dict[str, Any]:
        response = self.http.get(
            f"/v1/notifications/{notification_id}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        body: dict[str, Any] = response.json()
        return body

    def attempts(self, notification_id: str) -> list[dict[str, Any]]:
        response = self.http.get(
            f"/v1/notifications/{notification_id}/attempts",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def wait_status(self, notification_id: str, status: str) -> None:
        wait_until(
            f"{notification_id} {status}", lambda: self.get(notification_id)["status"] == status
        )


@pytest.fixture(scope="module")
def herald(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herald]:
    need_tool("chromium", "apt-get install chromium")
    home = tmp_path_factory.mktemp("console")
    url = f"sqlite+aiosqlite:///{home / 'herald.db'}"
    upgrade(url)
    sink_class = type("ModuleSink", (Sink,), {"status": 500})
    sink = ThreadingHTTPServer(("127.0.0.1", 0), sink_class)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    config = {
        "network": {"allow_private_addresses": True},
        "auth": {
            "api_keys": [
                {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
                {"name": "app", "key": APP, "scopes": ["send", "read"]},
                {"name": "viewer", "key": VIEWER, "scopes": ["read"]},
            ]
        },
        "channels": {
            "console": {"type": "log"},
            "hook": {
                "type": "webhook",
                "url": f"http://127.0.0.1:{sink.server_port}/hook",
                "rate_limit": "30/s",
            },
        },
        "routes": {
            "default": {"channels": ["console"]},
            "flaky": {"channels": ["hook"], "retry": {"schedule": []}},
            "paging": {"channels": ["hook", "console"], "retry": {"schedule": []}},
        },
    }
    (home / "herald.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": url,
        "HERALD_CONFIG": str(home / "herald.yaml"),
        "HERALD_POLL_INTERVAL": "100ms",
        "HERALD_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [HERALD, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("herald serve", lambda: _ready(base) or process.poll() is not None, within=60)
        assert process.poll() is None, (home / "serve.log").read_text()
        yield Herald(base, sink_class)
    finally:
        process.terminate()
        process.wait(timeout=20)
        sink.shutdown()


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_tool("chromium", "apt-get install chromium")
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


def shoot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def sign_in(page: Any, base: str, key: str) -> None:
    page.goto(base + "/console")
    expect(page).to_have_url(base + "/console/sign-in?next=%2Fconsole")
    shoot(page, "sign-in")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base + "/console")


def test_an_operator_follows_retries_cancels_filters_and_signs_out(
    herald: Herald, page: Any
) -> None:
    base = herald.base
    sign_in(page, base, ADMIN)
    expect(page.get_by_role("heading", name="Activity")).to_be_visible()

    # A notification sent now shows up without a reload.
    fresh = herald.send(subject="db-1 is down", text="disk full", severity="critical")
    row = page.locator(f'tr[data-id="{fresh}"]')
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("delivered")

    # Its page: the hop timeline is the API's attempts.
    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name="db-1 is down")).to_be_visible()
    shown = page.locator("li.attempt")
    attempts = herald.attempts(fresh)
    expect(shown).to_have_count(len(attempts))
    assert [shown.nth(i).get_attribute("data-attempt-id") for i in range(len(attempts))] == [
        a["id"] for a in attempts
    ]
    assert [shown.nth(i).get_attribute("data-outcome") for i in range(len(attempts))] == [
        a["outcome"] for a in attempts
    ]

    # A failed one, retried from its page, delivers while the page watches.
    herald.sink.status = 500
    failed = herald.send(route="flaky", subject="payments 5xx", text="t", metadata={"run": 1})
    herald.wait_status(failed, "failed")
    page.goto(f"{base}/console/notifications/{failed}")
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("li.attempt .code").first).to_have_text("transient · http_500")
    herald.sink.status = 200
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_have_text("Queued again for delivery.")
    expect(page.locator("#status")).to_have_text("delivered")
    expect(page.locator("li.attempt")).to_have_count(2)
    assert [a["outcome"] for a in herald.attempts(failed)] == ["failed", "delivered"]

    # A fallback: the hook fails, the next hop delivers; both hops in the timeline.
    herald.sink.status = 503
    fallback = herald.send(route="paging", subject="db-1 replication lag", text="lag 40 s")
    herald.wait_status(fallback, "delivered")
    page.goto(f"{base}/console/notifications/{fallback}")
    expect(page.locator("li.attempt")).to_have_count(2)
    shoot(page, "notification")

    # A scheduled one, cancelled.
    later = herald.send(subject="maintenance tonight", text="t", send_at=LATER)
    page.goto(f"{base}/console/notifications/{later}")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("cancelled")
    assert herald.get(later)["status"] == "cancelled"

    # Filter: cancelled ones only.
    page.goto(base + "/console")
    page.get_by_label("Status", exact=True).select_option("cancelled")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/console\?status=cancelled&"))
    expect(page.locator("tbody#rows tr[data-id]")).to_have_count(1)
    expect(page.locator(f'tr[data-id="{later}"]')).to_be_visible()
    page.get_by_label("Subject contains").fill("nothing like this")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody#rows")).to_contain_text("No notification matches.")

    if SHOTS:
        page.goto(base + "/console")
        expect(page.locator("tbody#rows tr[data-id]").first).to_be_visible()
        shoot(page, "activity")
        for name in ("channels", "routes", "send"):
            page.goto(f"{base}/console/{name}")
            shoot(page, name)
        page.set_viewport_size({"width": 390, "height": 844})
        page.emulate_media(color_scheme="dark")
        page.goto(base + "/console")
        shoot(page, "activity-phone-dark")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(base + "/console/sign-in")
    page.goto(base + "/console/channels")
    expect(page).to_have_url(base + "/console/sign-in?next=%2Fconsole%2Fchannels")


def test_script_and_onerror_payloads_render_as_text(herald: Herald, page: Any) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    hostile = herald.send(subject=SCRIPT, text=ONERROR, metadata={"x": ONERROR}, source=SCRIPT)
    sign_in(page, herald.base, ADMIN)
    expect(page.locator(f'tr[data-id="{hostile}"] a')).to_have_text(SCRIPT)
    page.goto(f"{herald.base}/console/notifications/{hostile}")
    expect(page.locator("h1.subject")).to_have_text(SCRIPT)
    expect(page.locator("pre.body")).to_have_text(ONERROR)
    page.wait_for_timeout(2500)  # a live refresh swaps the timeline in once
    assert page.evaluate("window.__xss") is None
    assert page.locator("main script, main img").count() == 0
    assert dialogs == []


def test_a_key_without_admin_sees_no_action_and_a_forged_post_is_refused(
    herald: Herald, page: Any
) -> None:
    herald.sink.status = 500
    own = herald.send(APP, route="flaky", subject="app's failure", text="t")
    others = herald.send(subject="ops only", text="t")
    herald.wait_status(own, "failed")
    sign_in(page, herald.base, APP)
    expect(page.locator(f'tr[data-id="{own}"]')).to_be_visible()
    expect(page.locator(f'tr[data-id="{others}"]')).to_have_count(0)
    page.goto(f"{herald.base}/console/notifications/{own}")
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator(".actions")).to_have_count(0)
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    forged = page.evaluate(
        """async (id) => {
            const body = new URLSearchParams({csrf: "forged"});
            const r = await fetch(`/console/notifications/${id}/retry`, {method: "POST", body});
            return r.status;
        }""",
        own,
    )
    assert forged == 403
    page.goto(f"{herald.base}/console/notifications/{others}")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert herald.get(own)["status"] == "failed"
