"""One supervisor for every loop a worker runs: the delivery loop and its side tasks.

A loop that fails is restarted after a pause that doubles with each failure in a row (a run
longer than the longest pause starts the count again). Each restart is counted in
``herald_task_restarts_total{task}`` and logged the way an operator can read: the cause once
(with its traceback at ERROR when it is a bug of ours; a database outage gets one line, since
the delivery loop reports outages itself), then a short line per repeat. Only ``stop`` ends
supervision, so a crashed side task can never skip the worker's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app import metrics
from app.delivery.outage import FIRST_BACKOFF, MAX_BACKOFF, Backoff
from app.store.db import brief, unavailable_reason

logger = logging.getLogger("herald.supervisor")

Task = Callable[[asyncio.Event], Awaitable[None]]
"""A loop that runs until the event it is given is set."""


class Restarts:
    """One supervised task's failures in a row: the pause before each restart, its log line."""

    def __init__(self, name: str, backoff: Backoff) -> None:
        self.name = name
        self.backoff = backoff
        self._cause: str | None = None

    def failed(self, exc: Exception | None, ran: float) -> float:
        """Count and log a failure (``None``: the task returned before ``stop``); the pause."""
        if ran > self.backoff.cap:  # it ran well for a while: a new series of failures
            self.backoff.reset()
            self._cause = None
        pause = self.backoff.next()
        metrics.task_restarts.labels(self.name).inc()
        cause = "ended on its own" if exc is None else brief(exc)
        outage = exc is not None and unavailable_reason(exc) is not None
        repeat, self._cause = cause == self._cause, cause
        if not repeat and not outage:
            logger.error(
                "%s task crashed: %s; restarting in %gs", self.name, cause, pause, exc_info=exc
            )
            return pause
        if repeat:
            level = logging.DEBUG if outage else logging.WARNING
            logger.log(level, "%s task failed again; restarting in %gs", self.name, pause)
        else:
            logger.warning(
                "%s task stopped: database unavailable: %s; restarting in %gs",
                self.name,
                cause,
                pause,
            )
        logger.debug("%s task stopped", self.name, exc_info=exc)
        return pause


async def supervised(
    name: str,
    task: Task,
    stop: asyncio.Event,
    *,
    first: float = FIRST_BACKOFF,
    cap: float = MAX_BACKOFF,
) -> None:
    """Run ``task(stop)`` until ``stop`` is set, restarting it whenever it fails.

    ``name`` is the metric's label value: one of a fixed few, never built from data.
    """
    metrics.task_restarts.labels(name)  # the series exists, at 0, before any restart
    restarts = Restarts(name, Backoff(first, cap))
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        began = loop.time()
        error: Exception | None = None
        try:
            await task(stop)
        except Exception as exc:
            error = exc
        if error is None and stop.is_set():
            return
        await stopped(stop, restarts.failed(error, loop.time() - began))


async def stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stop`` is set first; whether it was: a loop's pause."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
