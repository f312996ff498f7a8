"""baseline_deliver: the least code that does the work Herald's worker does, on asyncpg.

A claimer takes due rows in batches (the same ``UPDATE … WHERE id IN (SELECT … ORDER BY
next_attempt_at LIMIT n FOR UPDATE SKIP LOCKED) RETURNING`` under a lease that Herald uses);
``--concurrency`` senders (Herald's worker default, 32) POST each as the same Standard Webhooks
JSON payload with the same HTTP client (Herald's ``Outbound``, httpx requests handed straight to
Herald's connection pool, ``app.channels.http_pool``, with Herald's limits; only
Herald's outbound address guard is left out); one writer records, in a single statement per
group of finished deliveries, an attempt row each and the notification's new state (delivered,
hops, attempt count, lease cleared) only while the lease is still held. No ORM, no
orchestrator, no circuit breaker, no metrics.

    BENCH_DSN=postgresql://postgres@127.0.0.1:5432/herald_bench \\
        .venv/bin/python bench/baseline_deliver.py --url http://127.0.0.1:9100/hook
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from app.channels.http_pool import PooledTransport
from app.channels.outbound import Outbound
from app.runtime import HTTP_LIMITS

LEASE = timedelta(seconds=60)
IDLE_SLEEP = 0.01
EXCERPT = 2048

CLAIM = """
UPDATE notifications SET status = 'delivering', claimed_by = $1, lease_expires_at = $2,
       updated_at = $3
 WHERE id IN (SELECT id FROM notifications
               WHERE status = 'pending' AND next_attempt_at <= $3
               ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING id, route, subject, text, html, severity, source, metadata, recipient, round
"""

# One statement: mark the claimed rows done (only while our lease holds) and insert an
# attempt for each row that was marked.
SAVE = """
WITH r AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[],
                         $6::timestamptz[], $7::int[], $8::text[])
        AS t(id, attempt_id, outcome, provider_status, excerpt, started_at, duration_ms, hops)
), done AS (
    UPDATE notifications n
       SET status = CASE WHEN r.outcome = 'delivered' THEN 'delivered' ELSE 'failed' END,
           hops = r.hops::json, round = n.round + 1, trigger = 'scheduled',
           attempt_count = n.attempt_count + 1,
           delivered_via = CASE WHEN r.outcome = 'delivered' THEN '"hooks"'::json END,
           delivered_at = CASE WHEN r.outcome = 'delivered' THEN r.started_at END,
           next_attempt_at = NULL, updated_at = $9, claimed_by = NULL, lease_expires_at = NULL
      FROM r
     WHERE n.id = r.id AND n.status = 'delivering' AND n.claimed_by = $10
    RETURNING n.id
)
INSERT INTO attempts (id, notification_id, channel, channel_type, round, hop, trigger, outcome,
                      error_class, error_code, error_message, provider_status,
                      provider_message_id, response_excerpt, started_at, duration_ms)
SELECT r.attempt_id, r.id, 'hooks', 'webhook', 1, 0, 'scheduled', r.outcome,
       CASE WHEN r.outcome = 'failed' THEN 'transient' END,
       CASE WHEN r.outcome = 'failed' THEN 'http_' || r.provider_status END,
       NULL, r.provider_status, NULL, r.excerpt, r.started_at, r.duration_ms
  FROM r JOIN done ON done.id = r.id
"""


def hops_json(delivered: bool) -> str:
    return json.dumps(
        [
            {
                "channel": "hooks",
                "state": "delivered" if delivered else "failed",
                "attempts": 1,
                "last_error": None,
            }
        ]
    )


HOPS_DELIVERED = hops_json(True)
HOPS_FAILED = hops_json(False)


def uuid7() -> uuid.UUID:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class Deliverer:
    def __init__(self, pool: asyncpg.Pool, http: Outbound, args: argparse.Namespace):
        self.pool = pool
        self.http = http
        self.url = args.url
        self.concurrency = args.concurrency
        self.batch = args.batch
        self.worker_id = f"baseline-{socket.gethostname()[:20]}-{os.getpid()}"
        self.queue: asyncio.Queue[asyncpg.Record] = asyncio.Queue()
        self.results: list[tuple[Any, ...]] = []
        self.have_results = asyncio.Event()
        self.outstanding = 0  # claimed and not yet written
        self.room = asyncio.Event()
        self.room.set()

    async def claimer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self.batch - self.outstanding
            if free < self.batch // 2:
                self.room.clear()
                await self.room.wait()
                continue
            now = datetime.now(UTC)
            rows = await self.pool.fetch(CLAIM, self.worker_id, now + LEASE, now, free)
            if not rows:
                await asyncio.sleep(IDLE_SLEEP)
                continue
            self.outstanding += len(rows)
            for row in rows:
                self.queue.put_nowait(row)

    async def sender(self) -> None:
        while True:
            row = await self.queue.get()
            started_at = datetime.now(UTC)
            began = time.perf_counter()
            timestamp = int(time.time())
            body = json.dumps(
                {
                    "type": "notification",
                    "timestamp": timestamp,
                    "data": {
                        "id": str(row["id"]),
                        "route": row["route"],
                        "subject": row["subject"],
                        "text": row["text"],
                        "html": row["html"],
                        "severity": row["severity"],
                        "source": row["source"],
                        "metadata": json.loads(row["metadata"]),
                        "recipient": json.loads(row["recipient"]),
                    },
                },
                separators=(",", ":"),
            ).encode()
            try:
                response = await self.http.post(
                    self.url,
                    content=body,
                    headers={
                        "content-type": "application/json",
                        "webhook-id": str(row["id"]),
                        "webhook-timestamp": str(timestamp),
                    },
                    timeout=10.0,
                )
                status, excerpt = response.status_code, response.text[:EXCERPT]
                ok = response.is_success
            except httpx.HTTPError:
                status, excerpt, ok = None, None, False
            duration_ms = round((time.perf_counter() - began) * 1000)
            self.results.append((row["id"], ok, status, excerpt, started_at, duration_ms))
            self.have_results.set()

    async def writer(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and self.outstanding == 0):
            if not self.results:
                self.have_results.clear()
                try:
                    await asyncio.wait_for(self.have_results.wait(), timeout=0.2)
                except TimeoutError:
                    continue
            done, self.results = self.results, []
            await self.pool.execute(
                SAVE,
                [r[0] for r in done],
                [uuid7() for _ in done],
                ["delivered" if r[1] else "failed" for r in done],
                [r[2] for r in done],
                [r[3] for r in done],
                [r[4] for r in done],
                [r[5] for r in done],
                [HOPS_DELIVERED if r[1] else HOPS_FAILED for r in done],
                datetime.now(UTC),
                self.worker_id,
            )
            self.outstanding -= len(done)
            self.room.set()


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=2, max_size=4)
    http = Outbound(PooledTransport(HTTP_LIMITS))
    deliverer = Deliverer(pool, http, args)
    senders = [asyncio.create_task(deliverer.sender()) for _ in range(args.concurrency)]
    writer = asyncio.create_task(deliverer.writer(stop))
    claimer = asyncio.create_task(deliverer.claimer(stop))
    print("baseline_deliver ready", flush=True)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, writer, claimer], return_when=asyncio.FIRST_COMPLETED)
    for task in (writer, claimer):
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    claimer.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(writer, timeout=10)
    for task in senders:
        task.cancel()
    await http.aclose()
    await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the sink's webhook URL")
    parser.add_argument("--concurrency", type=int, default=32, help="deliveries in flight")
    parser.add_argument("--batch", type=int, default=64, help="rows claimed per query")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (herald worker runs on asyncio.run)",
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
