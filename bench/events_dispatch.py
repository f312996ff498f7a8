"""The event dispatcher alone: CPU per event of ``herald events`` draining a due backlog.

A steadier figure than a rate when the machine is shared: the process's own CPU time over the
events it sent. Each run fills ``--events`` due deliveries (one event per notification, one
subscription, to bench/sink.py) with one INSERT … SELECT generate_series, starts ``herald
events`` idle, makes them due with ``NOTIFY herald_events`` and waits (bounded) until every one
is delivered. With ``--app-dir`` it runs another copy of app/ (A/B against the work tree's).
``pg_cpu_ms_per_event`` is the CPU of the database's backends serving ``herald events`` (the
claims, saves and their index upkeep), which shares the machine's cores in the deliver bench.

    .venv/bin/python bench/events_dispatch.py --runs 3
    .venv/bin/python bench/events_dispatch.py --runs 3 --app-dir /tmp/before
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

EVENT_COLUMNS = "id, type, notification_id, owner, route, data, created_at"
DELIVERY_COLUMNS = (
    "event_id, subscription, url, notification_id, status, attempts, attempt_base, trigger, "
    "next_attempt_at, claimed_by, lease_expires_at, last_error, delivered_at, created_at, "
    "updated_at"
)


def fill(pg: bench.Pg, count: int) -> None:
    """``count`` ``notification.delivered`` events, each of its own notification, due now."""
    pg.execute("TRUNCATE events, event_deliveries, event_attempts")
    pg.execute(
        f"""
        INSERT INTO events ({EVENT_COLUMNS})
        SELECT md5('e' || g)::uuid, 'notification.delivered', md5('n' || g)::uuid, NULL,
               'default',
               json_build_object('status', 'delivered', 'delivered_via', 'hooks',
                                 'hops', json_build_array(json_build_object(
                                     'channel', 'hooks', 'state', 'delivered'))),
               now()
          FROM generate_series(1, $1::int) AS g
        """,
        count,
    )
    pg.execute(
        f"""
        INSERT INTO event_deliveries ({DELIVERY_COLUMNS})
        SELECT id, 'bench', NULL, notification_id, 'pending', 0, 0, 'scheduled', now(), NULL,
               NULL, NULL, NULL, now(), now()
          FROM events
        """
    )


def backend_cpu(pg: bench.Pg, database: str) -> dict[int, float]:
    """CPU seconds of each backend of ``database`` but the bench's own connection."""
    rows = pg.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return {r["pid"]: bench.proc_cpu(r["pid"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--app-dir", type=Path, help="a directory holding another app/")
    parser.add_argument("--within", type=float, default=60.0, help="give up on a run after")
    args = parser.parse_args()
    if not 1 <= args.runs <= 10 or not 1 <= args.events <= 50_000:
        raise SystemExit("bounded: --runs 1..10, --events 1..50000")
    ns = argparse.Namespace(keep=False, app_dir=args.app_dir)
    b = bench.Bench(ns)
    runs = []
    failed = True
    try:
        b.setup()
        assert b.pg is not None
        env = b.herald_env(bench.sqlalchemy_url(b.dsn)) | {"HERALD_CONFIG": str(b.events_config)}
        for run in range(args.runs):
            fill(b.pg, args.events)
            proc = b.procs.start("events", [bench.HERALD, "events"], env)
            b.wait_listening(proc)
            pg0 = backend_cpu(b.pg, b.database)
            cpu0, began = proc.cpu_seconds(), time.monotonic()
            b.pg.execute("SELECT pg_notify('herald_events', '')")
            delivered = 0
            while delivered < args.events and time.monotonic() - began < args.within:
                time.sleep(0.05)
                delivered = b.pg.val(
                    "SELECT count(*) FROM event_deliveries WHERE status = 'delivered'"
                )
            seconds = time.monotonic() - began
            cpu = proc.cpu_seconds() - cpu0
            pg1 = backend_cpu(b.pg, b.database)
            pg_cpu = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
            b.procs.stop(proc)
            result = {
                "delivered": delivered,
                "seconds": round(seconds, 2),
                "events_per_s": round(delivered / seconds, 1),
                "cpu_ms_per_event": round(1000 * cpu / delivered, 3) if delivered else None,
                "pg_cpu_ms_per_event": round(1000 * pg_cpu / delivered, 3) if delivered else None,
            }
            runs.append(result)
            bench.log(f"run {run + 1}: {result}")
        failed = False
    finally:
        b.teardown(failed)
    per_event = [r["cpu_ms_per_event"] for r in runs if r["cpu_ms_per_event"] is not None]
    print(
        json.dumps(
            {
                "cpu_ms_per_event": statistics.median(per_event) if per_event else None,
                "pg_cpu_ms_per_event": statistics.median(
                    r["pg_cpu_ms_per_event"] for r in runs if r["pg_cpu_ms_per_event"] is not None
                )
                if per_event
                else None,
                "events_per_s": statistics.median(r["events_per_s"] for r in runs),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
