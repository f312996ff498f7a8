"""An escalation's wait is a row, not a sleep: kill -9 the worker while it waits, and another
worker process sends the next hop on time (PostgreSQL: several workers share one database)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration.test_receipts_acks import PHONE, TG_TOKEN, sms, telegram_ok
from tests.integration.test_twilio_channel import PATH, created
from tests.support.harness import LOOPBACK, herald
from tests.support.http_server import HttpServer, serve_http
from tests.support.processes import HERALD

ACK_WITHIN = 4.0
"""Long enough for a new worker process to start while the first hop waits."""


def worker(config: Path, db_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": db_url,
        "HERALD_POLL_INTERVAL": "100ms",
        "HERALD_LOG_LEVEL": "info",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [HERALD, "worker", "--config", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def first_request(server: HttpServer, path: str | None, within: float) -> float:
    """When the first request (to ``path``) arrived; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = server.requests_to(path) if path else server.received
        if found:
            return found[0].at
        assert time.monotonic() < deadline, f"nothing arrived within {within:.0f}s"
        await asyncio.sleep(0.05)


async def test_kill_9_while_an_escalation_waits_the_next_hop_goes_on_time(
    pg_url: str, tmp_path: Path
) -> None:
    async with serve_http() as tg, serve_http() as twilio:
        tg.default = telegram_ok()
        twilio.default = (201, {}, created())
        config: dict[str, Any] = {
            "network": {"allowed_networks": LOOPBACK},
            "channels": {
                "tg": {
                    "type": "telegram",
                    "token": TG_TOKEN,
                    "api_base": tg.base_url,
                    "default_chat_id": "-100",
                },
                "sms": sms(twilio.base_url),
            },
            "routes": {
                "oncall": {
                    "strategy": "escalate",
                    "channels": [{"channel": "tg", "ack_within": f"{ACK_WITHIN:g}s"}, "sms"],
                }
            },
        }
        path = tmp_path / "herald.yaml"
        path.write_text(yaml.safe_dump(config))
        first = worker(path, pg_url, tmp_path / "worker-a.log")
        second: subprocess.Popen[bytes] | None = None
        try:
            async with herald(pg_url, config) as h:  # the API only: its worker never runs
                nid = (await h.send(route="oncall", recipient={"phone": PHONE}, text="db down"))[
                    "id"
                ]
                sent_at = await first_request(tg, None, within=30)
                await asyncio.sleep(0.3)  # the round is saved: the hop waits for its ack
                assert (await h.get(nid))["hops"][0]["state"] == "awaiting_ack"
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                second = worker(path, pg_url, tmp_path / "worker-b.log")
                paged_at = await first_request(twilio, PATH, within=30)
                waited = paged_at - sent_at
                assert ACK_WITHIN - 0.2 <= waited <= ACK_WITHIN + 2.0, (
                    f"the sms went {waited:.2f}s after the telegram message, not ~{ACK_WITHIN}s"
                )
                body = await h.get(nid)
                for _ in range(50):
                    if body["status"] == "delivered":
                        break
                    await asyncio.sleep(0.1)
                    body = await h.get(nid)
                assert body["status"] == "delivered"
                assert [hop["state"] for hop in body["hops"]] == ["unacknowledged", "delivered"]
                assert len(tg.received) == 1 and len(twilio.requests_to(PATH)) == 1
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
