"""The SQLite store's hot paths in-process, without HTTP: CPU and wall time per operation.

    PYTHONPATH=DIR .venv/bin/python bench/sqlite_paths.py   # DIR: the tree whose app/ to measure

accept   ``Intake.add_many`` of one notification, 64 callers at once (as 64 connections of
         wrk), --accepts in all: CPU ms per accept (this process: the event loop and
         aiosqlite's thread), accepts/s
claim    ``WorkQueue.claim`` of 32 due notifications, then ``save_rounds`` of their 32
         delivered rounds (one attempt each), --rounds times: CPU ms per notification

Each figure is the median of --repeat runs on a fresh database (WAL, synchronous=NORMAL, as
``herald serve`` opens it). Used for bench/results/levers.md, "SQLite (issue 18 part 1)":
run it once with PYTHONPATH on the tree before a change and once on the tree after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.api.schemas import NotificationCreate
from app.config import RetryPolicy
from app.domain import AttemptTrigger, Hop, HopState, NotificationStatus, RoundUpdate, Strategy
from app.ids import uuid7
from app.runtime import ResolvedRoute
from app.service import new_notification
from app.store.db import create_engine
from app.store.intake import Intake
from app.store.migrate import upgrade
from app.store.queue import FinishedRound, WorkQueue

ROUTE = ResolvedRoute(
    name="default", channels=["hooks"], strategy=Strategy.FALLBACK, retry=RetryPolicy(), ttl=None
)


REQUEST = NotificationCreate(
    subject="Disk almost full",
    text="db-1: / at 93%",
    severity="warning",
    source="bench",
    metadata={"host": "db-1", "check": "disk"},
)
"""The bench's POST body."""


def row() -> dict[str, Any]:
    return dict(new_notification(REQUEST, ROUTE, now=datetime.now(UTC), owner=None))


def cpu() -> float:
    return time.process_time()


async def accepts(url: str, total: int, callers: int) -> dict[str, float]:
    engine = create_engine(url)
    intake = Intake(engine)
    await intake.add_many([row()])  # connect
    left = [total]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            await intake.add_many([row()])

    began, cpu0 = time.perf_counter(), cpu()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall, used = time.perf_counter() - began, cpu() - cpu0
    await engine.dispose()
    return {"accept_cpu_ms": 1000 * used / total, "accepts_per_s": total / wall}


async def rounds(url: str, cycles: int, size: int = 32) -> dict[str, float]:
    engine = create_engine(url)
    intake = Intake(engine)
    store = WorkQueue(engine)
    rows = [row() for _ in range(cycles * size)]
    for start in range(0, len(rows), 500):
        await intake.add_many(rows[start : start + 500])
    claim_cpu = save_cpu = 0.0
    began = time.perf_counter()
    for _ in range(cycles):
        now = datetime.now(UTC)
        cpu0 = cpu()
        claimed = await store.claim(
            worker_id="w", now=now, lease_until=now + timedelta(seconds=60), limit=size
        )
        cpu1 = cpu()
        finished = [
            FinishedRound(
                c.id,
                delivered_round(now),
                [delivered_attempt(c.id, now)],
            )
            for c in claimed
        ]
        cpu2 = cpu()
        saved = await store.save_rounds(finished, worker_id="w")
        cpu3 = cpu()
        assert len(claimed) == size and len(saved) == size, (len(claimed), len(saved))
        claim_cpu += cpu1 - cpu0
        save_cpu += cpu3 - cpu2
    wall = time.perf_counter() - began
    await engine.dispose()
    n = cycles * size
    return {
        "claim_cpu_ms": 1000 * claim_cpu / n,
        "save_cpu_ms": 1000 * save_cpu / n,
        "claim_save_wall_ms": 1000 * wall / n,
    }


def delivered_round(now: datetime) -> RoundUpdate:
    """A first round that delivered through ``hooks`` at ``now``, as the benches save it."""
    return RoundUpdate(
        status=NotificationStatus.DELIVERED,
        hops=[Hop("hooks", HopState.DELIVERED, attempts=1)],
        next_attempt_at=None,
        updated_at=now,
        round=1,
        trigger=AttemptTrigger.SCHEDULED,
        attempt_count=1,
        delivered_via="hooks",
        delivered_at=now,
    )


def delivered_attempt(notification_id: uuid.UUID, now: datetime) -> dict[str, Any]:
    """A delivered first attempt's row, as the benches' rounds save it."""
    return {
        "id": uuid7(),
        "notification_id": notification_id,
        "channel": "hooks",
        "channel_type": "webhook",
        "round": 1,
        "hop": 0,
        "trigger": "scheduled",
        "outcome": "delivered",
        "error_class": None,
        "error_code": None,
        "error_message": None,
        "provider_status": 200,
        "provider_message_id": None,
        "response_excerpt": "{}",
        "started_at": now,
        "duration_ms": 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accepts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'herald.db'}"
            upgrade(url)
            result = asyncio.run(accepts(url, args.accepts, 64))
            result |= asyncio.run(rounds(url, args.rounds))
            runs.append(result)
    print(
        json.dumps(
            {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]} | {"runs": runs},
            default=str,
        )
    )


if __name__ == "__main__":
    main()
