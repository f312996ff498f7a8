"""The ``apprise`` channel through the real Apprise library: no mocks.

Apprise's ``json://`` and ``jsons://`` URL types POST ``{"version", "title", "message",
"attachments", "type"}`` to an HTTP(S) server, so a real local server (plain, and TLS with a
``trustme`` CA that ``requests`` is told to trust) stands in for a notification service. Apprise
sends from its own worker threads with ``requests``; the servers run in the test's event loop,
which stays free while the channel awaits Apprise.

The one stand-in: to test Herald without Apprise installed, ``sys.modules["apprise"]`` is set to
``None`` so that ``import apprise`` fails, as it does when the package is missing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import apprise
import pytest
import trustme
from pydantic import ValidationError

from app.channels.apprise import (
    MISSING,
    AppriseChannel,
    AppriseConfig,
    url_fragments,
)
from app.channels.base import ChannelContext, ErrorClass
from tests.support import channels
from tests.support.channels import (
    alone,
    assert_delivered_by,
    assert_failed,
    assert_fell_through,
    log_after,
    make_message,
    registry_with,
    run_through_herald,
)
from tests.support.harness import herald
from tests.support.http_server import HttpServer, serve_http
from tests.support.smtp_server import HOST, free_port

pytest_plugins = ["tests.support.channels"]  # the context and srv fixtures

USER = "apprise-user"
PASSWORD = "Appr1se-s3cret-pw"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
QUERY_TOKEN = "qTok3n-9f8e7d6c5b"


def json_url(srv: HttpServer, path: str = "/hook", scheme: str = "json") -> str:
    return f"{scheme}://{USER}:{PASSWORD}@{HOST}:{srv.port}{path}"


# -- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def serve_https(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[HttpServer]:
    """``HttpServer`` behind TLS, with a certificate for 127.0.0.1 issued by ``ca``."""
    cert = ca.issue_cert(HOST)
    key_file, cert_file = tmp_path / "server.key", tmp_path / "server.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    for index, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(cert_file), append=index > 0)
    async with serve_http(ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)) as server:
        yield server


def make_channel(context: ChannelContext, *urls: str, **settings: Any) -> AppriseChannel:
    raw = {"type": "apprise", "urls": list(urls), "timeout": "5s", **settings}
    return AppriseChannel("ops-apprise", AppriseConfig.model_validate(raw), context)


def assert_no_secret(*things: object, urls: tuple[str, ...] = ()) -> None:
    channels.assert_no_secret(*things, secrets=(PASSWORD, BASIC.split()[1], QUERY_TOKEN, *urls))


# -- delivery ---------------------------------------------------------------------------------


async def test_json_url_posts_title_message_and_type(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/hook", (200, {}, "ok"))
    url = json_url(srv)
    result = await make_channel(context, url).send(make_message(subject="Disque plein ✔"))

    assert result.delivered, result
    assert result.provider_status is None
    assert result.provider_message_id is None
    assert result.response_excerpt == "urls[0] (JSON): success"
    [request] = srv.received
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["authorization"] == BASIC
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "Apprise"  # Apprise's own (its app_id), not Herald's
    assert request.json() == {
        "version": "1.0",
        "title": "Disque plein ✔",
        "message": "db-1: / at 93%",
        "attachments": [],
        "type": "warning",
    }
    assert_no_secret(result, urls=(url,))


@pytest.mark.parametrize(
    ("severity", "notify_type"),
    [
        ("debug", "info"),
        ("info", "info"),
        ("warning", "warning"),
        ("error", "failure"),
        ("critical", "failure"),
    ],
)
async def test_severity_sets_the_notify_type(
    context: ChannelContext, srv: HttpServer, severity: str, notify_type: str
) -> None:
    result = await make_channel(context, json_url(srv)).send(make_message(severity=severity))
    assert result.delivered, result
    assert srv.received[0].json()["type"] == notify_type


async def test_html_only_goes_out_as_plain_text_and_no_subject_as_empty_title(
    context: ChannelContext, srv: HttpServer
) -> None:
    message = make_message(subject=None, text=None, html="<p>db-1 at <b>93%</b> &amp; rising</p>")
    result = await make_channel(context, json_url(srv)).send(message)
    assert result.delivered, result
    body = srv.received[0].json()
    assert (body["title"], body["message"]) == ("", "db-1 at 93% & rising")


async def test_jsons_url_over_verified_tls(
    context: ChannelContext,
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests (inside Apprise) verifies against this CA bundle; Herald's own client ignores it.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    async with serve_https(ca, tmp_path) as tls:
        url = json_url(tls, "/secure", scheme="jsons")
        result = await make_channel(context, url).send(make_message(severity="critical"))
    assert result.delivered, result
    [request] = tls.received
    assert request.headers["authorization"] == BASIC
    assert request.json()["type"] == "failure"


async def test_jsons_url_with_an_untrusted_certificate_fails(
    context: ChannelContext, ca: trustme.CA, tmp_path: Path
) -> None:
    async with serve_https(ca, tmp_path) as tls:
        result = await make_channel(context, json_url(tls, "/secure", scheme="jsons")).send(
            make_message()
        )
    assert_failed(result, ErrorClass.TRANSIENT, "apprise_failed")
    assert tls.received == []


async def test_redirects_are_not_followed(context: ChannelContext, srv: HttpServer) -> None:
    srv.script("/hook", (302, {"location": srv.url("/elsewhere")}, ""))
    result = await make_channel(context, json_url(srv)).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "apprise_failed")
    assert [r.path for r in srv.received] == ["/hook"]


async def test_every_url_is_notified(context: ChannelContext, srv: HttpServer) -> None:
    urls = (json_url(srv, "/one"), json_url(srv, "/two"))
    result = await make_channel(context, *urls).send(make_message())
    assert result.delivered, result
    assert sorted(r.path for r in srv.received) == ["/one", "/two"]
    assert result.response_excerpt == "urls[0] (JSON): success\nurls[1] (JSON): success"


# -- failures ---------------------------------------------------------------------------------


async def test_server_error_is_transient_apprise_failed_with_apprises_reason(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/hook", (500, {}, "internal error"))
    url = json_url(srv) + f"?token={QUERY_TOKEN}"
    result = await make_channel(context, url).send(make_message())

    assert_failed(result, ErrorClass.TRANSIENT, "apprise_failed")
    assert result.error is not None
    assert result.error.message.startswith("Apprise failed on every URL (1); urls[0] (JSON):")
    assert "error=500" in result.error.message
    assert result.provider_status is None
    assert result.response_excerpt is not None and "error=500" in result.response_excerpt
    assert len(srv.requests_to("/hook")) == 1, "Apprise does not retry by itself"
    assert_no_secret(result, urls=(url,))


async def test_one_url_failing_is_transient_apprise_partial(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.script("/two", (503, {}, "busy"))
    urls = (json_url(srv, "/one"), json_url(srv, "/two"))
    result = await make_channel(context, *urls).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "apprise_partial")
    assert result.error is not None
    assert result.error.message.startswith("Apprise failed on 1 of 2 URLs; urls[1] (JSON): failure")
    assert result.response_excerpt is not None
    assert result.response_excerpt.startswith("urls[0] (JSON): success\nurls[1] (JSON): failure")
    assert_no_secret(result, urls=urls)


async def test_nothing_listening_is_transient(context: ChannelContext) -> None:
    url = f"json://{USER}:{PASSWORD}@{HOST}:{free_port()}/hook"
    result = await make_channel(context, url).send(make_message())
    assert_failed(result, ErrorClass.TRANSIENT, "apprise_failed")
    assert result.error is not None and "Connection error" in result.error.message
    assert_no_secret(result, urls=(url,))


async def test_slow_service_times_out_and_leaves_no_send_running(
    context: ChannelContext, srv: HttpServer
) -> None:
    srv.delay("/slow", 5)
    channel = make_channel(context, json_url(srv, "/slow"), timeout="500ms")
    began = time.monotonic()
    result = await channel.send(make_message())
    took = time.monotonic() - began

    assert_failed(result, ErrorClass.TRANSIENT, "timeout")
    assert took < 1.5
    # The worker thread's read timeout is capped at the channel timeout: it ends by itself.
    await wait_for_abandoned_sends()


async def test_cancelled_send_raises_nothing_and_its_thread_ends(
    context: ChannelContext, srv: HttpServer
) -> None:
    """What the orchestrator does when a channel overruns: cancel it."""
    srv.delay("/slow", 5)
    channel = make_channel(context, json_url(srv, "/slow"), timeout="1s")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel.send(make_message()), timeout=0.3)
    await wait_for_abandoned_sends()
    # The channel is still usable afterwards.
    srv.delay("/slow", 0)
    assert (await channel.send(make_message())).delivered


async def wait_for_abandoned_sends() -> None:
    still_running = getattr(apprise.apprise, "any_abandoned_calls_still_running", None)
    if still_running is None:  # Apprise 1.x keeps no such record
        return
    deadline = time.monotonic() + 3
    while still_running():
        assert time.monotonic() < deadline, "an abandoned Apprise send kept running"
        await asyncio.sleep(0.05)


# -- Apprise not installed --------------------------------------------------------------------


async def test_without_apprise_the_channel_is_not_ready_and_refuses_as_config(
    context: ChannelContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)
    # Nothing can check a URL without Apprise: it is accepted, and the channel is not ready.
    channel = make_channel(context, "bogus://not-checked", "json://localhost/x")
    assert channel.readiness() == MISSING
    result = await channel.send(make_message())
    assert_failed(result, ErrorClass.CONFIG, "apprise_missing")
    assert result.error is not None and result.error.message == MISSING


def test_importing_the_module_does_not_import_apprise() -> None:
    import subprocess

    code = "import sys, app.channels.apprise; print('apprise' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({}, "urls"),
        ({"urls": []}, "at least 1 item"),
        ({"urls": ["   "]}, "urls[0] is empty"),
        ({"urls": ["json://localhost/x", "bogus://x"]}, "urls[1] is not a URL Apprise can use"),
        ({"urls": [f"json://{USER}:{PASSWORD}@"]}, "urls[0] is not a URL Apprise can use"),
        ({"urls": ["json://localhost/x"], "timeout": "0s"}, "timeout"),
        ({"urls": ["json://localhost/x"], "api_base": "https://x"}, "api_base"),
    ],
)
def test_invalid_config_is_refused(settings: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError) as info:
        AppriseConfig.model_validate({"type": "apprise", **settings})
    assert complaint in str(info.value)
    assert_no_secret(str(info.value))


def test_urls_are_secrets(context: ChannelContext) -> None:
    urls = [f"json://{USER}:{PASSWORD}@localhost/x", "tgram://123456789:AAbbCCddEEffGG/-1001/"]
    config = AppriseConfig.model_validate({"type": "apprise", "urls": urls})
    assert config.secrets() == urls
    assert PASSWORD not in repr(config)
    channel = AppriseChannel("a", config, context)
    assert channel.readiness() is None


def test_url_fragments_cover_every_credential_position() -> None:
    fragments = url_fragments(f"json://{USER}:{PASSWORD}@10.0.0.5:8080/hooks/T0K3N?token=abcd1234")
    assert {USER, PASSWORD, "T0K3N", "abcd1234"} <= set(fragments)
    assert "10.0.0.5" not in fragments and "8080" not in fragments
    assert {"123456789", "AAbbCCddEEffGG"} <= set(
        url_fragments("tgram://123456789:AAbbCCddEEffGG/-1001234/")
    )


# -- logging ----------------------------------------------------------------------------------


async def test_apprise_logs_no_credentials_at_info_and_no_password_at_debug(
    context: ChannelContext, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    with_header = json_url(srv) + f"?token={QUERY_TOKEN}&+X-Token={QUERY_TOKEN}"
    srv.script("/hook", (500, {}, "down"), (200, {}, "ok"))
    # The runtime keeps the apprise logger at WARNING; this test looks below that on purpose.
    with caplog.at_level(logging.INFO, logger="apprise"):
        channel = make_channel(context, with_header)
        assert_failed(await channel.send(make_message()), ErrorClass.TRANSIENT, "apprise_failed")
    assert srv.received[0].headers["x-token"] == QUERY_TOKEN
    info = caplog.text
    assert "Failed to send JSON" in info, "Apprise's log was captured"
    assert USER not in info
    assert_no_secret(info, urls=(with_header,))

    caplog.clear()
    url = json_url(srv) + f"?token={QUERY_TOKEN}"
    with caplog.at_level(logging.DEBUG, logger="apprise"):
        channel = make_channel(context, url)
        assert (await channel.send(make_message())).delivered
    debug = caplog.text
    assert "Loaded JSON URL" in debug, "Apprise's debug log was captured"
    # At DEBUG Apprise shows the user name and the URL path, not the password or an unknown
    # query parameter (its secure logging masks them). It does show custom header values
    # (``+X-Token=…``) in that line, which is why the URL here has none.
    assert_no_secret(debug, urls=(url,))


# -- end to end -------------------------------------------------------------------------------


async def test_end_to_end_delivered(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = json_url(srv)
    config = alone("ops-apprise", {"type": "apprise", "urls": [url], "timeout": "5s"})
    run = await run_through_herald(
        db_url, config, AppriseChannel, subject="Disk almost full", text="db-1: / at 93%"
    )

    assert_delivered_by(
        run, "ops-apprise", "apprise", provider_status=None, provider_message_id=None
    )
    [request] = srv.received
    assert request.json()["title"] == "Disk almost full"
    assert request.json()["type"] == "info"
    channels = run.channels.json()
    [listed] = channels["items"]
    assert listed["ready"] is True
    assert_no_secret(run.body, run.attempts, channels, caplog.text, urls=(url,))


async def test_end_to_end_failure_falls_through_to_log(
    db_url: str, srv: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.script("/hook", (500, {}, "internal error"))
    url = json_url(srv)
    config = log_after("ops-apprise", {"type": "apprise", "urls": [url], "timeout": "5s"})
    run = await run_through_herald(
        db_url, config, AppriseChannel, route="alerts", subject="Disk", text="db-1: / at 93%"
    )

    assert_fell_through(run, ("ops-apprise", "failed", "transient", "apprise_failed", None, None))
    assert "error=500" in run.attempts[0]["error"]["message"]
    assert len(srv.requests_to("/hook")) == 1
    assert_no_secret(run.body, run.attempts, run.channels.text, caplog.text, urls=(url,))


async def test_end_to_end_without_apprise_starts_and_falls_through(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setitem(sys.modules, "apprise", None)
    url = f"json://{USER}:{PASSWORD}@{HOST}:9/hook"
    config = {
        "channels": {
            "ops-apprise": {"type": "apprise", "urls": [url]},
            "fallback": {"type": "log"},
        },
        "routes": {"alerts": {"channels": ["ops-apprise", "fallback"]}},
    }
    async with herald(db_url, config, registry=registry_with(AppriseChannel)) as h:
        channels = (await h.client.get("/v1/channels")).json()
        created = await h.send(route="alerts", text="db-1: / at 93%")
        await h.run_worker()
        body = await h.get(created["id"])
        attempts = await h.attempts(created["id"])

    listed = {item["name"]: item for item in channels["items"]}["ops-apprise"]
    assert (listed["ready"], listed["reason"], listed["health"]) == (False, MISSING, "unhealthy")
    assert body["status"] == "delivered"
    assert body["delivered_via"] == "fallback"
    assert [(a["channel"], a["error"] and a["error"]["code"]) for a in attempts] == [
        ("ops-apprise", "apprise_missing"),
        ("fallback", None),
    ]
    assert attempts[0]["error"]["class"] == "config"
    assert_no_secret(body, attempts, channels, caplog.text, urls=(url,))
