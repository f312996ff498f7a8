"""When the next round runs: a pure decision from the schedule, jitter and Retry-After."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta

MAX_RETRY_AFTER = 3600.0
"""A provider's Retry-After is honoured up to an hour; a longer one is clamped to this."""


def rounds_allowed(schedule: Sequence[float]) -> int:
    """N delays between rounds allow N + 1 rounds."""
    return len(schedule) + 1


def next_round_at(
    *,
    now: datetime,
    schedule: Sequence[float],
    jitter: float,
    rounds_done: int,
    retry_after: float | None,
    expires_at: datetime | None,
    rng: random.Random,
) -> datetime | None:
    """When round ``rounds_done + 1`` of this set may start, or ``None`` when none is left.

    The delay is ``schedule[rounds_done - 1]`` times a factor drawn from
    ``[1 - jitter, 1 + jitter]``, and never shorter than the longest Retry-After a provider sent
    in this round (clamped to ``MAX_RETRY_AFTER``). A time past ``expires_at`` is moved to
    ``expires_at``, when the worker will mark the notification expired.
    """
    if rounds_done < 1 or rounds_done >= rounds_allowed(schedule):
        return None
    delay = schedule[rounds_done - 1]
    if jitter:
        delay *= rng.uniform(1.0 - jitter, 1.0 + jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    when = now + timedelta(seconds=delay)
    if expires_at is not None and when > expires_at:
        return expires_at
    return when
