"""Channel circuits shared by every process on PostgreSQL: one worker's evidence opens the
circuit for all.

Each process keeps its breakers (app/delivery/circuit.py) and decides from them on every send,
as on SQLite: no database call in the delivery path. A sync loop, every ``EVERY`` seconds and at
once when a breaker moves, reconciles them with the channels' ``channel_circuits`` rows
(app/store/fleet.py):

- it writes what this process learnt: a transition (opened, closed) and the transient failures
  counted since the last sync. The row counts failures across processes, so ``failures: 5`` with
  three workers opens after five failures fleet-wide, not five in each;
- it takes in what the others learnt: an open row opens the local breaker for the rest of its
  cooldown (plus ``MARGIN``, so the local breaker never starts a trial on its own while the sync
  runs), a closed row closes it;
- once a cooldown is over, one process that has deliveries waiting on the channel (its breaker
  refused some since the last sync) claims the half-open trial in the row, and only its
  breaker lets a delivery through; the others stay open until the trial's answer closes or
  reopens the row. A claimed trial that is not used within the channel's timeout (plus
  ``TRIAL_GRACE``) may be claimed by another process.

A transition is written with a conditional ``UPDATE``, so of the processes that saw the same
thing exactly one changes the row, and only that one emits ``channel.circuit_opened`` /
``channel.circuit_closed`` (queued into ``CircuitChanges``, written with its next round). The
``herald_channel_circuit_state`` gauge of every process follows its own breaker, adopted moves
included. When the database cannot be reached the breakers go on alone (per process), as they do
on SQLite; the local breaker then starts a trial ``MARGIN`` after its cooldown.

Circuits per destination (a recipient-addressed channel) stay per process: their keys are
callers' endpoints, which a shared table would let callers fill.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.delivery.circuit import CircuitBreaker
from app.delivery.orchestrator import utcnow
from app.domain import CircuitState
from app.events.body import CircuitChange
from app.events.circuits import CircuitChanges
from app.store.db import brief, unavailable_reason
from app.store.fleet import CircuitRows, SharedCircuit

logger = logging.getLogger("herald.circuit")

EVERY = 0.5
"""Seconds between two syncs when no breaker moved."""
FRESH_FOR = 1.0
"""How stale a view a round may decide on: a round that finds the last sync older than this
syncs first (``fresh``), as after the process was paused, or while the sync loop restarts."""
MARGIN = 3 * EVERY
"""An adopted open circuit stays open locally this much longer than the row says, so that the
sync, not the local clock, decides which process tries the trial."""
TRIAL_GRACE = 2.0
"""Beyond the channel's timeout, how long a claimed trial is held before another may try."""


class FleetCircuits:
    def __init__(
        self,
        rows: CircuitRows,
        breakers: dict[str, CircuitBreaker],
        *,
        holder: str,
        channel_types: dict[str, str],
        timeouts: dict[str, float],
        export: Callable[[str, CircuitState], None],
        changes: CircuitChanges | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rows = rows
        self.breakers = breakers
        self.holder = holder
        self.channel_types = channel_types
        self.timeouts = timeouts
        self.export = export
        self.changes = changes
        self._moved: dict[str, CircuitState] = {}
        """Transitions of this process's breakers not written yet (the last one counts)."""
        self._counted: dict[str, int] = dict.fromkeys(breakers, 0)
        """Each breaker's failure count as the last sync wrote it."""
        self._wake = asyncio.Event()
        self._ensured = False
        self._monotonic = monotonic
        self._synced_at = float("-inf")
        """When the last sync began (succeeded or not)."""
        self._syncing = asyncio.Lock()

    def moved(self, channel: str, state: CircuitState) -> None:
        """A breaker's ``on_change``: export the gauge, write the move at the next sync (now)."""
        self.export(channel, state)
        if state is not CircuitState.HALF_OPEN:  # a trial starting is no transition to share
            self._moved[channel] = state
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop``: every ``EVERY`` seconds, and at once after a breaker moved."""
        while not stop.is_set():
            self._wake.clear()
            await self.sync()
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waits, timeout=EVERY, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    async def fresh(self) -> None:
        """Sync now unless the last sync began at most ``FRESH_FOR`` ago. A sync that fails
        is logged and the breakers decide alone (the next try waits ``FRESH_FOR``): the round
        goes on whatever happened to the sync."""
        if self._monotonic() - self._synced_at <= FRESH_FOR:
            return
        try:
            async with self._syncing:
                if self._monotonic() - self._synced_at <= FRESH_FOR:
                    return  # another round synced meanwhile
                self._synced_at = self._monotonic()
                await self._sync()
        except Exception as exc:
            if unavailable_reason(exc) is None:
                logger.exception("channel circuits not synced")
            else:
                logger.warning("channel circuits not synced: %s", brief(exc))

    async def sync(self) -> None:
        """Write what this process learnt, then take in what the others did."""
        async with self._syncing:
            self._synced_at = self._monotonic()
            await self._sync()

    async def _sync(self) -> None:
        names = list(self.breakers)
        if not names:
            return
        if not self._ensured:
            await self.rows.ensure(names)
            self._ensured = True
        for name, breaker in self.breakers.items():
            await self._write(name, breaker)
        for row in await self.rows.read(names):
            await self._take_in(row, self.breakers[row.channel])

    async def _write(self, name: str, breaker: CircuitBreaker) -> None:
        moved = self._moved.pop(name, None)
        failures = breaker.consecutive_failures
        counted, self._counted[name] = self._counted[name], failures
        if moved is CircuitState.OPEN and breaker.state is CircuitState.OPEN:
            opened = await self.rows.open(
                name,
                failures=failures,
                cooldown=breaker.cooldown,
                reason=breaker.reason or "opened",
                quarantined=breaker.quarantined,
            )
            if opened:
                self._emit(name, breaker, CircuitState.OPEN)
            return
        closing = moved is CircuitState.CLOSED and breaker.state is CircuitState.CLOSED
        if closing and await self.rows.close(name):
            self._emit(name, breaker, CircuitState.CLOSED)
        if breaker.state is not CircuitState.CLOSED:
            return
        if failures < counted:  # the provider answered meanwhile: the count starts again
            await self.rows.reset_failures(name)
            counted = 0
        if failures > counted:
            total = await self.rows.add_failures(name, failures - counted)
            if total is not None and breaker.enabled and total >= breaker.threshold:
                reason = f"{total} consecutive transient failures across processes"
                if await self.rows.open(
                    name,
                    failures=total,
                    cooldown=breaker.cooldown,
                    reason=reason,
                    quarantined=False,
                ):
                    logger.warning(
                        "circuit of channel %s opened for %.0fs: %s", name, breaker.cooldown, reason
                    )
                    breaker.adopt_open(breaker.cooldown + MARGIN, reason, quarantined=False)
                    self.export(name, CircuitState.OPEN)
                    self._emit(name, breaker, CircuitState.OPEN)

    async def _take_in(self, row: SharedCircuit, breaker: CircuitBreaker) -> None:
        name = row.channel
        if row.state is CircuitState.CLOSED:
            if breaker.state is not CircuitState.CLOSED:
                breaker.adopt_closed()
                self.export(name, CircuitState.CLOSED)
            return
        holds_trial = row.state is CircuitState.HALF_OPEN and row.trial_holder == self.holder
        wanted, breaker.refused = breaker.refused > 0, 0
        if row.trial_due and wanted:
            hold = self.timeouts.get(name, 0.0) + TRIAL_GRACE
            if await self.rows.claim_trial(name, self.holder, hold):
                breaker.adopt_open(0.0, row.reason, quarantined=row.quarantined)
                breaker.grant_trial()
                self.export(name, CircuitState.OPEN)
                return
        elif holds_trial:
            return  # this process's trial decides
        was = breaker.state
        breaker.adopt_open(row.open_for + MARGIN, row.reason, quarantined=row.quarantined)
        if breaker.state is not was:
            self.export(name, breaker.state)

    def _emit(self, name: str, breaker: CircuitBreaker, state: CircuitState) -> None:
        if self.changes is None:
            return
        self.changes.saw(
            CircuitChange(
                channel=name,
                channel_type=self.channel_types[name],
                state=state,
                quarantined=breaker.quarantined,
                reason=breaker.reason,
                cooldown=breaker.cooldown,
                at=utcnow(),
            )
        )
