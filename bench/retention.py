"""Retention under load: purge many finished notifications while the API keeps accepting.

    .venv/bin/python bench/retention.py                       # PostgreSQL 1,000,000, SQLite 200,000
    .venv/bin/python bench/retention.py --pg 200000 --sqlite 50000 --rate 50

For each database: fill it with N delivered notifications finished 60 days ago (one attempt
each; one ``INSERT … SELECT`` from a row Herald's own API accepted), then

1. idle: ``herald serve`` (API and worker) with retention off (every period ``null``); an
   open-loop client (bench/loadgen.py ``rate``) POSTs at --rate for --idle-seconds: the p99 of
   the accept latency;
2. purge: the same with ``retention: {delivered: 30d}``; the same client, in --chunk-seconds
   runs, until the seeded rows are gone: the p99 over the runs during which the sweep was
   purging, the time the purge took, and (SQLite) the p99 while the freed pages go back to the
   file system (the same load, in 5 s runs), and the file's size before and after.

Goal (issue 19): purge p99 ≤ 2x idle p99; the SQLite file shrinks. Prints one JSON object and
writes it to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

AGE = timedelta(days=60)
KEEP = "retention: {delivered: null, failed: null, partial: null, expired: null, cancelled: null}\n"
PURGE = "retention: {delivered: 30d, every: 1s}\n"


def p99(values: list[float]) -> float | None:
    return bench.percentile(values, 0.99)


def accept_ms(out: dict[str, Any]) -> list[float]:
    """Each request's send-to-answer time (ms) of a loadgen run; a request not accepted (202)
    stops the bench."""
    refused = [status for *_, status in out["requests"] if status != 202]
    if refused:
        raise RuntimeError(f"{len(refused)} requests not accepted: {sorted(set(refused))}")
    return [(answered - sent) * 1000 for _id, sent, answered, _status in out["requests"]]


class RetentionBench(bench.Bench):
    def write_configs(self) -> None:
        self.write_config()
        base = self.config.read_text()
        self.keep_config = self.tmp / "herald-keep.yaml"
        self.purge_config = self.tmp / "herald-purge.yaml"
        self.keep_config.write_text(base + KEEP)
        self.purge_config.write_text(base + PURGE)

    def serve_with(self, config: Path, url: str, name: str) -> bench.Proc:
        self.config = config
        return self.start_serve(url, worker=True, name=name)

    def load(self, seconds: float) -> list[float]:
        out = self.loadgen(
            [
                "rate",
                "--url",
                self.api(),
                "--rate",
                str(self.args.rate),
                "--duration",
                str(seconds),
                "--connections",
                "16",
            ],
            timeout=seconds + 60,
        )
        return accept_ms(out)

    def measure(
        self, url: str, remaining: Any, size: Any, free_pages: Any = None
    ) -> dict[str, Any]:
        """Idle p99, then p99 while the sweep purges; ``remaining()`` counts the seeded rows
        left, ``size()`` the database's bytes, ``free_pages()`` (SQLite) the pages the vacuum
        has still to give back."""
        serve = self.serve_with(self.keep_config, url, "keep")
        self.load(2)  # warm-up
        idle = self.load(self.args.idle_seconds)
        self.procs.stop(serve)
        seeded, before = remaining(), size()
        bench.log(f"idle p99 {p99(idle):.2f} ms over {len(idle)} requests; {seeded} to purge")

        serve = self.serve_with(self.purge_config, url, "purge")
        began = time.monotonic()
        during: list[float] = []
        chunks = []
        while True:
            latencies = self.load(self.args.chunk_seconds)
            left = remaining()
            during += latencies
            chunks.append({"left": left, "p99_ms": bench.rnd(p99(latencies))})
            bench.log(f"  {left} left; this run's p99 {p99(latencies):.2f} ms")
            if left == 0 or time.monotonic() - began > self.args.limit:
                break
        purge_seconds = time.monotonic() - began
        reclaim_began = time.monotonic()
        reclaiming: list[float] = []  # under the same load while SQLite's vacuum steps run
        while free_pages is not None and free_pages() > 0:
            if time.monotonic() - reclaim_began > self.args.settle:
                break
            reclaiming += self.load(5)
        reclaim_seconds = time.monotonic() - reclaim_began
        time.sleep(2)  # the checkpoint after the last vacuum step
        self.procs.stop(serve)
        after = size()
        idle_p99, purge_p99 = p99(idle), p99(during)
        return {
            "seeded": seeded,
            "left": chunks[-1]["left"],
            "purge_seconds_upper_bound": round(purge_seconds, 1),
            "deleted_per_s": round((seeded - chunks[-1]["left"]) / purge_seconds),
            "rate": self.args.rate,
            "idle_p99_ms": bench.rnd(idle_p99),
            "idle_p50_ms": bench.rnd(bench.percentile(idle, 0.5)),
            "purge_p99_ms": bench.rnd(purge_p99),
            "purge_p50_ms": bench.rnd(bench.percentile(during, 0.5)),
            "p99_ratio": bench.ratio(purge_p99, idle_p99),
            "requests": {"idle": len(idle), "purge": len(during)},
            "runs": chunks,
            "reclaim_seconds_upper_bound": round(reclaim_seconds, 1),
            "reclaim_p99_ms": bench.rnd(p99(reclaiming)) if reclaiming else None,
            "reclaim_p99_ratio": bench.ratio(p99(reclaiming), idle_p99) if reclaiming else None,
            "free_pages_left": None if free_pages is None else free_pages(),
            "bytes_before": before,
            "bytes_after": after,
        }

    # --- PostgreSQL ---

    def postgres(self, count: int) -> dict[str, Any]:
        assert self.pg is not None
        self.pg.execute("TRUNCATE notifications, attempts, idempotency_keys CASCADE")
        began = time.monotonic()
        self.fill(count)
        self.pg.execute(
            "UPDATE notifications SET status = 'delivered', delivered_at = now() - $1::interval,"
            " updated_at = now() - $1::interval, created_at = now() - $1::interval",
            AGE,
        )
        self.pg.execute(
            "INSERT INTO attempts (id, notification_id, channel, channel_type, round, hop,"
            " trigger, outcome, started_at, duration_ms)"
            " SELECT gen_random_uuid(), id, 'hooks', 'webhook', 1, 0, 'scheduled', 'delivered',"
            " updated_at, 5 FROM notifications"
        )
        self.pg.execute("VACUUM ANALYZE")
        bench.log(f"PostgreSQL: {count} finished notifications in {time.monotonic() - began:.0f}s")
        cutoff = datetime.now(UTC) - AGE / 2

        def remaining() -> int:
            assert self.pg is not None
            return int(
                self.pg.val(
                    "SELECT count(*) FROM notifications WHERE status = 'delivered'"
                    " AND updated_at < $1",
                    cutoff,
                )
            )

        def size() -> int:
            assert self.pg is not None
            return int(self.pg.val("SELECT pg_database_size(current_database())"))

        return self.measure(bench.sqlalchemy_url(self.dsn), remaining, size)

    # --- SQLite ---

    def sqlite_run(self, count: int) -> dict[str, Any]:
        path = self.tmp / "sqlite" / "herald.db"
        path.parent.mkdir(exist_ok=True)
        url = f"sqlite+aiosqlite:///{path}"
        self.migrate(url)
        self.config = self.keep_config
        serve = self.start_serve(url, name="sqlite-template")
        out = self.loadgen(["idle", "--url", self.api(), "--count", "1", "--gap", "0"])
        self.procs.stop(serve)
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        template = out["requests"][0][0].replace("-", "")
        old = (datetime.now(UTC) - AGE).strftime("%Y-%m-%d %H:%M:%S.%f")
        began = time.monotonic()
        columns = bench.NOTIFICATION_COLUMNS
        db.execute("BEGIN")
        db.execute(
            f"""
            WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?)
            INSERT INTO notifications (id, next_attempt_at, created_at, updated_at, {columns})
            SELECT printf('%012x', n) || lower(hex(randomblob(10))), NULL, ?, ?, {columns}
              FROM notifications AS t, g WHERE t.id = ?
            """,
            (count, old, old, template),
        )
        db.execute("DELETE FROM attempts WHERE notification_id = ?", (template,))
        db.execute("DELETE FROM notifications WHERE id = ?", (template,))
        db.execute("UPDATE notifications SET status = 'delivered', delivered_at = updated_at")
        db.execute(
            "INSERT INTO attempts (id, notification_id, channel, channel_type, round, hop,"
            " trigger, outcome, started_at, duration_ms)"
            " SELECT lower(hex(randomblob(16))), id, 'hooks', 'webhook', 1, 0, 'scheduled',"
            " 'delivered', updated_at, 5 FROM notifications"
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        bench.log(f"SQLite: {count} finished notifications in {time.monotonic() - began:.0f}s")
        cutoff = (datetime.now(UTC) - AGE / 2).strftime("%Y-%m-%d %H:%M:%S.%f")

        def remaining() -> int:
            return int(
                db.execute(
                    "SELECT count(*) FROM notifications WHERE status = 'delivered'"
                    " AND updated_at < ?",
                    (cutoff,),
                ).fetchone()[0]
            )

        def size() -> int:
            wal = path.with_name(path.name + "-wal")
            return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

        def free_pages() -> int:
            return int(db.execute("PRAGMA freelist_count").fetchone()[0])

        result = self.measure(url, remaining, size, free_pages)
        db.close()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", type=int, default=1_000_000, help="rows on PostgreSQL (0: skip)")
    parser.add_argument("--sqlite", type=int, default=200_000, help="rows on SQLite (0: skip)")
    parser.add_argument("--rate", type=float, default=50.0, help="POSTs per second")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--chunk-seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=float, default=900.0, help="longest purge measured (s)")
    parser.add_argument(
        "--settle", type=float, default=300.0, help="longest wait for SQLite's vacuum (s)"
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--app-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=bench.RESULTS / "retention.json")
    args = parser.parse_args()
    run = RetentionBench(args)
    results: dict[str, Any] = {"machine": bench.machine(), "git": bench.git_info()}
    failed = True
    try:
        run.setup()
        run.write_configs()
        if args.pg:
            results["postgresql"] = run.postgres(args.pg)
            bench.log(json.dumps(results["postgresql"]))
        if args.sqlite:
            results["sqlite"] = run.sqlite_run(args.sqlite)
            bench.log(json.dumps(results["sqlite"]))
        failed = False
    finally:
        run.teardown(failed=failed)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    os.sync()


if __name__ == "__main__":
    main()
