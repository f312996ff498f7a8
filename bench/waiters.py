"""What requests held by ``?wait=`` cost an idle ``herald serve``: its CPU with none and with 500.

    .venv/bin/python bench/waiters.py                      # SQLite, herald serve with its worker
    .venv/bin/python bench/waiters.py --database-url postgresql+asyncpg://…/empty_db --no-worker

Starts ``herald serve`` (this checkout's code) on a free port with a ``log`` channel, stores
``--waiters`` notifications due far in the future (one batch request), then reads the server
process's own CPU time (``/proc/<pid>/stat``: user + system) over ``--seconds`` of wall time
twice: idle, and while ``--waiters`` GET ``…?wait=30s`` requests, one per notification, are
held (from a few seconds after ``herald_waiters`` shows them all registered). It also reports
the CPU spent to register them and to answer them when their wait runs out. CPU is given as a
percentage of one core. Not part of ``make bench``: the issue's goal (500 waiters add at most
5 % CPU to an idle server) is read from its output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
channels:
  console: {type: log, level: debug}
routes:
  default: {channels: [console]}
"""
FAR = "2099-01-01T00:00:00Z"
WAIT = 30.0
SETTLE = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def herald(args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """``herald ARGS`` with this checkout's code."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, **popen)


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def waiters_registered(client: httpx.AsyncClient) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("herald_waiters "):
            return float(line.split()[1])
    return 0.0


async def measure(url: str, pid: int, count: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(base_url=url, timeout=WAIT + 30, limits=limits) as client:
        items = [{"text": f"waiter {i}", "send_at": FAR} for i in range(count)]
        batch = await client.post("/v1/notifications/batch", json={"items": items})
        batch.raise_for_status()
        ids = [item["id"] for item in batch.json()["items"]]
        await asyncio.sleep(2)  # let start-up and the batch settle

        began, cpu = time.monotonic(), cpu_seconds(pid)
        await asyncio.sleep(seconds)
        idle = (cpu_seconds(pid) - cpu) / (time.monotonic() - began)

        cpu_before_register = cpu_seconds(pid)
        held = [
            asyncio.create_task(client.get(f"/v1/notifications/{i}", params={"wait": f"{WAIT:g}s"}))
            for i in ids
        ]
        registered_at = time.monotonic()

        async def all_registered() -> bool:
            return await waiters_registered(client) >= count

        await until(all_registered, WAIT / 2, f"{count} registered waiters")
        # A waiter counts from the moment it registers, before its first read of the state:
        # let those reads finish before the window opens.
        await asyncio.sleep(SETTLE)
        register_cpu = cpu_seconds(pid) - cpu_before_register

        began, cpu = time.monotonic(), cpu_seconds(pid)
        window = min(seconds, WAIT - (began - registered_at) - 3)
        await asyncio.sleep(window)
        waiting = (cpu_seconds(pid) - cpu) / (time.monotonic() - began)

        cpu = cpu_seconds(pid)
        answers = await asyncio.gather(*held)
        timeout_cpu = cpu_seconds(pid) - cpu
        timed_out = sum(1 for answer in answers if answer.headers.get("herald-wait") == "timeout")
        if timed_out != count:
            raise SystemExit(f"expected {count} answers with Herald-Wait: timeout, got {timed_out}")
    return {
        "idle_cpu_percent": idle * 100,
        "waiting_cpu_percent": waiting * 100,
        "added_cpu_percent": (waiting - idle) * 100,
        "window_seconds": window,
        "register_cpu_ms": register_cpu * 1000,
        "timeout_answers_cpu_ms": timeout_cpu * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--waiters", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0, help="each measuring window")
    parser.add_argument("--no-worker", action="store_true", help="herald serve --no-worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "herald.yaml")
        config.write_text(CONFIG)
        database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/herald.db"
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HERALD_CONFIG": str(config),
            "HERALD_DATABASE_URL": database_url,
            "HERALD_LOG_LEVEL": "warning",
        }
        herald(["migrate"], env, stdout=subprocess.DEVNULL).wait()
        serve = ["serve", "--port", str(port), *(["--no-worker"] if args.no_worker else [])]
        server = herald(serve, env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("herald serve did not become ready")
                time.sleep(0.2)
            result = asyncio.run(measure(url, server.pid, args.waiters, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    kind = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    role = "--no-worker" if args.no_worker else "with its worker"
    print(f"herald serve {role} on {kind}, {args.waiters} waiters:")
    print(f"  idle:                  {result['idle_cpu_percent']:.2f} % CPU")
    print(
        f"  {args.waiters} waiting:           {result['waiting_cpu_percent']:.2f} % CPU "
        f"(over {result['window_seconds']:.0f} s)"
    )
    print(f"  added by the waiters:  {result['added_cpu_percent']:+.2f} % CPU (goal: at most 5 %)")
    print(f"  registering them:      {result['register_cpu_ms']:.0f} ms CPU in all")
    print(f"  answering at timeout:  {result['timeout_answers_cpu_ms']:.0f} ms CPU in all")


if __name__ == "__main__":
    main()
