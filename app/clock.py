"""The clock that code which waits reads and sleeps on, so that tests can move time instead.

The rate limiter and the channels that wait on a provider's ``retry_after`` take a ``Clock``;
production passes ``SYSTEM_CLOCK`` (``time.monotonic`` and ``asyncio.sleep``), tests a clock
whose ``sleep`` moves time forward at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass on this clock."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
