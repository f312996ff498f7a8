"""kill -9 of ``herald serve`` on SQLite during concurrent POSTs: every notification answered
202 is in the database afterwards.

The accepts are group-committed (``Intake`` on SQLite: the calls that arrive together share
one transaction, each answered after its commit), with WAL and ``synchronous=NORMAL``: a
process crash loses nothing committed. The server is killed while requests are in flight, so
some of them are in a transaction being written, some queued for the next: none of those was
answered, and every one that was is found.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.store.migrate import upgrade
from tests.support.processes import CONSOLE_CONFIG, herald_process

CLIENTS = 32
KILL_AFTER = 300
"""Answers received before the kill."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _until_ready(client: httpx.AsyncClient, base: str, within: float = 20.0) -> None:
    began = time.monotonic()
    while True:
        try:
            if (await client.get(f"{base}/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() - began < within, "herald serve did not become ready"
        await asyncio.sleep(0.1)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A migrated SQLite database (migrated here: ``upgrade`` runs its own event loop)."""
    path = tmp_path / "herald.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


async def test_kill_9_during_concurrent_posts_loses_nothing_answered_202(
    database: Path, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{database}"
    config = tmp_path / "herald.yaml"
    config.write_text(CONSOLE_CONFIG)
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": url,
        "HERALD_CONFIG": str(config),
        "HERALD_LOG_LEVEL": "warning",
    }
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    answered: list[uuid.UUID] = []
    refused: list[BaseException] = []
    killed = asyncio.Event()
    with herald_process(
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            await _until_ready(client, base)

            async def post(index: int) -> None:
                sent = 0
                while not killed.is_set() or sent == 0:
                    body = {"text": f"client {index} message {sent}", "metadata": {"n": sent}}
                    key = {"Idempotency-Key": f"{index}-{sent}"} if sent % 2 else {}
                    sent += 1
                    try:
                        response = await client.post(
                            f"{base}/v1/notifications", json=body, headers=key
                        )
                    except httpx.TransportError as exc:
                        refused.append(exc)
                        return
                    assert response.status_code == 202, response.text
                    answered.append(uuid.UUID(response.json()["id"]))

            async def kill() -> None:
                while len(answered) < KILL_AFTER:
                    assert server.poll() is None, "herald serve exited"
                    await asyncio.sleep(0.005)
                server.send_signal(signal.SIGKILL)
                killed.set()

            await asyncio.wait_for(
                asyncio.gather(kill(), *(post(index) for index in range(CLIENTS))), timeout=120
            )
    assert server.returncode == -signal.SIGKILL
    assert refused, "every request was answered: the kill did not land during the load"
    with sqlite3.connect(database) as db:  # recovers the WAL as any next start would
        stored = {uuid.UUID(row[0]) for row in db.execute("SELECT id FROM notifications")}
    lost = [notification for notification in answered if notification not in stored]
    assert not lost, f"{len(lost)} of {len(answered)} notifications answered 202 were lost"
    assert len(answered) >= KILL_AFTER
