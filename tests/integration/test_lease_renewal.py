"""A worker renews its leases while rounds run: a slow try is never taken over by another."""

from __future__ import annotations

import asyncio
import time

from app.delivery.worker import Worker
from tests.support.harness import herald, running_worker
from tests.support.http_server import serve_http


async def test_a_round_longer_than_the_lease_keeps_its_claim(db_url: str) -> None:
    # Found by the chaos suite: with tries slower than HERALD_LEASE, live workers swept each
    # other's claims and every notification reached the provider twice.
    async with serve_http() as sink:
        config = {
            "network": {"allowed_networks": ["127.0.0.1/32"]},
            "channels": {"hook": {"type": "webhook", "url": sink.url("/slow"), "timeout": "5s"}},
            "routes": {"default": {"channels": ["hook"]}},
        }
        async with herald(db_url, config, lease=1.0) as h:
            sink.delay("/slow", 2.0)
            created = await h.send(text="x")
            other = Worker(h.runtime, worker_id="other", clock=h.clock)
            async with running_worker(h):
                began = time.monotonic()
                while (await h.get(created["id"]))["status"] != "delivered":
                    assert await other.sweep() == 0, "a live worker's claim was taken over"
                    assert time.monotonic() - began < 10, "not delivered"
                    await asyncio.sleep(0.1)
            assert len(sink.requests_to("/slow")) == 1
            assert len(await h.attempts(created["id"])) == 1
