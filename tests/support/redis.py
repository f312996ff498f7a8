"""Real Redis for the ingest tests: the machine's server (127.0.0.1:6379), each test on
streams of its own name; and a ``redis-server`` a test starts itself, to stop and restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

REDIS_URL = os.environ.get("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the Redis tests")
    pytest.skip(message)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the shared Redis; every key a test made under its ``prefix`` is deleted
    after it."""
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        _unavailable(f"Redis not reachable at {REDIS_URL} ({exc})")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A unique stream-name prefix for one test; its keys are deleted afterwards."""
    name = f"herald-test:{uuid.uuid4().hex[:10]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


async def add_entries(redis: Redis, stream: str, entries: list[dict[str, Any]]) -> list[str]:
    """``XADD`` each entry (a ``payload`` that is not a string goes as JSON); their ids."""
    import json

    async with redis.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(
                stream,
                {k: v if isinstance(v, str | bytes) else json.dumps(v) for k, v in fields.items()},
            )
        ids = await pipe.execute()
    return [i.decode() for i in ids]


async def pending(redis: Redis, stream: str, group: str = "herald") -> int:
    summary: Any = await redis.xpending(stream, group)
    return int(summary["pending"])


async def dead_letters(redis: Redis, stream: str) -> list[dict[str, str]]:
    """The dead-letter stream's entries, fields decoded."""
    found: Any = await redis.xrange(stream)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in found]


async def eventually(what: str, probe: Any, within: float = 20.0, every: float = 0.05) -> Any:
    """Await ``probe()`` until it is truthy; fail naming ``what`` after ``within``."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own, on a port of its own, keeping its data in an
    append-only file so that a restart loses nothing acknowledged."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server is not installed")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` the test starts, stops and restarts itself (not the shared one)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
