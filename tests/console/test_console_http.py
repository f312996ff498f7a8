"""The console without a browser: sign-in, sessions, CSRF, scopes and tenancy, escaping, the
bulk actions and ``POST /v1/notifications/retry`` (tests/console/test_browser.py drives it in
Chromium)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.console import sessions as console_sessions
from app.console import views
from app.domain import NotificationStatus
from tests.api.conftest import BASIC_CONFIG
from tests.support.events import subscription
from tests.support.harness import Harness, herald
from tests.support.http_server import serve_http

ADMIN = "sk-console-admin-0123456789abcdef01234"
READER = "sk-console-read-0123456789abcdef012345"
SENDER = "sk-console-send-0123456789abcdef012345"
TELEGRAM_TOKEN = "123456:AAF-secret-telegram-token-0123456789"
KEYS: list[dict[str, Any]] = [
    {"name": "ops", "key": ADMIN, "scopes": ["admin"]},
    {"name": "viewer", "key": READER, "scopes": ["read"]},
    {"name": "app", "key": SENDER, "scopes": ["send", "read"]},
]
CONFIG: dict[str, Any] = {
    **BASIC_CONFIG,
    "auth": {"api_keys": KEYS},
    "channels": {
        **BASIC_CONFIG["channels"],
        "tg": {"type": "telegram", "token": TELEGRAM_TOKEN, "enabled": False},
    },
    "routes": {
        **BASIC_CONFIG["routes"],
        "hooks_once": {"channels": ["hooks"], "retry": {"schedule": []}},
        "dead_end": {"channels": ["hooks", "tg"], "retry": {"schedule": []}},
    },
}
SCRIPT = "<script>alert('xss')</script>"
ONERROR = '<img src=x onerror="alert(1)">'


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    async with herald(db_url, CONFIG) as harness:
        yield harness


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/console/sign-in")
    return await client.post(
        "/console/sign-in", data={"csrf": csrf_of(form), "api_key": key, "next": "/console"}
    )


async def send(h: Harness, key: str, **body: Any) -> str:
    response = await h.client.post("/v1/notifications", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def stored_of(h: Harness, notification_id: str) -> dict[str, Any]:
    response = await h.client.get(f"/v1/notifications/{notification_id}", headers=bearer(ADMIN))
    assert response.status_code == 200, response.text
    stored: dict[str, Any] = response.json()
    return stored


async def status_of(h: Harness, notification_id: str) -> str:
    status: str = (await stored_of(h, notification_id))["status"]
    return status


async def test_without_a_session_every_page_redirects_to_the_sign_in(h: Harness) -> None:
    for path in ("/console", "/console/channels", "/console/routes", "/console/live"):
        response = await h.client.get(path + "?status=failed")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/sign-in?next=%2Fconsole")
    forged = await h.client.post("/console/bulk/retry", data={"csrf": "x"})
    assert forged.status_code == 303


async def test_signing_in_sets_a_strict_http_only_cookie_and_signing_out_ends_it(
    h: Harness,
) -> None:
    response = await sign_in(h.client, ADMIN)
    assert response.status_code == 303
    assert response.headers["location"] == "/console"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("herald_console=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP
    assert ADMIN not in cookie
    page = await h.client.get("/console")
    assert page.status_code == 200 and "signed in as <strong>ops</strong>" in page.text
    token = h.client.cookies["herald_console"]
    out = await h.client.post("/console/sign-out", data={"csrf": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
    h.client.cookies.set("herald_console", token, path="/console")  # replaying the old cookie
    assert (await h.client.get("/console")).status_code == 303


async def test_over_https_the_cookie_is_secure(h: Harness) -> None:
    transport = h.client._transport
    async with httpx.AsyncClient(transport=transport, base_url="https://herald.test") as client:
        response = await sign_in(client, READER)
    cookies = response.headers.get_list("set-cookie")
    assert any(c.startswith("herald_console=") and "Secure" in c for c in cookies), cookies


async def test_a_wrong_key_gets_one_message_and_the_attempts_are_limited(h: Harness) -> None:
    form = await h.client.get("/console/sign-in")
    token = csrf_of(form)
    answers = []
    for key in ("sk-wrong", SENDER[:-1], ""):
        answers.append(
            await h.client.post("/console/sign-in", data={"csrf": token, "api_key": key})
        )
    assert {a.status_code for a in answers} == {401}
    messages = {re.search(r'role="alert">([^<]*)<', a.text).group(1) for a in answers}  # type: ignore[union-attr]
    assert messages == {"Sign-in failed: that key cannot open the console."}
    assert "herald_console=" not in "".join(answers[1].headers.get_list("set-cookie"))
    limit = console_sessions.SIGN_IN_RATE[0]
    for _ in range(limit - len(answers)):
        await h.client.post("/console/sign-in", data={"csrf": token, "api_key": "nope"})
    refused = await h.client.post("/console/sign-in", data={"csrf": token, "api_key": ADMIN})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "Too many sign-in attempts" in refused.text
    elsewhere = httpx.ASGITransport(app=h.client._transport.app, client=("192.0.2.7", 4000))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=elsewhere, base_url="http://herald.test") as other:
        assert (await sign_in(other, ADMIN)).status_code == 303  # another address is not held


async def test_a_send_only_key_cannot_sign_in(h: Harness) -> None:
    raw = {
        **CONFIG,
        "auth": {"api_keys": [*KEYS, {"name": "s", "key": "x" * 32, "scopes": ["send"]}]},
    }
    async with herald(h.runtime.settings.database_url, raw) as other:
        response = await sign_in(other.client, "x" * 32)
    assert response.status_code == 401


async def test_forms_without_the_right_csrf_token_are_refused(h: Harness) -> None:
    no_token = await h.client.post("/console/sign-in", data={"api_key": ADMIN})
    assert no_token.status_code == 403
    await sign_in(h.client, ADMIN)
    notification_id = await send(h, ADMIN, subject="s", text="t", send_at="2099-01-01T00:00:00Z")
    for data in ({}, {"csrf": "0" * 64}):
        for path in (
            f"/console/notifications/{notification_id}/cancel",
            "/console/bulk/cancel",
            "/console/send",
            "/console/sign-out",
        ):
            response = await h.client.post(path, data=data)
            assert response.status_code == 403, path
    assert await status_of(h, notification_id) == NotificationStatus.PENDING


async def test_cancel_and_retry_from_the_page_use_the_api_rules(h: Harness) -> None:
    await sign_in(h.client, ADMIN)
    later = await send(h, ADMIN, subject="later", text="t", send_at="2099-01-01T00:00:00Z")
    page = await h.client.get(f"/console/notifications/{later}")
    assert 'data-action="cancel"' in page.text and 'data-action="retry"' not in page.text
    done = await h.client.post(
        f"/console/notifications/{later}/cancel", data={"csrf": csrf_of(page)}
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/console/notifications/{later}?done=cancelled"
    assert await status_of(h, later) == NotificationStatus.CANCELLED
    again = await h.client.post(
        f"/console/notifications/{later}/cancel", data={"csrf": csrf_of(page)}
    )
    assert again.status_code == 409 and "cannot cancel a notification that is cancelled" in (
        again.text
    )


async def test_a_read_key_sees_only_its_own_and_no_action(h: Harness) -> None:
    theirs = await send(h, ADMIN, subject="admin's own", text="t")
    mine = await send(h, SENDER, subject="app's own", text="t", send_at="2099-01-01T00:00:00Z")
    await sign_in(h.client, SENDER)  # send + read: may acknowledge its own, not cancel
    activity = await h.client.get("/console")
    assert "app&#39;s own" in activity.text and "admin&#39;s own" not in activity.text
    assert (await h.client.get(f"/console/notifications/{theirs}")).status_code == 404
    assert (await h.client.get(f"/console/notifications/{theirs}/live")).status_code == 404
    page = await h.client.get(f"/console/notifications/{mine}")
    assert 'data-action="cancel"' not in page.text and 'data-action="ack"' in page.text
    assert "Bulk actions" not in activity.text
    token = csrf_of(page)
    refused = await h.client.post(f"/console/notifications/{mine}/cancel", data={"csrf": token})
    assert refused.status_code == 403
    other = await h.client.post(f"/console/notifications/{theirs}/ack", data={"csrf": token})
    assert other.status_code == 404
    assert (await h.client.post("/console/bulk/cancel", data={"csrf": token})).status_code == 403
    assert (await h.client.get("/console/send")).status_code == 403
    assert await status_of(h, mine) == NotificationStatus.PENDING


async def test_html_and_script_render_as_text_everywhere(h: Harness) -> None:
    async with serve_http() as sink:
        # The channel's error message quotes the Location it did not follow.
        moved = {"content-type": "text/html", "location": f"https://x.example/{SCRIPT}{ONERROR}"}
        sink.script("/hook", (302, moved, f"{SCRIPT}{ONERROR}"))
        notification_id = await send(
            h,
            ADMIN,
            route="hooks_once",
            subject=SCRIPT,
            text=ONERROR,
            html=SCRIPT,
            source=ONERROR,
            metadata={SCRIPT: ONERROR},
            recipient={"webhook_url": sink.url("/hook")},
        )
        await h.run_worker()
    assert await status_of(h, notification_id) == NotificationStatus.FAILED
    await sign_in(h.client, ADMIN)
    pages = [
        await h.client.get("/console"),
        await h.client.get(f"/console/notifications/{notification_id}"),
        await h.client.get("/console/channels"),
    ]
    live = await h.client.get("/console/live")
    pieces = [*(p.text for p in pages), *live.json().values()]
    timeline = await h.client.get(f"/console/notifications/{notification_id}/live")
    pieces.append(timeline.json()["timeline"])
    for text in pieces:
        assert "<script>alert" not in text and "<img" not in text, text
    assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in pages[1].text
    assert "onerror=&#34;alert(1)&#34;" in pages[1].text
    assert "redirect to &#39;https://x.example/&lt;script&gt;alert(" in pages[2].text
    assert "script-src 'self'" in pages[1].headers["content-security-policy"]


async def test_the_console_never_shows_a_channel_secret_and_masks_addresses(h: Harness) -> None:
    notification_id = await send(
        h,
        ADMIN,
        subject="s",
        text="t",
        recipient={
            "webhook_url": "https://user:pw@hooks.example.com/T000/B000/XXXXsecret?token=abc",
            "phone": "+14155550123",
        },
        send_at="2099-01-01T00:00:00Z",
    )
    await sign_in(h.client, ADMIN)
    channels = await h.client.get("/console/channels")
    assert channels.status_code == 200
    assert "AAF-secret" not in channels.text and "tg" in channels.text
    page = await h.client.get(f"/console/notifications/{notification_id}")
    assert "XXXXsecret" not in page.text and "token=abc" not in page.text
    assert "pw@" not in page.text and "https://hooks.example.com/***" in page.text
    assert "55550123" not in page.text and "+14" in page.text


async def test_filters_counts_and_paging(h: Harness) -> None:
    for index in range(3):
        await send(h, ADMIN, subject=f"disk full on db-{index}", text="t", severity="critical")
    await send(h, SENDER, subject="Weekly report", text="t", route="alerts")
    await h.run_worker()
    await sign_in(h.client, ADMIN)
    page = await h.client.get("/console?q=DISK&severity=critical")
    assert page.text.count('<tr data-id="') == 3
    assert re.search(r"delivered <span class=\"n\">3</span>", page.text)
    assert "Weekly report" not in page.text
    by_route = await h.client.get("/console?route=alerts&owner=app")
    assert by_route.text.count('<tr data-id="') == 1 and "Weekly report" in by_route.text
    bad = await h.client.get("/console?status=bogus&after=yesterday")
    assert bad.status_code == 422 and "status: unknown value" in bad.text
    first = await h.client.get("/console?q=disk")
    older = re.search(r'href="([^"]+cursor=[^"]+)" rel="next"', first.text)
    assert older is None  # one page of three
    live = await h.client.get("/console/live?q=disk")
    assert live.json()["rows"].count('<tr data-id="') == 3


async def test_bulk_retry_and_cancel_act_on_what_the_filter_matches(h: Harness) -> None:
    async with serve_http() as sink:
        sink.script("/hook", *[(500, {}, "down")] * 3)
        failed = [
            await send(
                h,
                ADMIN,
                route="hooks_once",
                subject=f"f{i}",
                text="t",
                recipient={"webhook_url": sink.url("/hook")},
            )
            for i in range(3)
        ]
        await h.run_worker()
    pending = await send(h, ADMIN, subject="p", text="t", send_at="2099-01-01T00:00:00Z")
    assert {await status_of(h, i) for i in failed} == {NotificationStatus.FAILED}
    await sign_in(h.client, ADMIN)
    page = await h.client.get("/console?route=hooks_once")
    token = csrf_of(page)
    result = await h.client.post("/console/bulk/retry", data={"csrf": token, "route": "hooks_once"})
    assert result.status_code == 200
    assert re.search(r"Retried 3; skipped 0", result.text)
    assert {await status_of(h, i) for i in failed} == {NotificationStatus.PENDING}
    cancelled = await h.client.post(
        "/console/bulk/cancel", data={"csrf": token, "q": "p", "status": "pending"}
    )
    assert "Cancelled 1;" in cancelled.text
    assert await status_of(h, pending) == NotificationStatus.CANCELLED


async def test_post_retry_retries_what_the_list_filters_match(h: Harness) -> None:
    async with serve_http() as sink:
        sink.script("/hook", *[(500, {}, "down")] * 3)
        for i in range(3):
            await send(
                h,
                ADMIN,
                route="hooks_once",
                subject=f"f{i}",
                text="t",
                recipient={"webhook_url": sink.url("/hook")},
            )
        await h.run_worker()
    refused = await h.client.post("/v1/notifications/retry", headers=bearer(READER))
    assert refused.status_code == 403
    other = await h.client.post("/v1/notifications/retry?route=alerts", headers=bearer(ADMIN))
    assert other.json() == {"retried": 0, "skipped": 0, "truncated": False}
    capped = await h.client.post(
        "/v1/notifications/retry?route=hooks_once&status=failed&limit=2", headers=bearer(ADMIN)
    )
    assert capped.json() == {"retried": 2, "skipped": 0, "truncated": True}
    rest = await h.client.post("/v1/notifications/retry", headers=bearer(ADMIN))
    assert rest.json() == {"retried": 1, "skipped": 0, "truncated": False}
    bad = await h.client.post("/v1/notifications/retry?limit=5000", headers=bearer(ADMIN))
    assert bad.status_code == 422


async def test_send_a_test_notification(h: Harness) -> None:
    await sign_in(h.client, ADMIN)
    form = await h.client.get("/console/send")
    token = csrf_of(form)
    sent = await h.client.post(
        "/console/send",
        data={
            "csrf": token,
            "route": "alerts",
            "subject": "hello",
            "text": "t",
            "severity": "warning",
        },
    )
    assert sent.status_code == 303
    notification_id = sent.headers["location"].split("/")[-1].split("?")[0]
    stored = await stored_of(h, notification_id)
    assert stored["route"] == "alerts" and stored["severity"] == "warning"
    assert stored["source"] == "console"
    bad = await h.client.post(
        "/console/send",
        data={"csrf": token, "route": "alerts", "subject": "s", "text": "", "phone": "12"},
    )
    assert bad.status_code == 422 and 'role="alert"' in bad.text


async def test_channels_and_routes_pages_count_the_last_day(h: Harness) -> None:
    for _ in range(2):
        await send(h, ADMIN, subject="s", text="t", route="alerts")
    await h.run_worker()
    await sign_in(h.client, ADMIN)
    channels = await h.client.get("/console/channels")
    assert "delivered 2" in channels.text and 'class="b-ok"' in channels.text
    routes = await h.client.get("/console/routes")
    assert re.search(r"alerts</a>.*?<td>2</td>\s*<td>100%</td>", routes.text, re.S)


async def test_with_auth_off_the_console_is_open_with_a_banner(db_url: str) -> None:
    async with herald(db_url, BASIC_CONFIG) as h:
        notification_id = (await h.send(subject="s", text="t", send_at="2099-01-01T00:00:00Z"))[
            "id"
        ]
        page = await h.client.get(f"/console/notifications/{notification_id}")
        assert page.status_code == 200 and "Authentication is off" in page.text
        assert (await h.client.get("/console/sign-in")).status_code == 303
        forged = await h.client.post(
            f"/console/notifications/{notification_id}/cancel", data={"csrf": "x"}
        )
        assert forged.status_code == 403
        done = await h.client.post(
            f"/console/notifications/{notification_id}/cancel", data={"csrf": csrf_of(page)}
        )
        assert done.status_code == 303
        assert await status_of(h, notification_id) == NotificationStatus.CANCELLED


async def test_the_console_can_be_turned_off(db_url: str) -> None:
    async with herald(db_url, {**CONFIG, "server": {"console": False}}) as h:
        assert (await h.client.get("/console")).status_code == 404
        assert (await h.client.get("/console/sign-in")).status_code == 404
        assert (await h.client.get("/v1/routes", headers=bearer(ADMIN))).status_code == 200


async def test_replay_from_a_hop_skips_the_hops_before_it(h: Harness) -> None:
    async with serve_http() as sink:
        sink.script("/hook", (500, {}, "down"))
        notification_id = await send(
            h,
            ADMIN,
            route="dead_end",
            subject="s",
            text="t",
            recipient={"webhook_url": sink.url("/hook")},
        )
        await h.run_worker()
        assert await status_of(h, notification_id) == NotificationStatus.FAILED
        url = f"/v1/notifications/{notification_id}/retry"
        too_far = await h.client.post(url + "?from_hop=2", headers=bearer(ADMIN))
        assert too_far.status_code == 422 and "the chain has 2 hops" in too_far.text
        replayed = await h.client.post(url + "?from_hop=1", headers=bearer(ADMIN))
        assert replayed.status_code == 200, replayed.text
        assert [hop["state"] for hop in replayed.json()["hops"]] == ["failed", "pending"]
        await h.run_worker()
        assert len(sink.requests_to("/hook")) == 1  # the hook was not tried again
        assert await status_of(h, notification_id) == NotificationStatus.FAILED
        await sign_in(h.client, ADMIN)
        page = await h.client.get(f"/console/notifications/{notification_id}")
        assert 'data-action="replay"' in page.text
        done = await h.client.post(
            f"/console/notifications/{notification_id}/retry",
            data={"csrf": csrf_of(page), "from_hop": "0"},
        )
        assert done.status_code == 303
        await h.run_worker()
        assert len(sink.requests_to("/hook")) == 2
        assert await status_of(h, notification_id) == NotificationStatus.DELIVERED
        bad = await h.client.post(
            f"/console/notifications/{notification_id}/retry",
            data={"csrf": csrf_of(page), "from_hop": "x"},
        )
        assert bad.status_code == 422


async def test_the_notification_page_lists_the_events_sent(db_url: str) -> None:
    raw = {**CONFIG, "events": {"subscriptions": [subscription("https://hooks.example.com/in")]}}
    async with herald(db_url, raw) as h:
        notification_id = await send(h, ADMIN, subject="s", text="t", route="alerts")
        await h.run_worker()
        await sign_in(h.client, ADMIN)
        page = await h.client.get(f"/console/notifications/{notification_id}")
    events = page.text[page.text.index("Events sent") :]
    assert "<code>notification.accepted</code>" in events
    assert "<code>notification.delivered</code>" in events
    assert events.index("notification.accepted") < events.index("notification.delivered")


async def test_counts_cover_a_bounded_number_of_notifications(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(3):
        await send(h, ADMIN, subject=f"n{index}", text="t", send_at="2099-01-01T00:00:00Z")
    await sign_in(h.client, ADMIN)
    whole = await h.client.get("/console")
    assert 'all <span class="n">3</span>' in whole.text and "Counts cover" not in whole.text
    monkeypatch.setattr(views, "COUNT_LIMIT", 2)
    capped = await h.client.get("/console")
    assert 'all <span class="n">2+</span>' in capped.text
    assert "Counts cover the newest 2 notifications" in capped.text
    assert capped.text.count('<tr data-id="') == 3  # the list itself is not cut


async def test_after_sign_in_the_browser_goes_back_to_a_console_page_only(h: Harness) -> None:
    for asked, went in (
        ("/console/channels?x=1", "/console/channels?x=1"),
        ("//evil.example/console", "/console"),
        ("https://evil.example/", "/console"),
        ("/console//evil.example", "/console"),
    ):
        form = await h.client.get("/console/sign-in")
        response = await h.client.post(
            "/console/sign-in", data={"csrf": csrf_of(form), "api_key": READER, "next": asked}
        )
        assert response.headers["location"] == went
