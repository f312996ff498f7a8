"""CPU per entry of ``herald ingest``'s consumer, in-process: a stream backlog drained into
notifications, as bench/run.py's ``ingest_stream`` makes it (the same entry, the same rule and
placeholders, batch 500, ``concurrency`` 4), without the process start-up around it.

Each run is a child process (so that ``--before`` can put another app/ first on its path): it
fills a stream of its own on Redis (127.0.0.1:6379, keys under ``stream-fast:``, deleted after)
with --entries entries, empties the notification tables of its database, then runs
``StreamConsumer.run`` in-process until every entry is accepted, and prints this process's
CPU time per entry (``time.process_time``: the consumer, redis-py and asyncpg; PostgreSQL's
own CPU is not in it) and entries per second (wall).

    createdb -h 127.0.0.1 -U postgres herald_streamfast   # once, then migrate it:
    HERALD_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/herald_streamfast \\
        .venv/bin/python -m app.cli migrate
    .venv/bin/python bench/ingest_paths.py --pairs 5                  # this app/, 5 runs
    .venv/bin/python bench/ingest_paths.py --before /tmp/main --pairs 5   # /tmp/main/app first,
                                                                          # interleaved pairs
    .venv/bin/python bench/ingest_paths.py --profile /tmp/ingest.prof    # one run, cProfile
    .venv/bin/python bench/ingest_paths.py --before /tmp/main --part plan    # one step alone

``--part`` times one step of it alone, with its own figure in place of CPU per entry: ``plan``
(``_decoded`` and ``StreamRules.plan`` of the same entry, no Redis or database: the minimum of
15 rounds of --entries, µs per entry) or ``store`` (``Intake.add_many`` of batches of 500
planned rows and their keys on the database: this process's CPU per row, median of the
batches, µs; PostgreSQL's own is not in it).

With --before, the runs alternate before, after, before, after…, and the medians of each side
and of the per-pair CPU ratio (after / before) are printed; the machine is shared, so CPU per
entry is the steadier figure. ``gc_ms_per_entry`` is the collector's share of it (timed by
``gc.callbacks``); --gc-threshold A B C tries other thresholds than herald ingest's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/herald_streamfast"
REDIS = "redis://127.0.0.1:6379/0"
PREFIX = "stream-fast:"
ITEM = {
    "subject": "Disk almost full",
    "text": "db-1: / at 93%",
    "severity": "warning",
    "source": "bench",
    "metadata": {"host": "db-1", "check": "disk"},
}
CONFIG = """\
network:
  allowed_networks: ["127.0.0.0/8"]
channels:
  hooks:
    type: webhook
    url: http://127.0.0.1:9/hook
routes:
  default:
    channels: [hooks]
ingest:
  redis: {{url: {redis}}}
  streams:
    - stream: {stream}
      rules:
        - match: {{type: bench.disk}}
          notification:
            subject: "{{payload.subject}}"
            text: "{{payload.text}}"
            severity: "{{payload.severity}}"
            source: "{{payload.source}}"
            metadata: "{{payload.metadata}}"
"""


def fill(stream: str, entries: int) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.delete(stream, f"{stream}:dead")
        payload = json.dumps(ITEM)
        for start in range(0, entries, 10_000):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(10_000, entries - start)):
                pipe.xadd(stream, {"type": "bench.disk", "payload": payload})
            pipe.execute()
    finally:
        client.close()


def drop(stream: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.delete(stream, f"{stream}:dead")
    finally:
        client.close()


async def consume(
    stream: str, entries: int, database: str, threshold: list[int] | None = None
) -> dict[str, Any]:
    """Drain ``stream`` (filled already) into notifications; CPU and wall time of it."""
    from sqlalchemy import text

    from app import cli, metrics
    from app.channels.registry import default_registry
    from app.config import Settings, load_config
    from app.domain import IngestOutcome
    from app.ingest.consumer import StreamConsumer, connect
    from app.runtime import open_runtime, settle_heap

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        file.write(CONFIG.format(redis=json.dumps(REDIS), stream=json.dumps(stream)))
    try:
        registry = default_registry()
        config = load_config(file.name, registry)
    finally:
        os.unlink(file.name)
    settings = Settings(database_url=database, log_level="warning")
    accepted = metrics.ingest_entries.labels(stream, IngestOutcome.ACCEPTED)
    collecting: list[float] = []
    spent = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting.append(time.process_time())
        elif collecting:
            spent[0] += time.process_time() - collecting.pop()

    async with open_runtime(settings, config, registry) as runtime:
        # as herald ingest does once its runtime is open (an app/ from before the threshold
        # existed: settle_heap without it)
        young = getattr(cli, "INGEST_GC_YOUNG", None)
        settle_heap(young) if young is not None else settle_heap()
        if threshold:
            gc.set_threshold(*threshold)
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "TRUNCATE notifications, attempts, idempotency_keys, "
                    "events, event_deliveries, event_attempts CASCADE"
                )
            )
        redis = connect(config.ingest.redis, block=config.ingest.block)  # type: ignore[arg-type]
        stream_config = config.ingest.streams[0]
        consumer = StreamConsumer(runtime, redis, stream_config, config.ingest, "bench")
        stop = asyncio.Event()
        gc.callbacks.append(timed)
        began_cpu, began = time.process_time(), time.perf_counter()
        task = asyncio.create_task(consumer.run(stop))
        # the counter the consumer keeps is polled: nothing is there to wait on
        while accepted._value.get() < entries and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
        gc.callbacks.remove(timed)
        stop.set()
        await task
        await redis.aclose()
        async with runtime.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT count(*) FROM notifications"))).scalar_one()
    return {
        "entries": entries,
        "rows": rows,
        "cpu_ms_per_entry": round(1000 * cpu / entries, 4),
        "rate": round(entries / wall, 1),
        "gc_ms_per_entry": round(1000 * spent[0] / entries, 4),
    }


def _planner() -> tuple[Any, Any]:
    """The stream's rules as ``consume`` configures them, and a function planning one entry as
    ``StreamConsumer.settle`` does."""
    from app.channels.registry import default_registry
    from app.config import load_config
    from app.ingest import consumer
    from app.ingest.mapping import Entry, StreamRules

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        file.write(CONFIG.format(redis=json.dumps(REDIS), stream=json.dumps("stream-fast:plan")))
    try:
        config = load_config(file.name, default_registry())
    finally:
        os.unlink(file.name)
    rules = StreamRules(config.ingest.streams[0])

    def plan(raw_id: bytes, fields: dict[bytes, bytes]) -> Any:
        entry_id = consumer._text(raw_id)
        return rules.plan(Entry(rules.config.stream, entry_id, consumer._decoded(fields)))

    return config, plan


def _raw_entries(count: int, start: int = 0) -> list[tuple[bytes, dict[bytes, bytes]]]:
    payload = json.dumps(ITEM).encode()
    return [
        (f"1700000000000-{start + i}".encode(), {b"type": b"bench.disk", b"payload": payload})
        for i in range(count)
    ]


def time_plan(entries: int) -> dict[str, Any]:
    """µs of CPU per entry to plan (decode, match, fill, validate, key) the bench's entry."""
    _, plan = _planner()
    raw = _raw_entries(500)
    rounds = []
    gc.disable()
    for _ in range(15):
        began = time.process_time()
        for _ in range(max(1, entries // len(raw))):
            for raw_id, fields in raw:
                plan(raw_id, fields)
        rounds.append((time.process_time() - began) / (max(1, entries // len(raw)) * len(raw)))
    gc.enable()
    return {"part": "plan", "us_per_entry": round(1e6 * min(rounds), 3)}


async def time_store(entries: int, database: str) -> dict[str, Any]:
    """µs of this process's CPU per row to store batches of 500 planned rows with their keys."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from app import service
    from app.delivery.orchestrator import utcnow
    from app.store.intake import Intake

    config, plan = _planner()
    batches = []
    for start in range(0, max(entries, 2000), 500):
        now = utcnow()
        rows, keys = [], []
        for raw_id, fields in _raw_entries(500, start):
            keyed = plan(raw_id, fields)
            route = service.resolve_route(config, keyed.request, ("body",))
            row = service.new_notification(keyed.request, route, now=now, owner=None)
            rows.append(row)
            keys.append(
                service.key_row("", keyed.key, keyed.digest, now, notification_id=row["id"])
            )
        batches.append((rows, keys))
    engine = create_async_engine(database)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "TRUNCATE notifications, attempts, idempotency_keys, "
                    "events, event_deliveries, event_attempts CASCADE"
                )
            )
        intake = Intake(engine)
        await intake.add_many(batches[0][0], keys=batches[0][1])  # the connection, prepared
        gc.collect()
        spent = []
        for rows, keys in batches[1:]:
            began = time.process_time()
            await intake.add_many(rows, keys=keys)
            spent.append((time.process_time() - began) / len(rows))
    finally:
        await engine.dispose()
    return {"part": "store", "us_per_row": round(1e6 * statistics.median(spent), 2)}


def child(args: argparse.Namespace) -> None:
    if args.part == "plan":
        print(json.dumps(time_plan(args.entries)))
        return
    if args.part == "store":
        print(json.dumps(asyncio.run(time_store(args.entries, args.database))))
        return
    stream = f"{PREFIX}{os.getpid()}"
    fill(stream, args.entries)
    try:
        if args.profile:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
            result = asyncio.run(consume(stream, args.entries, args.database, args.gc_threshold))
            profile.disable()
            profile.dump_stats(args.profile)
        else:
            result = asyncio.run(consume(stream, args.entries, args.database, args.gc_threshold))
    finally:
        drop(stream)
    print(json.dumps(result))


def run_one(app_dir: Path, args: argparse.Namespace, profile: str | None = None) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--entries",
        str(args.entries),
        "--database",
        args.database,
    ]
    if profile:
        command += ["--profile", profile]
    if args.part:
        command += ["--part", args.part]
    if args.gc_threshold:
        command += ["--gc-threshold", *map(str, args.gc_threshold)]
    env = os.environ | {"PYTHONPATH": str(app_dir)}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=app_dir)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--before", type=Path, help="directory holding the app/ to compare")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--profile", help="one run under cProfile, its stats to this file")
    parser.add_argument(
        "--gc-threshold", type=int, nargs=3, help="gc.set_threshold in the runs (a trial)"
    )
    parser.add_argument(
        "--part", choices=("plan", "store"), help="time one step alone (see the docstring)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.profile:
        print(json.dumps(run_one(ROOT, args, args.profile)))
        return
    sides = {"after": ROOT} if args.before is None else {"before": args.before, "after": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for pair in range(args.pairs):
        for side, app_dir in sides.items():
            result = run_one(app_dir, args)
            runs[side].append(result)
            print(f"pair {pair + 1} {side}: {result}", flush=True)
    figure = {"plan": "us_per_entry", "store": "us_per_row"}.get(args.part, "cpu_ms_per_entry")
    summary: dict[str, Any] = {
        side: {
            key: statistics.median(r[key] for r in results)
            for key in (figure, "rate")
            if key in results[0]
        }
        for side, results in runs.items()
    }
    if args.before is not None:
        summary["cpu_ratio"] = statistics.median(
            a[figure] / b[figure] for a, b in zip(runs["after"], runs["before"], strict=True)
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
