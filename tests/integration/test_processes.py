"""The ``herald`` command as a real process: worker metrics, signals, refusing bad config, the
API, the worker and the event dispatcher each in a process of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from app.delivery.listener import asyncpg_dsn
from app.store.migrate import upgrade
from tests.support.events import received, subscription
from tests.support.http_server import HttpServer, serve_http
from tests.support.processes import herald_process

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


def test_events_refuses_a_config_with_nothing_to_dispatch(sqlite_env: dict[str, str]) -> None:
    result = subprocess.run(
        [HERALD, "events"], env=sqlite_env, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [
            "herald: nothing to dispatch: the config has no events.subscriptions and no "
            "events.callback_secret"
        ],
    )


async def test_api_worker_and_events_processes_are_woken_by_notify(
    pg_url: str, tmp_path: Path
) -> None:
    """The layout README gives for PostgreSQL: ``herald serve --no-worker``, ``herald worker
    --no-events`` and ``herald events``, each a process of its own. They poll every 30 s here,
    so what brings each event within seconds is the ``NOTIFY herald_events`` its writer sent:
    the accept's statement (API), the worker's save of its round, the cancel's and the
    redelivery's transactions (API). Each step waits for its event before the next, so each
    wake-up belongs to one writer; the subscriptions are chosen so that the accept of the
    notification the worker delivers writes no event."""
    async with serve_http() as sink:
        config = tmp_path / "herald.yaml"
        accepts = subscription(
            sink.url("/accepted"), "accepts", types=["notification.accepted"], routes=["later"]
        )
        finals = subscription(
            sink.url("/final"), "finals", types=["notification.delivered", "notification.cancelled"]
        )
        config.write_text(
            yaml.safe_dump(
                {
                    "network": {"allowed_networks": ["127.0.0.0/8"]},
                    "channels": {"hook": {"type": "webhook", "url": sink.url("/hook")}},
                    "routes": {"default": {"channels": ["hook"]}, "later": {"channels": ["hook"]}},
                    "events": {"subscriptions": [accepts, finals]},
                }
            )
        )
        env = {
            **os.environ,
            "HERALD_DATABASE_URL": pg_url,
            "HERALD_CONFIG": str(config),
            "HERALD_POLL_INTERVAL": "30s",
            "HERALD_LOG_FORMAT": "console",
        }
        port, metrics_port = free_port(), free_port()
        logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker", "events")}
        commands = {
            "api": ["serve", "--no-worker", "--port", str(port)],
            "worker": ["worker", "--no-events"],
            "events": ["events", "--metrics-port", str(metrics_port)],
        }
        with ExitStack() as stack:
            procs = {
                name: stack.enter_context(
                    herald_process(
                        *args,
                        env=env,
                        stdout=stack.enter_context(logs[name].open("w")),
                        stderr=subprocess.STDOUT,
                    )
                )
                for name, args in commands.items()
            }
            db = await asyncpg.connect(asyncpg_dsn(pg_url))
            try:
                await until(lambda: _listening(db), "the worker and the dispatcher LISTEN", 2)
            finally:
                await db.close()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await until(lambda: _ready(client), "the API is ready", True)

                async def step(what: str, path: str, count: int, action: Awaitable[Any]) -> Any:
                    began = time.monotonic()
                    answer = await action
                    assert answer.status_code in (200, 202), answer.text
                    await until(lambda: _count(sink, path), what, count)
                    took = time.monotonic() - began
                    assert took < 5, f"{what}: {took:.1f}s, no NOTIFY woke the dispatcher"
                    return answer

                delivered = await step(
                    "the worker's save",
                    "/final",
                    1,
                    client.post("/v1/notifications", json={"text": "now"}),
                )
                later = {"route": "later", "text": "later", "send_at": "2099-01-01T00:00:00Z"}
                held = await step(
                    "the accept", "/accepted", 1, client.post("/v1/notifications", json=later)
                )
                held_id = held.json()["id"]
                await step(
                    "the cancel",
                    "/final",
                    2,
                    client.post(f"/v1/notifications/{held_id}/cancel"),
                )
                accepted_event = received(sink, "/accepted")[0]["id"]
                await step(
                    "the redelivery",
                    "/accepted",
                    2,
                    client.post(f"/v1/events/{accepted_event}/redeliver"),
                )
            assert len(sink.requests_to("/hook")) == 1
            assert [(b["type"], b["notification_id"]) for b in received(sink, "/final")] == [
                ("notification.delivered", delivered.json()["id"]),
                ("notification.cancelled", held_id),
            ]
            assert [b["id"] for b in received(sink, "/accepted")] == [accepted_event] * 2
            async with httpx.AsyncClient() as client:
                metrics = f"http://127.0.0.1:{metrics_port}/metrics"
                counted = 'herald_events_delivered_total{subscription="finals"} 2.0'

                async def counts() -> bool:
                    return counted in (await client.get(metrics)).text

                await until(counts, "the dispatcher counted them", True)
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            codes = {name: await asyncio.to_thread(p.wait, 30) for name, p in procs.items()}
            assert codes == dict.fromkeys(procs, 0)
    assert "event dispatcher" not in logs["worker"].read_text(), "--no-events: no dispatcher"
    assert "event dispatcher" in logs["events"].read_text()


async def until(check: Callable[[], Awaitable[object]], what: str, expected: object) -> None:
    """Poll ``check`` (bounded, 15 s) until it answers ``expected``; the loop stays free."""
    began = time.monotonic()
    while (found := await check()) != expected:
        assert time.monotonic() - began < 15, f"not yet {what} after 15 s: {found}"
        await asyncio.sleep(0.05)


async def _listening(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN%'"
    )
    return count


async def _ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def _count(sink: HttpServer, path: str) -> int:
    return len(sink.requests_to(path))
