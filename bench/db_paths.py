"""CPU and round trips of the database step alone: Herald's paths against leaner ways.

One process, one connection at a time, sequential: the figures are this process's CPU time per
operation (``time.process_time``) and the wall time per operation, each the median of
--rounds interleaved rounds of --ops operations. No HTTP, no FastAPI: only what the accept
step and the worker's save step cost in SQLAlchemy/asyncpg.

    .venv/bin/python bench/db_paths.py            # creates and drops its own database

accept paths (one notification stored and announced):
    orm            Herald before its Intake: session.add + flush, SELECT pg_notify, commit
    core           Core INSERT of the row + pg_notify in one transaction
    core_one       one statement in autocommit: INSERT … in a CTE with pg_notify
    intake         Herald now (app.store.intake.Intake.add_many): the CTE statement on the
                   pooled driver connection
    asyncpg        one INSERT on a raw asyncpg connection (what baseline_ingest does)

save paths (a delivered round written: new state + one attempt, lease checked):
    rounds_each    WorkQueue.save_rounds, one round per transaction
    rounds_batch32 WorkQueue.save_rounds, 32 rounds per transaction, the statements run through
                   SQLAlchemy Core (Herald's path on SQLite before issue 18, and on PostgreSQL
                   before the plain-SQL path)
    store_batch32  Herald's worker on PostgreSQL now (WorkQueue.save_rounds: the same
                   statements compiled once to plain SQL on the pooled driver connection)
    core_batch32   32 notifications per transaction: one UPDATE … RETURNING, one INSERT of the
                   attempts (Core over the same engine)
    asyncpg_batch32  the same two statements as one CTE on raw asyncpg (baseline_deliver)

claim paths (32 due notifications claimed under a lease, per notification):
    session_batch32  WorkQueue.claim through SQLAlchemy Core (SQLite's path before issue 18)
    store_batch32    WorkQueue.claim: one statement in autocommit on the driver connection
    asyncpg_batch32  baseline_deliver's claim on raw asyncpg

(bench/results/db_paths.json: --rounds 5 on the 2-core bench machine, with the plain-SQL path
then in app/store/delivery.py, now app/store/queue.py.
Recorded before the Intake and group commit existed, Herald's paths were ``orm`` and an ORM save
per round: 1.23 and 1.66 ms of CPU.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import bindparam, insert, inspect, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench
from sqlite_paths import delivered_attempt, delivered_round

from app.api.schemas import NotificationCreate
from app.config import RetryPolicy
from app.domain import NotificationStatus, RoundUpdate
from app.ids import uuid7
from app.runtime import ResolvedRoute
from app.service import new_notification
from app.store.db import create_engine, session_factory
from app.store.intake import Intake
from app.store.models import Attempt, Notification
from app.store.queue import FinishedRound, Statement, WorkQueue, columns_of
from app.store.repositories import NotificationRepository

ROUTE = ResolvedRoute("default", ["hooks"], "fallback", RetryPolicy(), None)
REQUEST = NotificationCreate.model_validate(
    {
        "subject": "Disk almost full",
        "text": "db-1: / at 93%",
        "severity": "warning",
        "source": "bench",
        "metadata": {"host": "db-1", "check": "disk"},
    }
)
COLUMNS = [(prop.columns[0].name, prop.key) for prop in inspect(Notification).column_attrs]


class _Core:
    """The store's statements through SQLAlchemy Core, each connection a transaction: how
    Herald ran them on SQLite before ``SqliteCalls`` (and on PostgreSQL before plain SQL)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self, statement: Statement) -> AsyncIterator[Any]:
        async with self.engine.begin() as connection:
            yield _CoreConnection(connection)

    autocommit = transaction


class _CoreConnection:
    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def rows(self, statement: Statement, params: dict[str, Any]) -> Any:
        return (await self.connection.execute(statement, params)).all()

    async def count(self, statement: Statement, params: dict[str, Any]) -> int:
        return int((await self.connection.execute(statement, params)).rowcount)

    async def many(self, statement: Statement, params: Any) -> None:
        await self.connection.execute(statement, list(params))


def row_of(notification: Notification) -> dict[str, Any]:
    return {name: getattr(notification, key) for name, key in COLUMNS}


async def measure(ops: int, step: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(ops):
        await step(i)
    return (
        1000 * (time.process_time() - cpu0) / ops,
        1000 * (time.perf_counter() - wall0) / ops,
    )


async def main_async(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    url = bench.sqlalchemy_url(dsn)
    engine = create_engine(url)
    intake = Intake(engine)
    sessions = session_factory(engine)
    raw = await asyncpg.connect(dsn)
    table = Notification.__table__
    core_one = text(
        "WITH n AS (INSERT INTO notifications ({cols}) VALUES ({vals}) RETURNING 1) "
        "SELECT pg_notify('herald_due', '') FROM n".format(
            cols=", ".join(f'"{name}"' for name, _ in COLUMNS),
            vals=", ".join(f":{name}" for name, _ in COLUMNS),
        )
    ).bindparams(*[bindparam(c.name, type_=c.type) for c in table.c])  # typed binds

    def fresh() -> Notification:
        row = new_notification(REQUEST, ROUTE, now=datetime.now(UTC), owner=None)
        return Notification(**{key: row[name] for name, key in COLUMNS})

    async def orm(_: int) -> None:
        async with sessions() as session:
            session.add(fresh())
            await session.flush()
            await NotificationRepository(session).announce_due()
            await session.commit()

    async def intake_add(_: int) -> None:
        await intake.add_many(
            [new_notification(REQUEST, ROUTE, now=datetime.now(UTC), owner=None)], announce=True
        )

    async def core(_: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(table), row_of(fresh()))
            await conn.execute(text("SELECT pg_notify('herald_due', '')"))

    async def core_single(_: int) -> None:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(core_one, row_of(fresh()))

    insert_sql = (
        f"INSERT INTO notifications ({', '.join(name for name, _ in COLUMNS)}) VALUES "
        f"({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))})"
    )
    json_columns = {
        "channels",
        "recipient",
        "metadata",
        "retry_schedule",
        "delivered_via",
        "last_error",
        "hops",
    }

    async def raw_insert(_: int) -> None:
        row = row_of(fresh())
        values = [
            json.dumps(row[name]) if name in json_columns else row[name] for name, _ in COLUMNS
        ]
        await raw.execute(insert_sql, *values)

    accept_paths = {
        "orm": orm,
        "core": core,
        "core_one": core_single,
        "intake": intake_add,
        "asyncpg": raw_insert,
    }
    results: dict[str, Any] = {"accept": {}, "save": {}}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in accept_paths}
    for _ in range(args.rounds):
        for name, step in accept_paths.items():
            samples[name].append(await measure(args.ops, step))
    for name, values in samples.items():
        results["accept"][name] = {
            "cpu_ms": round(statistics.median(v[0] for v in values), 3),
            "wall_ms": round(statistics.median(v[1] for v in values), 3),
        }
        print(f"accept {name}: {results['accept'][name]}", flush=True)

    # --- the worker's save ---------------------------------------------------------------
    worker_id = "bench-worker"

    async def claimed_ids(count: int) -> list[uuid.UUID]:
        rows = []
        for _ in range(count):
            n = fresh()
            n.status, n.claimed_by = NotificationStatus.DELIVERING, worker_id
            n.lease_expires_at = datetime.now(UTC) + timedelta(seconds=60)
            rows.append(row_of(n))
        async with engine.begin() as conn:
            await conn.execute(insert(table), rows)
        return [r["id"] for r in rows]

    def change_for() -> RoundUpdate:
        return delivered_round(datetime.now(UTC))

    def attempt_for(notification_id: uuid.UUID) -> dict[str, Any]:
        return delivered_attempt(notification_id, datetime.now(UTC))

    def finished(ids: list[uuid.UUID]) -> list[FinishedRound]:
        return [FinishedRound(i, change_for(), [attempt_for(i)]) for i in ids]

    store = WorkQueue(engine)
    core_store = WorkQueue(engine)
    core_store._database = _Core(engine)  # SQLite's way of running them, before issue 18

    async def rounds_each(ids: list[uuid.UUID]) -> None:
        for one in finished(ids):
            await store.save_rounds([one], worker_id=worker_id)

    async def rounds_batch(ids: list[uuid.UUID]) -> None:
        await core_store.save_rounds(finished(ids), worker_id=worker_id)

    async def store_batch(ids: list[uuid.UUID]) -> None:
        await store.save_rounds(finished(ids), worker_id=worker_id)

    async def core_batch(ids: list[uuid.UUID]) -> None:
        values = columns_of(change_for())
        async with engine.begin() as conn:
            done = await conn.execute(
                update(table)
                .where(
                    table.c.id.in_(ids),
                    table.c.status == NotificationStatus.DELIVERING,
                    table.c.claimed_by == worker_id,
                )
                .values(**values, claimed_by=None, lease_expires_at=None)
                .returning(table.c.id)
            )
            kept = {r[0] for r in done}
            attempts = [attempt_for(i) for i in ids if i in kept]
            await conn.execute(insert(Attempt.__table__), attempts)

    from baseline_deliver import HOPS_DELIVERED, SAVE

    async def raw_batch(ids: list[uuid.UUID]) -> None:
        now = datetime.now(UTC)
        await raw.execute(
            SAVE,
            ids,
            [uuid7() for _ in ids],
            ["delivered"] * len(ids),
            [200] * len(ids),
            ["{}"] * len(ids),
            [now] * len(ids),
            [1] * len(ids),
            [HOPS_DELIVERED] * len(ids),
            now,
            worker_id,
        )

    save_paths = {
        "rounds_each": rounds_each,
        "rounds_batch32": rounds_batch,
        "store_batch32": store_batch,
        "core_batch32": core_batch,
        "asyncpg_batch32": raw_batch,
    }
    save_samples: dict[str, list[tuple[float, float]]] = {name: [] for name in save_paths}
    batches = max(1, args.ops // 32)
    for _ in range(args.rounds):
        for name, step in save_paths.items():
            groups = [await claimed_ids(32) for _ in range(batches)]

            async def one(i: int, groups: list[list[uuid.UUID]] = groups, step: Any = step) -> None:
                await step(groups[i])

            cpu, wall = await measure(batches, one)
            save_samples[name].append((cpu / 32, wall / 32))
    for name, values in save_samples.items():
        results["save"][name] = {
            "cpu_ms": round(statistics.median(v[0] for v in values), 3),
            "wall_ms": round(statistics.median(v[1] for v in values), 3),
        }
        print(f"save {name} (per notification): {results['save'][name]}", flush=True)

    # --- the worker's claim --------------------------------------------------------------
    from baseline_deliver import CLAIM

    async def pending(count: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(table), [row_of(fresh()) for _ in range(count)])

    def lease() -> tuple[datetime, datetime]:
        now = datetime.now(UTC)
        return now, now + timedelta(seconds=60)

    async def claim_session(limit: int) -> int:
        now, until = lease()
        claimed = await core_store.claim(
            worker_id=worker_id, now=now, lease_until=until, limit=limit
        )
        return len(claimed)

    async def claim_store(limit: int) -> int:
        now, until = lease()
        claimed = await store.claim(worker_id=worker_id, now=now, lease_until=until, limit=limit)
        return len(claimed)

    async def claim_raw(limit: int) -> int:
        now, until = lease()
        return len(await raw.fetch(CLAIM, worker_id, until, now, limit))

    claim_paths = {
        "session_batch32": claim_session,
        "store_batch32": claim_store,
        "asyncpg_batch32": claim_raw,
    }
    claim_samples: dict[str, list[tuple[float, float]]] = {name: [] for name in claim_paths}
    for _ in range(args.rounds):
        for name, claim in claim_paths.items():
            await pending(32 * batches)

            async def take(_: int, claim: Any = claim) -> None:
                if await claim(32) != 32:
                    raise RuntimeError("claimed fewer than 32")

            cpu, wall = await measure(batches, take)
            claim_samples[name].append((cpu / 32, wall / 32))
    results["claim"] = {}
    for name, values in claim_samples.items():
        results["claim"][name] = {
            "cpu_ms": round(statistics.median(v[0] for v in values), 3),
            "wall_ms": round(statistics.median(v[1] for v in values), 3),
        }
        print(f"claim {name} (per notification): {results['claim'][name]}", flush=True)
    await raw.close()
    await intake.close()
    await engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.ops > 5000 or args.rounds > 20:
        raise SystemExit("bounded: --ops ≤ 5000, --rounds ≤ 20")
    database = f"herald_dbpaths_{__import__('os').getpid()}"
    admin = bench.Pg(bench.ADMIN_DSN)
    admin.execute(f'CREATE DATABASE "{database}"')
    dsn = bench.pg_dsn(database)
    try:
        import subprocess

        subprocess.run(
            [bench.HERALD, "migrate"],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**__import__("os").environ, "HERALD_DATABASE_URL": bench.sqlalchemy_url(dsn)},
        )
        results = asyncio.run(main_async(args, dsn))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
