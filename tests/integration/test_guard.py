"""The guard on real connections: only loopback is ever contacted, whatever the test asks."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest

from tests.support.harness import herald
from tests.support.http_server import serve_http

TARGETS = [
    "http://127.0.0.1:{port}/x",
    "http://localhost:{port}/x",
    "http://[::1]:{port}/x",
    "http://2130706433:{port}/x",
    "http://0x7f.1:{port}/x",
]


class LoopbackOnly(httpx.AsyncBaseTransport):
    """Belt and braces: if the guard ever let a request through, it still goes nowhere but
    loopback, so no test can send a packet to a private or public address."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.hosts.append(host)
        assert ipaddress.ip_address(host).is_loopback, f"refusing to contact {host}"
        return await self.inner.handle_async_request(request)


def guarded(config: dict[str, Any], network: dict[str, Any]) -> dict[str, Any]:
    return {**config, "network": network}


@pytest.mark.parametrize("target", TARGETS)
async def test_loopback_channel_urls_are_blocked_at_delivery(db_url: str, target: str) -> None:
    async with serve_http() as sink:
        config = {
            "channels": {
                "hook": {"type": "webhook", "url": target.format(port=sink.port)},
                "log": {"type": "log"},
            },
            "routes": {"default": {"channels": ["hook", "log"]}},
        }
        async with herald(db_url, guarded(config, {})) as h:
            transport = h.runtime.http.transport  # the guard wraps the real transport
            transport.inner = LoopbackOnly(transport.inner)  # type: ignore[attr-defined]
            created = await h.send(text="x")
            await h.run_worker()
            attempts = await h.attempts(created["id"])
            assert attempts[0]["error"]["class"] == "permanent"
            assert attempts[0]["error"]["code"] == "blocked_address"
            assert attempts[1]["outcome"] == "delivered"
            assert (await h.get(created["id"]))["hops"][0]["state"] == "failed"
            channels = (await h.client.get("/v1/channels")).json()["items"]
            hook = next(c for c in channels if c["name"] == "hook")
            assert hook["circuit"]["state"] == "closed", "a blocked address quarantines nothing"
        assert sink.received == [], "nothing reached the server"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://2130706433/x",
        "http://0177.0.0.1/x",
        "http://0x7f.1/x",
    ],
)
async def test_literal_blocked_webhook_url_is_refused_at_submit(db_url: str, url: str) -> None:
    config = {
        "channels": {"hook": {"type": "webhook"}},
        "routes": {"default": {"channels": ["hook"]}},
    }
    async with herald(db_url, guarded(config, {})) as h:
        response = await h.client.post(
            "/v1/notifications", json={"text": "x", "recipient": {"webhook_url": url}}
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "recipient", "webhook_url"]
        assert (await h.client.get("/v1/notifications")).json()["items"] == []


LOOPBACK_NAMES = [
    "http://localhost:{port}/x",
    "http://LOCALHOST./x",
    "https://tenant.localhost/x",
    "http://localhost.localdomain/x",
    "http://ip6-localhost:{port}/x",
]


@pytest.mark.parametrize("url", LOOPBACK_NAMES)
async def test_loopback_names_are_refused_at_submit(db_url: str, url: str) -> None:
    config = {
        "channels": {"hook": {"type": "webhook"}},
        "routes": {"default": {"channels": ["hook"]}},
    }
    body = {"text": "x", "recipient": {"webhook_url": url.format(port=8080)}}
    async with herald(db_url, guarded(config, {})) as h:
        response = await h.client.post("/v1/notifications", json=body)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["errors"][0]["loc"] == ["body", "recipient", "webhook_url"]
        assert "loopback" in problem["detail"]
        batch = await h.client.post("/v1/notifications/batch", json={"items": [body]})
        assert batch.json()["items"][0]["status"] == 422, batch.text
        assert (await h.client.get("/v1/notifications")).json()["items"] == []
    async with herald(db_url, config) as h:  # the harness lets loopback through
        await h.send(**body)


def test_a_url_the_client_cannot_parse_is_a_config_error() -> None:
    from app.channels.webhook import WebhookConfig

    with pytest.raises(ValueError, match="not a valid URL"):
        WebhookConfig.model_validate({"type": "webhook", "url": "http://0177.0.0.1/x"})


async def test_allowed_networks_connect_to_the_checked_address(db_url: str) -> None:
    async with serve_http() as sink:
        config = {
            "channels": {"hook": {"type": "webhook", "url": f"http://localhost:{sink.port}/x"}},
            "routes": {"default": {"channels": ["hook"]}},
        }
        async with herald(db_url, guarded(config, {"allowed_networks": ["127.0.0.1/32"]})) as h:
            transport = h.runtime.http.transport
            spy = LoopbackOnly(transport.inner)  # type: ignore[attr-defined]
            transport.inner = spy  # type: ignore[attr-defined]
            created = await h.send(text="x")
            await h.run_worker()
            assert (await h.get(created["id"]))["status"] == "delivered"
        assert spy.hosts == ["127.0.0.1"], "connected to the address that was checked"
        assert sink.received[0].headers["host"] == f"localhost:{sink.port}"


async def test_a_redirect_toward_a_private_address_is_not_followed(db_url: str) -> None:
    async with serve_http() as sink:
        sink.script("/x", (307, {"location": "http://169.254.169.254/latest/meta-data/"}, ""))
        config = {
            "channels": {"hook": {"type": "webhook", "url": sink.url("/x")}},
            "routes": {"default": {"channels": ["hook"]}},
        }
        async with herald(db_url, guarded(config, {"allowed_networks": ["127.0.0.1/32"]})) as h:
            transport = h.runtime.http.transport
            spy = LoopbackOnly(transport.inner)  # type: ignore[attr-defined]
            transport.inner = spy  # type: ignore[attr-defined]
            created = await h.send(text="x")
            await h.run_worker()
            (attempt,) = await h.attempts(created["id"])
            assert attempt["error"]["class"] == "permanent"
            assert attempt["error"]["code"] == "http_307"
        assert spy.hosts == ["127.0.0.1"]
