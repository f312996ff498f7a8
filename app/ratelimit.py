"""Rate limits: ``30/s``, ``100/m``, ``1000/h``, as a sliding window.

One sliding-window log serves both users: API keys (``SlidingWindow.try_acquire`` answers at
once: 429 with Retry-After) and channels (``RateLimiter.acquire`` waits for a slot up to the
attempt's deadline). A sliding window rather than a refilling bucket: a bucket of size N lets up
to 2N through some windows of one period, which providers that count per window (Telegram,
Twilio) answer with 429.

On PostgreSQL a channel's window is the fleet's: every worker and API process takes its slots
from one row (``app.store.fleet.RateWindows``), so four workers on a ``20/m`` channel still send
20 a minute. A send that must wait sleeps on the clock between two statements, holding no
connection and no transaction; one waiter per process asks the database at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated, Protocol

from pydantic import AfterValidator

from app.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger("herald.ratelimit")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_FORMS = "rate_limit must look like 30/s, 100/m or 1000/h"


def parse_rate(value: object) -> tuple[int, float] | None:
    """``(count, per_seconds)`` from ``"30/s"``; ``None`` for no limit; ``ValueError`` else."""
    if value is None:
        return None
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(_FORMS)
    count, _, unit = value.partition("/")
    per = _UNITS.get(unit.strip())
    if not count.strip().isdigit() or int(count) < 1 or per is None:
        raise ValueError(_FORMS)
    return int(count), per


def _checked_rate(value: str) -> str:
    """``value`` as written, when ``parse_rate`` reads it; its ``ValueError`` when not."""
    parse_rate(value)
    return value


RateLimit = Annotated[str, AfterValidator(_checked_rate)]
"""An API key's or a channel's ``rate_limit`` setting, kept as written (``parse_rate`` reads it)."""


class SlidingWindow:
    """At most ``count`` admissions in any window of ``per_seconds``; never waits."""

    def __init__(
        self, count: int, per_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.count = count
        self.per_seconds = per_seconds
        self._clock = clock
        self._admitted: deque[float] = deque()

    def try_acquire(self) -> float | None:
        """Take a slot and return ``None``, or return the seconds until one frees up."""
        now = self._clock()
        while self._admitted and self._admitted[0] <= now - self.per_seconds:
            self._admitted.popleft()
        if len(self._admitted) < self.count:
            self._admitted.append(now)
            return None
        return self._admitted[0] + self.per_seconds - now


class SharedWindow(Protocol):
    """A window kept outside the process (``app.store.fleet.RateWindows`` for one channel)."""

    async def try_acquire(self) -> float | None:
        """As ``SlidingWindow.try_acquire``, for every process that shares the window;
        ``ConnectionError`` when the store cannot be reached."""
        ...


class RateLimiter:
    """A window shared by every delivery through one channel in this process (and, with
    ``shared``, in every process that shares it); waits for a slot."""

    def __init__(
        self,
        count: int,
        per_seconds: float,
        clock: Clock = SYSTEM_CLOCK,
        *,
        shared: SharedWindow | None = None,
    ) -> None:
        self._window = SlidingWindow(count, per_seconds, clock.monotonic)
        self._shared = shared
        self._clock = clock
        self._lock = asyncio.Lock()

    async def _try_acquire(self) -> float | None:
        if self._shared is not None:
            try:
                return await self._shared.try_acquire()
            except ConnectionError as exc:
                # The limit is still kept in this process meanwhile: a database outage does
                # not let a worker send unbounded (its rounds cannot be saved then anyway).
                logger.warning("shared rate window unreachable, keeping it locally: %s", exc)
        return self._window.try_acquire()

    async def acquire(self, within: float) -> float | None:
        """Wait up to ``within`` seconds for a slot: the seconds it took, or ``None`` if no
        slot came in time (then no slot is taken)."""
        began = self._clock.monotonic()
        deadline = began + within
        async with self._lock:
            while (wait := await self._try_acquire()) is not None:
                if self._clock.monotonic() + wait > deadline:
                    return None
                await self._clock.sleep(wait)
            return self._clock.monotonic() - began
