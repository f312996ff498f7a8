"""kill -9 of ``herald serve`` on SQLite at full load loses nothing it accepted (issue 18, part 1).

Eight clients POST as fast as the server answers; once a few hundred are accepted the server
dies of SIGKILL mid-load. Every notification it answered ``202`` for is a row in the file
afterwards. SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is in the WAL (the
operating system's page cache) before the answer goes, so a process crash loses nothing; only
an operating-system crash or power loss can take the last commits (README, "Durability").
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from app.store.migrate import upgrade
from tests.support.processes import CONSOLE_CONFIG, HERALD
from tests.support.redis import free_port

CLIENTS = 8
KILL_AFTER = 300
"""Accepted notifications before the kill: well into full load."""


def serve(url: str, config: Path, port: int) -> subprocess.Popen[bytes]:
    """``herald serve`` (the API only) on ``port``."""
    env = {**os.environ, "HERALD_DATABASE_URL": url, "HERALD_CONFIG": str(config)}
    return subprocess.Popen(
        [HERALD, "serve", "--port", str(port), "--no-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def client(base: str, answered: list[str], stop: asyncio.Event, name: int) -> int:
    """POST until ``stop``; the ids answered 202 go to ``answered``; the requests sent."""
    sent = 0
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        while not stop.is_set():
            sent += 1
            try:
                response = await http.post("/v1/notifications", json={"text": f"{name}-{sent}"})
            except httpx.TransportError:
                return sent  # the server died with this request in flight: not answered
            assert response.status_code == 202, response.text
            answered.append(response.json()["id"])
    return sent


async def test_kill_9_at_full_load_keeps_every_accepted_notification(tmp_path: Path) -> None:
    database = tmp_path / "herald.db"
    url = f"sqlite+aiosqlite:///{database}"
    await asyncio.to_thread(upgrade, url)
    config = tmp_path / "herald.yaml"
    config.write_text(CONSOLE_CONFIG)
    port = free_port()
    server = serve(url, config, port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            began = time.monotonic()
            while True:
                try:
                    if (await probe.get(f"{base}/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() - began < 60, "herald serve did not start"
                await asyncio.sleep(0.1)
        answered: list[str] = []
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(client(base, answered, stop, name)) for name in range(CLIENTS)
        ]
        began = time.monotonic()
        while len(answered) < KILL_AFTER:
            assert time.monotonic() - began < 60, f"only {len(answered)} accepted in 60 s"
            await asyncio.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        assert server.wait(timeout=10) == -signal.SIGKILL
        stop.set()
        sent = sum(await asyncio.gather(*clients))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert len(answered) >= KILL_AFTER
    with sqlite3.connect(database) as connection:  # recovers the WAL as any next open does
        # SQLAlchemy's Uuid keeps a UUID as 32 hex digits on SQLite.
        stored = {str(row[0]).lower() for row in connection.execute("SELECT id FROM notifications")}
    missing = [i for i in answered if i.replace("-", "") not in stored]
    assert not missing, f"{len(missing)} of {len(answered)} answered 202 are not in the file"
    assert len(stored) <= sent, "no row the clients did not send"
