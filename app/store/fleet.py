"""What every process on PostgreSQL shares of a channel: its rate window and its circuit.

Each statement is one round trip in autocommit on a pooled driver connection: no transaction is
held between statements, and none while a send waits for its window. Times are the database's
clock (``clock_timestamp()``), the one clock every process reads alike.

A rate window is a sliding-window log kept as a ring: ``admitted`` holds the times of the
channel's last ``count`` admissions, oldest first (filled with zeros at first). A send is
admitted when the oldest of them is at least ``per`` seconds old; the admission drops it and
appends now, in the one ``UPDATE`` that checks it, so concurrent admissions queue on the row's
lock and each checks the row as the one before left it (PostgreSQL re-reads an updated row
before it applies a waiting ``UPDATE``'s ``WHERE``). At most ``count`` sends in any window of
``per`` seconds, fleet-wide, as the in-process ``SlidingWindow`` does in one process; a refused
send learns when the oldest admission leaves the window.

A provider counts arrivals, not admissions, and the sends of one burst reach it a little apart
(the processes that admitted them, the network): an admission leaves the window ``GUARD``
seconds after ``per``, so that sends taken as the window frees do not land among the last of
the burst before (bench/results/levers.md, "Fleet-wide rate window").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain import CircuitState
from app.store.db import unavailable_reason
from app.store.sql import driver_connection

_NOW = "extract(epoch FROM clock_timestamp())::float8"

GUARD = 0.05
"""Seconds an admission stays in the window beyond the window's length."""

TAKE_SLOT = f"""
WITH taken AS (
    UPDATE channel_rate_windows SET admitted = admitted[2:] || {_NOW}
    WHERE channel = $1 AND rate = $2 AND admitted[1] <= {_NOW} - $3::float8
    RETURNING 0::float8 AS wait
)
SELECT wait FROM taken
UNION ALL
SELECT admitted[1] + $3::float8 - {_NOW} FROM channel_rate_windows
WHERE channel = $1 AND rate = $2 AND NOT EXISTS (SELECT 1 FROM taken)
"""
"""``$1`` channel, ``$2`` rate key, ``$3`` seconds an admission is held (the window and
``GUARD``): one row, ``0`` when a slot was taken, else the seconds until the oldest admission
leaves the window (no row: none yet)."""

NEW_WINDOW = """
INSERT INTO channel_rate_windows (channel, rate, admitted)
VALUES ($1, $2, array_fill(0::float8, ARRAY[$3::int]))
ON CONFLICT DO NOTHING
"""


class RateWindows:
    """The ``channel_rate_windows`` rows: one per channel and limit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def take(self, channel: str, rate: str, count: int, per_seconds: float) -> float | None:
        """Take a slot and return ``None``, or return the seconds until one may free up."""
        held = per_seconds + GUARD
        for _ in range(2):
            async with driver_connection(self._engine, TAKE_SLOT) as driver:
                wait: float | None = await driver.fetchval(TAKE_SLOT, channel, rate, held)
            if wait is not None:
                return None if wait == 0 else max(wait, 0.001)
            async with driver_connection(self._engine, NEW_WINDOW) as driver:
                await driver.execute(NEW_WINDOW, channel, rate, count)
        raise LookupError(f"no rate window for channel {channel} ({rate})")


@dataclass(frozen=True, slots=True)
class ChannelWindow:
    """One channel's shared window, as ``app.ratelimit.RateLimiter`` takes it."""

    windows: RateWindows
    channel: str
    count: int
    per_seconds: float

    @property
    def rate(self) -> str:
        """The row's key: the limit, written one way (``20/60s``)."""
        return f"{self.count}/{self.per_seconds:g}s"

    async def try_acquire(self) -> float | None:
        try:
            return await self.windows.take(self.channel, self.rate, self.count, self.per_seconds)
        except DBAPIError as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                raise
            raise ConnectionError(reason) from exc


CIRCUIT_COLUMNS = (
    "channel, state, failures, opened_until, reason, quarantined, trial_holder, trial_until"
)

NEW_CIRCUITS = f"""
INSERT INTO channel_circuits ({CIRCUIT_COLUMNS}, updated_at)
SELECT name, '{CircuitState.CLOSED}', 0, NULL, NULL, false, NULL, NULL, now()
FROM unnest($1::text[]) AS name
ON CONFLICT DO NOTHING
"""

READ_CIRCUITS = f"""
SELECT {CIRCUIT_COLUMNS}, now() AS now FROM channel_circuits WHERE channel = ANY($1::text[])
"""

OPEN_CIRCUIT = f"""
UPDATE channel_circuits
SET state = '{CircuitState.OPEN}', failures = greatest(failures, $2),
    opened_until = now() + make_interval(secs => $3), reason = $4, quarantined = $5,
    trial_holder = NULL, trial_until = NULL, updated_at = now()
WHERE channel = $1 AND state <> '{CircuitState.OPEN}'
RETURNING channel
"""
"""Open a circuit that is not open: a row back when this call opened it (its event is ours)."""

CLOSE_CIRCUIT = f"""
UPDATE channel_circuits
SET state = '{CircuitState.CLOSED}', failures = 0, opened_until = NULL, reason = NULL,
    quarantined = false, trial_holder = NULL, trial_until = NULL, updated_at = now()
WHERE channel = $1 AND state <> '{CircuitState.CLOSED}'
RETURNING channel
"""

ADD_FAILURES = f"""
UPDATE channel_circuits SET failures = failures + $2, updated_at = now()
WHERE channel = $1 AND state = '{CircuitState.CLOSED}'
RETURNING failures
"""

RESET_FAILURES = f"""
UPDATE channel_circuits SET failures = 0, updated_at = now()
WHERE channel = $1 AND state = '{CircuitState.CLOSED}' AND failures > 0
"""

CLAIM_TRIAL = f"""
UPDATE channel_circuits
SET state = '{CircuitState.HALF_OPEN}', trial_holder = $2,
    trial_until = now() + make_interval(secs => $3), updated_at = now()
WHERE channel = $1
  AND ((state = '{CircuitState.OPEN}' AND opened_until <= now())
       OR (state = '{CircuitState.HALF_OPEN}' AND trial_until <= now()))
RETURNING channel
"""
"""The half-open trial, for one process at a time: once the cooldown is over, or once the
holder of the last trial let it run out (it died, or had nothing to send)."""


@dataclass(frozen=True, slots=True)
class SharedCircuit:
    """A ``channel_circuits`` row, with the database's time it was read at."""

    channel: str
    state: CircuitState
    failures: int
    opened_until: datetime | None
    reason: str | None
    quarantined: bool
    trial_holder: str | None
    trial_until: datetime | None
    now: datetime

    @property
    def open_for(self) -> float:
        """Seconds the circuit stays open (0 when the cooldown is over or it is not open)."""
        if self.state is not CircuitState.OPEN or self.opened_until is None:
            return 0.0
        return max(0.0, (self.opened_until - self.now).total_seconds())

    @property
    def trial_due(self) -> bool:
        """A process may claim the trial now."""
        if self.state is CircuitState.OPEN:
            return self.open_for == 0.0
        if self.state is CircuitState.HALF_OPEN:
            return self.trial_until is None or self.trial_until <= self.now
        return False


class CircuitRows:
    """The ``channel_circuits`` rows: one per channel with a channel-wide circuit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        async with driver_connection(self._engine, sql) as driver:
            return list(await driver.fetch(sql, *args))

    async def ensure(self, channels: list[str]) -> None:
        """A closed row for each of ``channels`` that has none."""
        await self._fetch(NEW_CIRCUITS, channels)

    async def read(self, channels: list[str]) -> list[SharedCircuit]:
        rows = await self._fetch(READ_CIRCUITS, channels)
        return [SharedCircuit(**{**row, "state": CircuitState(row["state"])}) for row in rows]

    async def open(
        self, channel: str, *, failures: int, cooldown: float, reason: str, quarantined: bool
    ) -> bool:
        """Open the circuit for ``cooldown`` seconds; whether this call opened it."""
        return bool(
            await self._fetch(OPEN_CIRCUIT, channel, failures, cooldown, reason, quarantined)
        )

    async def close(self, channel: str) -> bool:
        """Close the circuit; whether this call closed it."""
        return bool(await self._fetch(CLOSE_CIRCUIT, channel))

    async def add_failures(self, channel: str, count: int) -> int | None:
        """Count ``count`` more transient failures of a closed circuit: the fleet's count
        (``None``: the circuit is not closed, nothing was counted)."""
        rows = await self._fetch(ADD_FAILURES, channel, count)
        return rows[0]["failures"] if rows else None

    async def reset_failures(self, channel: str) -> None:
        """The provider answered: a closed circuit's count starts again."""
        await self._fetch(RESET_FAILURES, channel)

    async def claim_trial(self, channel: str, holder: str, hold: float) -> bool:
        """Take the half-open trial for ``hold`` seconds; whether this call took it."""
        return bool(await self._fetch(CLAIM_TRIAL, channel, holder, hold))
