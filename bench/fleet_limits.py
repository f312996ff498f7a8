"""What a fleet-wide rate limit and shared circuits cost per send on PostgreSQL.

One process on its own database (created and dropped here, migrated with ``herald migrate``):

    acquire_1        ``RateWindows.take`` one at a time on one channel: the statement every send
                     through a limited channel runs (admitted each time: a window of no length)
    acquire_4        the same, 4 tasks at once on one channel's row (they queue on its lock, as
                     4 worker processes would)
    acquire_4ch      4 tasks at once, each on its own channel
    acquire_n1000    one at a time, a ``1000/…`` window (the row holds 1,000 times)
    local            ``SlidingWindow.try_acquire`` (SQLite's and every process's in-memory path)
    circuits_read    ``CircuitRows.read`` of 8 channels: what each process's sync runs every 0.5 s

Each figure is the median of --rounds rounds of --ops operations: statements per second (wall)
and this process's CPU per operation.

    .venv/bin/python bench/fleet_limits.py --output bench/results/fleet_limits.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

from app.ratelimit import SlidingWindow
from app.store.fleet import GUARD, CircuitRows, RateWindows

CHANNELS = [f"ch{i}" for i in range(8)]


async def timed(ops: int, tasks: int, one: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    """``ops`` calls of ``one(task)`` spread over ``tasks`` tasks: per second and CPU µs per op."""

    async def task(index: int) -> None:
        for _ in range(ops // tasks):
            await one(index)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(tasks)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"per_second": ops / wall, "cpu_us": cpu / ops * 1e6}


async def main_async(args: argparse.Namespace, url: str) -> dict[str, Any]:
    engine = create_async_engine(url, pool_size=8)
    windows, circuits = RateWindows(engine), CircuitRows(engine)
    await circuits.ensure(CHANNELS)
    local = SlidingWindow(1_000_000, 0.001)

    async def take(task: int, channel: str = "ch0", count: int = 30) -> None:
        # A window of no length (less the guard that ``take`` adds): every call is admitted,
        # so each is one statement that rewrites the row.
        assert await windows.take(channel, f"{count}/0s", count, -GUARD) is None

    async def local_take(task: int) -> None:
        local.try_acquire()

    cases: dict[str, tuple[int, Callable[[int], Awaitable[object]]]] = {
        "acquire_1": (1, take),
        "acquire_4": (4, take),
        "acquire_4ch": (4, lambda task: take(task, CHANNELS[task])),
        "acquire_n1000": (1, lambda task: take(task, "big", 1000)),
        "local": (1, local_take),
        "circuits_read": (1, lambda task: circuits.read(CHANNELS)),
    }
    results: dict[str, Any] = {}
    for name, (tasks, one) in cases.items():
        await timed(min(args.ops, 50), tasks, one)  # warm: prepared statements, rows
        rounds = [await timed(args.ops, tasks, one) for _ in range(args.rounds)]
        results[name] = {
            "tasks": tasks,
            "per_second": round(statistics.median(r["per_second"] for r in rounds)),
            "cpu_us": round(statistics.median(r["cpu_us"] for r in rounds), 1),
        }
        print(name, results[name], flush=True)
    await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.ops > 20000 or args.rounds > 20:
        raise SystemExit("bounded: --ops ≤ 20000, --rounds ≤ 20")
    database = f"herald_fleet_{os.getpid()}"
    admin = bench.Pg(bench.ADMIN_DSN)
    admin.execute(f'CREATE DATABASE "{database}"')
    url = bench.sqlalchemy_url(bench.pg_dsn(database))
    try:
        subprocess.run(
            [bench.HERALD, "migrate"],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "HERALD_DATABASE_URL": url},
        )
        results = asyncio.run(main_async(args, url))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
