"""The job queues a Python team would otherwise use for Herald's job, for ``make bench``'s peers.

Each delivers the same notification JSON Herald's webhook channel sends (the Standard Webhooks
body and its ``webhook-id`` / ``webhook-timestamp`` headers, unsigned as the bench's channel is)
to the same sink, one job per notification, from a backlog enqueued before the worker starts:

celery         Celery 5 on the Redis broker: ``task_acks_late=True``, the threads pool at
               concurrency 32 (``celery -A peers worker --pool threads --concurrency 32``),
               ``worker_prefetch_multiplier`` PEERS_CELERY_PREFETCH (default 4: Celery's
               optimizing guide asks for a large multiplier for many short tasks, 1 for long
               ones; 4 × 32 = 128 messages reserved), no result backend; the task POSTs with one
               shared ``httpx.Client``.
arq            arq on Redis, ``max_jobs=32`` (``arq peers.ArqWorker``), results kept as arq does
               by default; the task POSTs with one ``httpx.AsyncClient`` made at start-up.
procrastinate  procrastinate on PostgreSQL (its own database, its schema applied by
               ``procrastinate schema --apply``), async task, ``procrastinate worker
               --concurrency 32`` (LISTEN/NOTIFY on, jobs kept as by default), the
               PsycopgConnector's pool up to 33 connections (PEERS_PG_POOL); the task POSTs
               with one ``httpx.AsyncClient``.

Settings come from the environment: PEERS_SINK_URL (the sink's POST URL), PEERS_REDIS_URL (a
Redis database of the bench's own), PEERS_PG_DSN (procrastinate's database). With bench/ on
PYTHONPATH (bench/run.py starts the workers so):

    python bench/peers.py enqueue celery 5000     # the backlog, then start the worker
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import httpx

SINK_URL = os.environ.get("PEERS_SINK_URL", "http://127.0.0.1:9100/hook")
REDIS_URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/13")
PG_DSN = os.environ.get("PEERS_PG_DSN", "postgresql://postgres@127.0.0.1:5432/herald_peers")
CONCURRENCY = 32
CELERY_PREFETCH = int(os.environ.get("PEERS_CELERY_PREFETCH", "4"))
LIMITS = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
TIMEOUT = httpx.Timeout(10.0)


def notification() -> dict[str, Any]:
    """One notification's ``data``, as Herald's webhook payload carries the bench's template."""
    return {
        "id": str(uuid.uuid4()),
        "route": "default",
        "subject": "Disk almost full",
        "text": "db-1: / at 93%",
        "html": None,
        "severity": "warning",
        "source": "bench",
        "metadata": {"host": "db-1", "check": "disk"},
        "recipient": {},
    }


def request(data: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers Herald's webhook channel sends for ``data``."""
    timestamp = int(time.time())
    body = json.dumps(
        {"type": "notification", "timestamp": timestamp, "data": data}, separators=(",", ":")
    ).encode()
    headers = {
        "content-type": "application/json",
        "webhook-id": data["id"],
        "webhook-timestamp": str(timestamp),
    }
    return body, headers


# --- Celery ------------------------------------------------------------------------------------

from celery import Celery  # noqa: E402

celery_app = Celery("peers", broker=REDIS_URL)
celery_app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=CELERY_PREFETCH,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
app = celery_app  # what ``celery -A peers`` looks for
_sync_client: httpx.Client | None = None


@celery_app.task(name="peers.deliver")
def celery_deliver(data: dict[str, Any]) -> None:
    global _sync_client
    if _sync_client is None:
        _sync_client = httpx.Client(limits=LIMITS, timeout=TIMEOUT)
    body, headers = request(data)
    _sync_client.post(SINK_URL, content=body, headers=headers).raise_for_status()


# --- arq ---------------------------------------------------------------------------------------

from arq.connections import RedisSettings, create_pool  # noqa: E402


async def arq_startup(ctx: dict[str, Any]) -> None:
    ctx["http"] = httpx.AsyncClient(limits=LIMITS, timeout=TIMEOUT)


async def arq_shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()


async def arq_deliver(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    body, headers = request(data)
    response = await ctx["http"].post(SINK_URL, content=body, headers=headers)
    response.raise_for_status()


class ArqWorker:
    """``arq peers.ArqWorker``'s settings; bench/run.py starts it with :func:`run_arq`."""

    functions = [arq_deliver]  # noqa: RUF012
    on_startup = arq_startup
    on_shutdown = arq_shutdown
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = CONCURRENCY


def run_arq() -> None:
    """``arq peers.ArqWorker`` without its log line per job start and end (arq's CLI logs at
    INFO): a deployment at this rate would not keep them, and writing them costs CPU."""
    import logging

    from arq.worker import run_worker

    logging.basicConfig(level=logging.WARNING)
    run_worker(ArqWorker)  # type: ignore[arg-type]


# --- procrastinate -----------------------------------------------------------------------------

import procrastinate  # noqa: E402

# psycopg_pool's default pool holds 4 connections, one of them the worker's LISTEN: sized
# instead like the httpx pool, one connection for each job that may run at once (and the
# LISTEN one), as a deployment at concurrency 32 would be.
procrastinate_app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=PG_DSN, min_size=4, max_size=int(os.environ.get("PEERS_PG_POOL", "33"))
    )
)
_async_client: httpx.AsyncClient | None = None


@procrastinate_app.task(name="peers.deliver")
async def procrastinate_deliver(data: dict[str, Any]) -> None:
    global _async_client
    if _async_client is None:
        _async_client = httpx.AsyncClient(limits=LIMITS, timeout=TIMEOUT)
    body, headers = request(data)
    response = await _async_client.post(SINK_URL, content=body, headers=headers)
    response.raise_for_status()


# --- enqueueing --------------------------------------------------------------------------------


async def enqueue(system: str, count: int) -> None:
    if system == "celery":
        with celery_app.connection_for_write() as connection:
            for _ in range(count):
                celery_deliver.apply_async((notification(),), connection=connection)
    elif system == "arq":
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
        try:
            for start in range(0, count, CONCURRENCY):
                await asyncio.gather(
                    *(
                        pool.enqueue_job("arq_deliver", notification())
                        for _ in range(min(CONCURRENCY, count - start))
                    )
                )
        finally:
            await pool.aclose()
    elif system == "procrastinate":
        async with procrastinate_app.open_async():
            for start in range(0, count, 1000):
                await procrastinate_deliver.batch_defer_async(
                    *({"data": notification()} for _ in range(min(1000, count - start)))
                )
    else:
        raise SystemExit(f"unknown system {system!r}")


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] != "enqueue":
        raise SystemExit("usage: peers.py enqueue celery|arq|procrastinate COUNT")
    began = time.monotonic()
    asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
    print(json.dumps({"enqueued": int(sys.argv[3]), "seconds": round(time.monotonic() - began, 2)}))


if __name__ == "__main__":
    main()
