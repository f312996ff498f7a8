"""A webhook without ``url`` sends where each recipient says: one caller's endpoint must never
switch the channel off for the others (circuits per destination, blocked addresses per hop)."""

from __future__ import annotations

from typing import Any

from app.metrics import REGISTRY
from tests.support.harness import Harness, herald
from tests.support.http_server import serve_http


def recipient_hook(**circuit: Any) -> dict[str, Any]:
    return {
        "channels": {"hook": {"type": "webhook", "circuit": circuit}, "log": {"type": "log"}},
        "routes": {"default": {"channels": ["hook", "log"]}},
    }


async def send_to(h: Harness, url: str) -> str:
    created = await h.send(text="x", recipient={"webhook_url": url})
    await h.run_worker()
    notification_id: str = created["id"]
    return notification_id


async def hook_channel(h: Harness) -> dict[str, Any]:
    items = (await h.client.get("/v1/channels")).json()["items"]
    hook: dict[str, Any] = next(c for c in items if c["name"] == "hook")
    return hook


def hook_attempt(attempts: list[dict[str, Any]]) -> tuple[str, str | None, str | None]:
    (attempt,) = [a for a in attempts if a["channel"] == "hook"]
    error = attempt["error"] or {}
    return attempt["outcome"], error.get("class"), error.get("code")


async def test_one_callers_failing_endpoint_opens_only_its_own_circuit(db_url: str) -> None:
    async with serve_http() as bad, serve_http() as good:
        bad.default = (500, {}, "down")
        async with herald(db_url, recipient_hook(failures=2, cooldown="1h")) as h:
            for _ in range(2):
                failed = await send_to(h, bad.url("/in"))
                assert hook_attempt(await h.attempts(failed)) == ("failed", "transient", "http_500")
            skipped = await send_to(h, bad.url("/in"))
            assert hook_attempt(await h.attempts(skipped)) == ("skipped", "skipped", "circuit_open")
            assert len(bad.received) == 2, "the open destination was not called"

            other = await send_to(h, good.url("/in"))
            assert (await h.get(other))["delivered_via"] == "hook"
            assert len(good.received) == 1

            hook = await hook_channel(h)
            assert hook["health"] == "healthy"
            assert hook["circuit"]["state"] == "closed"
            assert hook["circuit"]["per_destination"] is True
            assert hook["circuit"]["open_destinations"] == [bad.base_url]
            assert hook["circuit"]["open_destination_count"] == 1
            assert (
                REGISTRY.get_sample_value("herald_channel_circuit_state", {"channel": "hook"}) == 0
            )


async def test_a_blocked_recipient_address_fails_its_hop_and_quarantines_nothing(
    db_url: str,
) -> None:
    async with serve_http() as good, herald(db_url, recipient_hook(failures=5)) as h:
        created = await h.send(text="x", recipient={"webhook_url": good.url("/in")})
        # Stored before the submit check refused such a URL (as on 798da9a): the guard still
        # refuses it when the hop is tried.
        await h.set_fields(
            created["id"], recipient={"webhook_url": "http://169.254.169.254/latest/"}
        )
        await h.run_worker()
        blocked = await h.get(created["id"])
        assert hook_attempt(await h.attempts(created["id"])) == (
            "failed",
            "permanent",
            "blocked_address",
        )
        assert blocked["hops"][0]["state"] == "failed"
        assert blocked["delivered_via"] == "log"

        other = await send_to(h, good.url("/in"))
        assert (await h.get(other))["delivered_via"] == "hook"
        hook = await hook_channel(h)
        assert hook["circuit"]["state"] == "closed"
        assert hook["circuit"]["open_destination_count"] == 0


async def test_destination_circuits_stay_bounded(db_url: str) -> None:
    async with herald(db_url, recipient_hook(failures=1, cooldown="1h")) as h:
        circuits = h.runtime.links["hook"].destinations
        assert circuits is not None
        circuits.limit = 3
        # Nothing listens on 127.0.0.N: each is a destination that refuses the connection.
        for n in range(2, 8):
            failed = await send_to(h, f"http://127.0.0.{n}:9/in")
            assert hook_attempt(await h.attempts(failed))[2] == "connection_error"
        assert len(circuits) == 3
        circuit = (await hook_channel(h))["circuit"]
        assert circuit["open_destination_count"] == 3
        assert circuit["open_destinations"] == [f"http://127.0.0.{n}:9" for n in (7, 6, 5)]
