"""Herald's outbound client against a real local server: on the wire it is httpx's client,
except that it names itself ``Herald/<version>``, and so does every HTTP channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import httpx
import pytest

from app import __version__ as source_version
from app.channels.base import DeliveryResult, ErrorClass
from app.channels.http_errors import post_once
from app.channels.outbound import Outbound
from tests.support.channels import run_through_herald
from tests.support.http_server import HttpServer, serve_http

USER_AGENT = f"Herald/{version('herald')}"


@pytest.fixture
async def outbound() -> AsyncIterator[Outbound]:
    async with Outbound(httpx.AsyncHTTPTransport()) as client:
        yield client


def comparable(headers: dict[str, str]) -> dict[str, str]:
    # multipart boundaries are random; the user agent is Herald's; the rest must match exactly
    return {
        k: v for k, v in headers.items() if not v.startswith("multipart/") and k != "user-agent"
    }


@pytest.mark.parametrize(
    "body",
    [
        {"content": b'{"a":1}', "headers": {"content-type": "application/json", "x-id": "7"}},
        {"json": {"text": "héllo"}},
        {"data": {"To": "+14155550100", "Body": "hi"}, "auth": ("AC123", "s3cret")},
    ],
    ids=["content", "json", "form+auth"],
)
async def test_the_request_on_the_wire_is_what_httpx_client_sends(
    outbound: Outbound, body: dict[str, Any]
) -> None:
    async with serve_http() as server:
        response = await outbound.post(server.url("/a"), timeout=5.0, **body)
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.post(server.url("/a"), timeout=5.0, **body)
    ours, theirs = server.received
    assert response.status_code == 200
    assert response.text == "ok"
    assert (ours.method, ours.path, ours.body) == (theirs.method, theirs.path, theirs.body)
    assert comparable(ours.headers) == comparable(theirs.headers)
    assert ours.headers["user-agent"] == USER_AGENT
    assert theirs.headers["user-agent"] == f"python-httpx/{httpx.__version__}"


def test_the_version_is_the_installed_one_and_the_source_tree_agrees() -> None:
    assert f"Herald/{version('herald')}" == USER_AGENT
    assert version("herald") == source_version


async def test_every_http_channel_sends_herald_as_its_user_agent(db_url: str) -> None:
    """One notification broadcast through every channel type that speaks HTTP."""
    async with serve_http() as server:
        base = server.base_url
        channels: dict[str, dict[str, Any]] = {
            "webhook": {"type": "webhook", "url": server.url("/webhook")},
            "slack": {"type": "slack", "webhook_url": server.url("/slack")},
            "discord": {"type": "discord", "webhook_url": server.url("/discord")},
            "telegram": {"type": "telegram", "token": "123:abc", "api_base": base},
            "ntfy": {"type": "ntfy", "topic": "alerts", "api_base": base},
            "twilio": {
                "type": "twilio",
                "account_sid": "AC" + "0" * 32,
                "auth_token": "token",
                "from_number": "+15005550006",
                "api_base": base,
            },
            "whatsapp": {
                "type": "whatsapp",
                "access_token": "token",
                "phone_number_id": "106540352242922",
                "api_base": base,
            },
        }
        config = {
            "channels": {name: {**s, "timeout": "2s"} for name, s in channels.items()},
            "routes": {"default": {"channels": list(channels), "strategy": "all"}},
        }
        run = await run_through_herald(
            db_url,
            config,
            recipient={"phone": "+14155550100", "telegram_chat_id": "-1009"},
            text="db-1: / at 93%",
        )
    assert [a["channel"] for a in run.attempts] == list(channels)
    assert all(a["outcome"] != "skipped" for a in run.attempts), run.attempts
    assert len(server.received) == len(channels)
    assert {r.headers["user-agent"] for r in server.received} == {USER_AGENT}


async def test_caller_headers_replace_the_defaults_whatever_their_case(
    outbound: Outbound,
) -> None:
    async with serve_http() as server:
        await outbound.post(server.url("/a"), timeout=5.0, headers={"User-Agent": "herald-test"})
    (received,) = server.received
    assert received.headers["user-agent"] == "herald-test"


async def test_a_redirect_is_returned_with_its_body_not_followed(outbound: Outbound) -> None:
    async with serve_http() as server:
        server.script("/a", (307, {"location": server.url("/b")}, "moved"))
        response = await outbound.post(server.url("/a"), timeout=5.0, content=b"x")
    assert response.status_code == 307
    assert response.headers["location"].endswith("/b")
    assert response.text == "moved"
    assert response.request.url.path == "/a"
    assert [r.path for r in server.received] == ["/a"]


async def test_the_timeout_bounds_the_wait_for_an_answer(outbound: Outbound) -> None:
    async with serve_http() as server:
        server.delay("/slow", 2.0)
        with pytest.raises(httpx.ReadTimeout):
            await outbound.post(server.url("/slow"), timeout=0.2, content=b"x")


async def test_transport_errors_are_httpx_errors(outbound: Outbound) -> None:
    server = HttpServer()
    async with serve_http(server):
        port = server.port
    with pytest.raises(httpx.ConnectError):  # the server is gone: nothing listens there now
        await outbound.post(f"http://127.0.0.1:{port}/a", timeout=2.0, content=b"x")
    with pytest.raises(httpx.UnsupportedProtocol):
        await outbound.post("ftp://127.0.0.1/a", timeout=2.0, content=b"x")


async def test_a_scheme_httpx_cannot_send_is_a_config_failure(outbound: Outbound) -> None:
    result = await post_once(outbound, "ftp://127.0.0.1/a", timeout=2.0, content=b"x")
    assert isinstance(result, DeliveryResult) and result.error is not None
    assert (result.error.cls, result.error.code) == (ErrorClass.CONFIG, "invalid_url")
    # httpx.InvalidURL is no httpx.HTTPError: it passes post_once by, and never reaches
    # failure_from_transport (a channel that builds URLs from settings catches it itself).
    assert not issubclass(httpx.InvalidURL, httpx.HTTPError)
    with pytest.raises(httpx.InvalidURL):
        await post_once(outbound, "http://[::1/a", timeout=2.0, content=b"x")
