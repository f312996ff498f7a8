"""The retention sweep: a worker's side task that purges finished notifications past their
period, in small batches, without starving the API of the database.

Every ``retention.every`` it works through each status's cutoff groups (``app.retention``),
one batch (one short transaction) at a time. A batch that took longer than
``retention.batch_time`` halves the next one, a quick one doubles it (up to ``batch_size``);
after each batch the sweep pauses as long as the batch took, so other writers get the database
at least half the time (on SQLite, the API and the sweep share the process's one connection).
Once a pass has deleted something, SQLite's freed pages go back to the file system in short
``incremental_vacuum`` steps. Ranges of purged ids older than ``remember_purged`` are forgotten,
and the messages chats sent Herald's bots older than ``retention.inbound`` deleted the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.delivery.supervise import stopped
from app.retention import CutoffGroup, RetentionConfig, RetentionPeriods, cutoffs
from app.store.db import brief, unavailable_reason
from app.store.retention import RetentionStore

logger = logging.getLogger("herald.retention")

MIN_BATCH = 10


class RetentionSweep:
    def __init__(
        self,
        engine: AsyncEngine,
        config: RetentionConfig,
        routes: Mapping[str, RetentionPeriods | None],
        clock: Callable[[], datetime],
    ) -> None:
        self.store = RetentionStore(engine)
        self.config = config
        self.routes = dict(routes)
        self.clock = clock
        self.batch = min(config.batch_size, 100)
        """The next batch's size: starts small, grows while batches stay quick."""

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``retention.every`` until ``stop``; at once when (re)started."""
        while not stop.is_set():
            try:
                await self.sweep(stop)
            except Exception as exc:
                # The database is down: the delivery loop reports that; the purge waits for the
                # next pass. Anything else is a bug of ours, for the supervisor to report.
                if unavailable_reason(exc) is None:
                    raise
                logger.debug("retention sweep skipped: database unavailable: %s", brief(exc))
            await stopped(stop, self.config.every)

    async def sweep(self, stop: asyncio.Event | None = None) -> int:
        """One pass: purge every group down to its cutoff (or until ``stop``); how many."""
        now = self.clock()
        deleted = 0
        for group in cutoffs(self.config, self.routes, now):
            count = await self._batches(partial(self._purge, group, now), stop)
            deleted += count
        await self.store.forget_ranges(now - timedelta(seconds=self.config.remember_purged))
        if self.config.inbound is not None:
            before = now - timedelta(seconds=self.config.inbound)
            inbound = await self._batches(partial(self.store.purge_inbound, before), stop)
            if inbound:
                logger.info("retention purged %d inbound messages", inbound)
        if deleted:
            logger.info("retention purged %d finished notifications", deleted)
            await self.reclaim(stop)
        return deleted

    async def reclaim(self, stop: asyncio.Event | None = None) -> None:
        """SQLite: give the freed pages back to the file system, a short step at a time."""
        while stop is None or not stop.is_set():
            loop = asyncio.get_running_loop()
            began = loop.time()
            left = await self.store.vacuum_step()
            if left == 0:
                break
            await asyncio.sleep(loop.time() - began)
        await self.store.checkpoint()

    async def _batches(
        self, purge: Callable[[int], Awaitable[int]], stop: asyncio.Event | None
    ) -> int:
        """``purge`` batch after batch (each sized, and followed by a pause, as the sweep's),
        until a batch finds fewer rows than it could take; how many it deleted."""
        deleted = 0
        while stop is None or not stop.is_set():
            loop = asyncio.get_running_loop()
            began = loop.time()
            size = self.batch
            count = await purge(size)
            took = loop.time() - began
            deleted += count
            self._resize(took)
            if count < size:
                break
            await asyncio.sleep(took)
        return deleted

    async def _purge(self, group: CutoffGroup, now: datetime, size: int) -> int:
        count = await self.store.purge_batch(group, size, now)
        metrics.retention_deleted.labels(group.status).inc(count)
        return count

    def _resize(self, took: float) -> None:
        if took > self.config.batch_time:
            self.batch = max(min(MIN_BATCH, self.config.batch_size), self.batch // 2)
        elif took < self.config.batch_time / 2:
            self.batch = min(self.config.batch_size, self.batch * 2)
