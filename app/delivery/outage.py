"""How a loop that waits out a database outage backs off and says so.

An operator reading the log of a worker whose database is down (or misnamed, or refusing its
password) wants the cause once, a short line per retry so they can see it is still trying and
how long it waits, and one line when it is over; the traceback is for DEBUG.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from app.store.db import brief

MAX_BACKOFF = 30.0
FIRST_BACKOFF = 0.5


@dataclass
class Backoff:
    """Waits that double from ``first`` up to ``cap``; after ``reset`` they start over."""

    first: float = FIRST_BACKOFF
    cap: float = MAX_BACKOFF
    current: float = 0.0

    def next(self) -> float:
        self.current = min(self.cap, max(self.first, self.current * 2))
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class Outage:
    """Backoff and log lines for one loop's view of an unavailable database.

    ``failed`` after each failed try returns how long to wait (doubling from ``first`` up to
    ``cap``); ``recovered`` after a try that worked. ``step_level`` is the level of the lines
    after the first: a side loop whose main loop already reports the outage passes ``DEBUG``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str = "database",
        *,
        first: float = FIRST_BACKOFF,
        cap: float = MAX_BACKOFF,
        step_level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.what = what
        self.step_level = step_level
        self._backoff = Backoff(first, cap)
        self._cause: str | None = None
        self._since = 0.0

    def failed(self, exc: BaseException) -> float:
        """Log this failure as the outage's first line or as one more step; the wait."""
        backoff = self._backoff.next()
        cause = brief(exc)
        wait = f"{backoff:g}s"
        if self._cause is None:
            self._since = time.monotonic()
            self.logger.warning("%s unavailable: %s; retrying in %s", self.what, cause, wait)
        elif cause != self._cause:
            self.logger.warning(
                "%s still unavailable, now: %s; retrying in %s", self.what, cause, wait
            )
        else:
            self.logger.log(
                self.step_level, "%s still unavailable; retrying in %s", self.what, wait
            )
        self.logger.debug("%s unavailable", self.what, exc_info=exc)
        self._cause = cause
        return backoff

    def recovered(self) -> None:
        """A try worked: say so once if it ends an outage, and start the next from ``first``."""
        if self._cause is not None:
            self.logger.info(
                "%s reachable again after %.0fs", self.what, time.monotonic() - self._since
            )
        self._cause = None
        self._backoff.reset()
