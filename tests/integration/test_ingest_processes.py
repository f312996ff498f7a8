"""Two ``herald ingest`` processes on two streams, one killed with SIGKILL mid-way: every entry
becomes exactly one notification and is acked, none is left pending, and only the malformed
entries the test planted are dead letters.

10,000 entries settle in about 4 s on SQLite and 7 s on PostgreSQL (2-core machine), so the
full count runs in ``make test``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.processes import HERALD
from tests.support.redis import REDIS_URL, add_entries, dead_letters, eventually, pending

MALFORMED_EVERY = 97


def write_config(path: Path, streams: list[str]) -> None:
    rule = {
        "match": {"type": "order.*"},
        "notification": {
            "subject": "{type} {payload.id}",
            "text": "order {payload.id}",
            "metadata": {"stream": "{$stream}", "entry": "{$id}"},
        },
    }
    config = {
        "channels": {"console": {"type": "log"}},
        "routes": {"default": {"channels": ["console"]}},
        "ingest": {
            "redis": {"url": REDIS_URL},
            "batch": 50,
            "block": "100ms",
            "claim_idle": "1s",
            "streams": [{"stream": s, "rules": [rule]} for s in streams],
        },
    }
    path.write_text(yaml.safe_dump(config))


def entries(stream: str, count: int) -> tuple[list[dict[str, Any]], set[int]]:
    """``count`` entries, every ``MALFORMED_EVERY``-th with a payload that is not JSON."""
    made: list[dict[str, Any]] = []
    malformed = set()
    for i in range(count):
        if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            made.append({"type": "order.created", "payload": "{broken"})
            malformed.add(i)
        else:
            made.append({"type": "order.created", "payload": {"id": f"{stream}-{i}"}})
    return made, malformed


def start_ingest(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """``herald ingest`` in the background (it runs while the test awaits Redis and the
    database; only its start blocks, briefly)."""
    return subprocess.Popen([HERALD, "ingest"], env=env, stdout=log, stderr=subprocess.STDOUT)


async def stored(database_url: str) -> list[tuple[str, str]]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT metadata FROM notifications"))).all()
    finally:
        await engine.dispose()
    found = []
    for (metadata,) in rows:
        value = metadata if isinstance(metadata, dict) else json.loads(metadata)
        found.append((value["stream"], value["entry"]))
    return found


async def run_two_processes_one_killed(
    db_url: str, redis: Redis, prefix: str, tmp_path: Path, total: int, within: float
) -> None:
    streams = [f"{prefix}:a", f"{prefix}:b"]
    config = tmp_path / "herald.yaml"
    write_config(config, streams)
    expected: set[tuple[str, str]] = set()
    planted: dict[str, set[str]] = {}
    for stream in streams:
        made, malformed = entries(stream, total // 2)
        ids = []
        for at in range(0, len(made), 1000):
            ids += await add_entries(redis, stream, made[at : at + 1000])
        planted[stream] = {ids[i] for i in malformed}
        expected |= {(stream, entry_id) for entry_id in ids} - {(stream, ids[i]) for i in malformed}
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": db_url,
        "HERALD_CONFIG": str(config),
        "HERALD_LOG_LEVEL": "warning",
    }
    logs = [(tmp_path / f"ingest-{n}.log").open("w") for n in range(2)]
    processes = [start_ingest(env, log) for log in logs]
    began = time.monotonic()
    try:
        # Kill the first once a fifth of the entries are stored: it holds a batch or two.
        await eventually(
            "a fifth of the entries stored",
            lambda: _at_least(db_url, len(expected) // 5),
            within=within,
            every=0.02,
        )
        held = await kill_holding(processes[0], redis, streams)
        assert held > 0, "the killed process held entries read and not acked"
        assert processes[1].poll() is None, (tmp_path / "ingest-1.log").read_text()

        async def all_settled() -> bool:
            waiting = [await pending(redis, stream) for stream in streams]
            return len(await stored(db_url)) >= len(expected) and waiting == [0, 0]

        await eventually("every entry stored and acked", all_settled, within=within, every=0.2)
        found = await stored(db_url)
        assert len(found) == len(set(found)), "an entry made two notifications"
        assert set(found) == expected
        for stream in streams:
            letters = await dead_letters(redis, f"{stream}:dead")
            assert {letter["herald.id"] for letter in letters} == planted[stream]
            assert all("not valid JSON" in letter["herald.reason"] for letter in letters)
            groups: Any = await redis.xinfo_groups(stream)
            assert groups[0]["pending"] == 0 and groups[0]["lag"] == 0
        processes[1].send_signal(signal.SIGTERM)
        assert processes[1].wait(timeout=15) == 0
        print(f"\n{total} entries, one process killed: settled in {time.monotonic() - began:.1f}s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


async def kill_holding(process: subprocess.Popen[bytes], redis: Redis, streams: list[str]) -> int:
    """SIGKILL ``process`` while it holds entries it read and has not acked (frozen with
    SIGSTOP until it does); how many it held."""
    mark = f"-{process.pid}-".encode()
    held = 0
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        for stream in streams:
            found: Any = await redis.xpending_range(stream, "herald", "-", "+", 1000)
            held += sum(1 for item in found if mark in item["consumer"])
        if held:
            break
        process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    return held


async def _at_least(database_url: str, count: int) -> bool:
    return len(await stored(database_url)) >= count


async def test_two_ingest_processes_one_killed_10000_entries(
    db_url: str, redis: Redis, prefix: str, tmp_path: Path
) -> None:
    await run_two_processes_one_killed(db_url, redis, prefix, tmp_path, 10_000, within=180)


def test_herald_ingest_refuses_a_config_without_streams(tmp_path: Path) -> None:
    config = tmp_path / "herald.yaml"
    config.write_text(
        "channels:\n  console: {type: log}\nroutes:\n  default: {channels: [console]}\n"
    )
    done = subprocess.run(
        [HERALD, "ingest", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HERALD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"},
    )
    assert done.returncode == 2
    assert "nothing to ingest: the config has no ingest.streams" in done.stderr
