"""Group commit: what finishes while one save is being written goes together into the next
transaction. The worker's finished rounds (``RoundSaver``) and the event dispatcher's finished
tries are saved so.

A round's save is cheap in SQL and dear in Python: a transaction of its own costs many times
the round's share of one transaction for many rounds (bench/results/levers.md, "group commit").
Waiting to fill a batch would add latency, so nothing waits: a save starts at once when none is
being written, and whatever queues up meanwhile is the next batch.

Each item still gets its own answer: saved, lease lost (``False``), or the exception its
transaction raised. A batch that fails for a reason other than the database being unreachable is
written again one item per transaction, so one bad item cannot fail the others. Retrying while
the database is unreachable stays with the caller, per item, exactly as for a single save.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable, Sequence
from typing import Generic, TypeVar

from app.store.db import unavailable_reason
from app.store.queue import FinishedRound, WorkQueue

logger = logging.getLogger("herald.worker")

MAX_BATCH = 64
"""Items per transaction at most."""

T = TypeVar("T")


class GroupSaver(Generic[T]):
    """Saves items under a lease, as many per transaction as are waiting.

    ``write`` writes a batch in one transaction and answers the ``key`` of each item it wrote
    (the others' lease was lost); ``what`` names the items in the log.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Collection[Hashable]]],
        key: Callable[[T], Hashable],
        *,
        what: str,
        max_batch: int = MAX_BATCH,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        self.write = write
        self.key = key
        self.what = what
        self.max_batch = max_batch
        self.expected = expected
        """Failures that are one item's answer (a taken idempotency key), not worth a
        warning when they fail a batch."""
        self._queue: deque[tuple[T, asyncio.Future[bool]]] = deque()
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, finished: T) -> bool:
        """Write ``finished`` with the next batch; ``False`` when its lease was lost.

        Cancelling the caller does not withdraw a save already queued: the round (or try)
        happened, and writing it is better than sending it again after the lease runs out.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((finished, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="herald-saves")
        return await future

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for every queued save to be written; whether it was.

        On timeout the saves still waiting are abandoned (the transaction being written is
        rolled back): what they were for stays claimed until released or its lease runs out.
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
        batch: list[tuple[T, asyncio.Future[bool]]] = []
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

    async def _write(self, batch: list[tuple[T, asyncio.Future[bool]]]) -> None:
        try:
            saved = await self.write([finished for finished, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or unavailable_reason(exc) is not None:
                for _, future in batch:
                    _settle(future, exc)
                return
            logger.log(
                logging.DEBUG if isinstance(exc, self.expected) else logging.WARNING,
                "saving %d %s together failed (%s); saving them one by one",
                len(batch),
                self.what,
                type(exc).__name__,
            )
            for item in batch:
                await self._write([item])
            return
        for finished, future in batch:
            _settle(future, self.key(finished) in saved)


class RoundSaver(GroupSaver[FinishedRound]):
    """Saves finished rounds under this worker's lease, as many per transaction as are waiting."""

    def __init__(self, store: WorkQueue, worker_id: str, *, max_batch: int = MAX_BATCH) -> None:
        super().__init__(self._transaction, _notification_id, what="rounds", max_batch=max_batch)
        self.store = store
        self.worker_id = worker_id

    async def _transaction(self, rounds: Sequence[FinishedRound]) -> Collection[Hashable]:
        return await self.store.save_rounds(rounds, worker_id=self.worker_id)


def _notification_id(finished: FinishedRound) -> Hashable:
    return finished.notification_id


def _settle(future: asyncio.Future[bool], outcome: bool | Exception) -> None:
    if future.done():  # its caller was cancelled; the round was written all the same
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
