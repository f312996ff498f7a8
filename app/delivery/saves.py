"""Group commit of finished rounds: the rounds that finish while one save is being written go
together into the next transaction.

A round's save is cheap in SQL and dear in Python: a transaction of its own costs many times
the round's share of one transaction for many rounds (bench/results/levers.md, "group commit").
Waiting to fill a batch would add latency, so nothing waits: a save starts at once when none is
being written, and whatever queues up meanwhile is the next batch.

Each round still gets its own answer: saved, lease lost (``False``), or the exception its
transaction raised. A batch that fails for a reason other than the database being unreachable is
written again one round per transaction, so one bad round cannot fail the others. Retrying while
the database is unreachable stays with the caller, per round, exactly as for a single save.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Sequence

from app.store.db import unavailable_reason
from app.store.queue import FinishedRound, WorkQueue

logger = logging.getLogger("herald.worker")

MAX_BATCH = 64
"""Rounds per transaction at most."""


class RoundSaver:
    """Saves finished rounds under this worker's lease, as many per transaction as are waiting."""

    def __init__(
        self,
        store: WorkQueue,
        worker_id: str,
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.max_batch = max_batch
        self._queue: deque[tuple[FinishedRound, asyncio.Future[bool]]] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, finished: FinishedRound) -> bool:
        """Write ``finished`` with the next batch; ``False`` when this worker's lease was lost.

        Cancelling the caller does not withdraw a save already queued: the round happened, and
        writing it is better than sending it again after the lease runs out.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((finished, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="herald-saves")
        return await future

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every queued save to be written; whether it was.

        On timeout the saves still waiting are abandoned (the transaction being written is
        rolled back): their notifications stay claimed until released or their lease runs out.
        """
        flusher = self._flusher
        if flusher is None or flusher.done():
            return True
        done, _ = await asyncio.wait([flusher], timeout=grace)
        if done:
            return True
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        return False

    async def _flush(self) -> None:
        batch: list[tuple[FinishedRound, asyncio.Future[bool]]] = []
        try:
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.max_batch:
                    batch.append(self._queue.popleft())
                await self._write(batch)
        finally:
            # Cancelled (shutdown gave up, or the loop is closing): nobody may wait forever.
            for _, future in [*batch, *self._queue]:
                future.cancel()
            self._queue.clear()

    async def _write(self, batch: list[tuple[FinishedRound, asyncio.Future[bool]]]) -> None:
        try:
            saved = await self._transaction([finished for finished, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or unavailable_reason(exc) is not None:
                for _, future in batch:
                    _settle(future, exc)
                return
            logger.warning(
                "saving %d rounds together failed (%s); saving them one by one",
                len(batch),
                type(exc).__name__,
            )
            for item in batch:
                await self._write([item])
            return
        for finished, future in batch:
            _settle(future, finished.notification_id in saved)

    async def _transaction(self, rounds: Sequence[FinishedRound]) -> set[uuid.UUID]:
        return await self.store.save_rounds(rounds, worker_id=self.worker_id)


def _settle(future: asyncio.Future[bool], outcome: bool | Exception) -> None:
    if future.done():  # its caller was cancelled; the round was written all the same
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
