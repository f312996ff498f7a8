"""The ``herald`` command as a real process: worker metrics, signals, refusing bad config."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.store.migrate import upgrade

HERALD = str(Path(sys.executable).with_name("herald"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'herald.db'}"
    upgrade(url)
    config = tmp_path / "herald.yaml"
    config.write_text(
        "channels:\n  console: {type: log}\nroutes:\n  default: {channels: [console]}\n"
    )
    yield {
        **os.environ,
        "HERALD_DATABASE_URL": url,
        "HERALD_CONFIG": str(config),
        "HERALD_POLL_INTERVAL": "100ms",
    }


def wait_for(url: str, within: float = 15.0) -> httpx.Response:
    began = time.monotonic()
    while True:
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            if time.monotonic() - began > within:
                raise
            time.sleep(0.1)


def test_worker_serves_its_metrics_and_exits_0_on_sigterm(sqlite_env: dict[str, str]) -> None:
    port = free_port()
    worker = subprocess.Popen(
        [HERALD, "worker", "--metrics-port", str(port)],
        env=sqlite_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The metrics server answers before the runtime has built the channels: poll.
        expected = 'herald_channel_circuit_state{channel="console"} 0.0'
        began = time.monotonic()
        while expected not in (text := wait_for(f"http://127.0.0.1:{port}/metrics").text):
            assert time.monotonic() - began < 15, "the worker never exported its channels"
            time.sleep(0.1)
        assert "process_resident_memory_bytes " in text
        assert "herald_queue" not in text, "a worker does not read the queue: no queue gauges"
        assert "_created" not in text
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = worker.stdout.read() if worker.stdout else ""
    assert "stopped" in output


def test_serve_refuses_an_invalid_config(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels:\n  email: {type: smtp, host: h, port: nope, from: a@b.c}\n")
    result = subprocess.run(
        [HERALD, "serve", "--config", str(bad), "--port", str(free_port())],
        env=sqlite_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "channels.email.port:" in result.stderr


@contextmanager
def serving(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``herald serve`` on a free port, ready: the process and its base URL."""
    port = free_port()
    server = subprocess.Popen(
        [HERALD, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(f"{base}/readyz").status_code == 200
        yield server, base
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_delivers_and_stops_on_sigterm(sqlite_env: dict[str, str]) -> None:
    with serving(sqlite_env) as (server, base):
        created = httpx.post(f"{base}/v1/notifications", json={"text": "hi"})
        assert created.status_code == 202
        location = f"{base}{created.headers['location']}"
        began = time.monotonic()
        while httpx.get(location).json()["status"] != "delivered":
            assert time.monotonic() - began < 10
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def test_serve_answers_waiting_requests_at_once_on_sigterm(sqlite_env: dict[str, str]) -> None:
    """A request held by ?wait= would hold the drain for up to 30 s: it is answered at once."""
    with serving(sqlite_env) as (server, base):
        later = {"text": "later", "send_at": "2099-01-01T00:00:00Z"}
        created = httpx.post(f"{base}/v1/notifications", json=later)
        assert created.status_code == 202
        with httpx.Client(base_url=base, timeout=40) as client, ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.get, created.headers["location"], params={"wait": "30s"})
            began = time.monotonic()
            while "herald_waiters 1.0" not in httpx.get(f"{base}/metrics").text:
                assert time.monotonic() - began < 10
                time.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            answer = waiting.result(timeout=20)
            assert time.monotonic() - stopped < 5
        assert (answer.status_code, answer.headers["herald-wait"]) == (200, "timeout")
        assert answer.json()["status"] == "pending"
        assert server.wait(timeout=30) == 0
