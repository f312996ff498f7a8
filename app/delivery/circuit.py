"""Per-channel circuit breakers: health-aware fallback.

::

    closed ──N consecutive transient failures──▶ open ──cooldown──▶ half-open
      ▲                                           ▲                    │
      └──────────── trial delivers (or the provider answers) ──────────┤
                                                  └──── trial fails ───┘
    any state ──config failure (401/403, auth, TLS)──▶ open  (quarantine for one cooldown)

While a circuit is open the orchestrator records ``skipped``/``circuit_open`` without calling
the provider and moves to the next hop at once; the hop stays worth a later round. In half-open
exactly one delivery is let through as the trial. On SQLite the state is the process's own
(one process delivers). On PostgreSQL a channel-wide circuit is also the fleet's
(``app.delivery.fleet``): each process's breaker decides from what it holds, and a sync of a
fraction of a second writes its transitions and failures to the channel's shared row and
takes in what the other processes learnt (``adopt_open``, ``adopt_closed``, ``grant_trial``).

A channel whose destination comes from the recipient (a ``webhook`` without ``url``) has no
channel-wide circuit: one caller's failing endpoint must not stop every other caller's. It keeps a
``DestinationCircuits`` instead, one breaker per destination (``scheme://host:port``), holding
only destinations with something to remember (a failure, an open circuit, a trial under way) and
at most ``MAX_DESTINATIONS`` of them, the least recently used dropped first.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from app.channels.base import CircuitConfig, DeliveryResult, Message
from app.domain import CircuitState, ErrorClass

logger = logging.getLogger("herald.circuit")


STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

MAX_DESTINATIONS = 1024
"""Destinations a recipient-addressed channel keeps per process: callers choose them."""


class CircuitBreaker:
    def __init__(
        self,
        channel: str,
        config: CircuitConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, CircuitState], None] | None = None,
    ) -> None:
        self.channel = channel
        self.threshold = config.failures
        self.cooldown = config.cooldown
        self.clock = clock
        self.on_change = on_change
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.reason: str | None = None
        self.quarantined = False
        """The circuit is open (or half-open) after a ``config`` failure, not transient ones."""
        self._trial_in_flight = False
        self.refused = 0
        """Deliveries ``allow`` refused; the fleet's sync reads and resets it (a process asks
        for the shared trial only while it has deliveries waiting for one)."""

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def allow(self) -> bool:
        """Whether a delivery may call the provider now (and, half-open, take the one trial)."""
        if not self.enabled or self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            assert self.opened_at is not None
            if self.clock() - self.opened_at < self.cooldown:
                self.refused += 1
                return False
            self._set(CircuitState.HALF_OPEN)
        if self._trial_in_flight:
            self.refused += 1
            return False
        self._trial_in_flight = True
        return True

    @property
    def idle(self) -> bool:
        """Nothing to remember: closed, no failure counted, no trial under way."""
        return (
            self.state is CircuitState.CLOSED
            and self.consecutive_failures == 0
            and not self._trial_in_flight
        )

    def retry_in(self) -> float:
        """Seconds until the next trial may go (0 when not open)."""
        if self.state is not CircuitState.OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def record(self, result: DeliveryResult) -> None:
        """Learn from a provider call's result (never from a result that made no call)."""
        if not self.enabled:
            return
        trial = self._trial_in_flight
        self._trial_in_flight = False
        error = result.error
        if error is None or error.cls in (ErrorClass.PERMANENT, ErrorClass.RATE_LIMITED):
            # The provider answered: the channel works, whatever it thought of this message.
            self.consecutive_failures = 0
            if self.state is not CircuitState.CLOSED:
                logger.info("circuit of channel %s closed: it answers again", self.channel)
                self._set(CircuitState.CLOSED)
            return
        if error.cls is ErrorClass.CONFIG:
            self._open(f"{error.code}: {error.message}", quarantine=True)
            return
        if error.cls is ErrorClass.TRANSIENT:
            self.consecutive_failures += 1
            if trial or self.consecutive_failures >= self.threshold:
                self._open(
                    f"{self.consecutive_failures} consecutive transient failures, "
                    f"last {error.code}",
                    quarantine=False,
                )

    def release(self) -> None:
        """A trial that made no provider call (e.g. no address) gives the trial back."""
        self._trial_in_flight = False

    # --- what another process learnt (app.delivery.fleet): no ``on_change`` call ----------

    def adopt_open(self, open_for: float, reason: str | None, *, quarantined: bool) -> None:
        """Open for ``open_for`` more seconds, as another process opened the circuit."""
        if self._trial_in_flight:
            return  # this process's trial is under way: its answer decides
        self.state = CircuitState.OPEN
        self.opened_at = self.clock() - max(0.0, self.cooldown - open_for)
        self.reason = reason
        self.quarantined = quarantined

    def adopt_closed(self) -> None:
        """Closed, as another process's trial or answer closed the circuit."""
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = None
        self.reason = None
        self.quarantined = False

    def grant_trial(self) -> None:
        """This process holds the fleet's trial: the next ``allow`` lets one delivery through."""
        if self.state is CircuitState.OPEN:
            self.opened_at = self.clock() - self.cooldown

    def _open(self, reason: str, *, quarantine: bool) -> None:
        already_open = self.state is CircuitState.OPEN
        self.opened_at = self.clock()
        self.reason = reason
        if already_open:
            return
        self.quarantined = quarantine
        self._set(CircuitState.OPEN)
        if quarantine:
            logger.error(
                "channel %s quarantined for %.0fs: %s", self.channel, self.cooldown, reason
            )
        else:
            logger.warning(
                "circuit of channel %s opened for %.0fs: %s", self.channel, self.cooldown, reason
            )

    def _set(self, state: CircuitState) -> None:
        self.state = state
        if state is CircuitState.CLOSED:
            self.opened_at = None
            self.reason = None
            self.quarantined = False
        if self.on_change is not None:
            self.on_change(self.channel, state)


class DestinationCircuits:
    """One breaker per destination of a recipient-addressed channel, bounded in memory.

    ``locate`` names a message's destination (``None``: none, so no circuit). ``breaker`` hands out
    the destination's breaker (a fresh closed one when none is kept); ``keep``, called once the
    breaker has learnt from a call, stores it while it holds state and forgets it once it holds
    none. These breakers export no metric: an address is never a label.
    """

    def __init__(
        self,
        channel: str,
        config: CircuitConfig,
        locate: Callable[[Message], str | None],
        *,
        limit: int = MAX_DESTINATIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.locate = locate
        self.config = config
        self.limit = limit
        self.clock = clock
        self._kept: OrderedDict[str, CircuitBreaker] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def breaker(self, destination: str) -> CircuitBreaker:
        circuit = self._kept.get(destination)
        if circuit is None:
            return CircuitBreaker(f"{self.channel} → {destination}", self.config, clock=self.clock)
        self._kept.move_to_end(destination)
        return circuit

    def keep(self, destination: str, circuit: CircuitBreaker) -> None:
        if circuit.idle:
            if self._kept.get(destination) is circuit:
                del self._kept[destination]
            return
        self._kept[destination] = circuit
        self._kept.move_to_end(destination)
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def not_closed(self) -> list[str]:
        """Destinations whose circuit is open or half-open, most recently used first."""
        return [
            destination
            for destination, circuit in reversed(self._kept.items())
            if circuit.state is not CircuitState.CLOSED
        ]


LOCAL_CODES = frozenset({"local_rate_limit", "no_address", "blocked_address"})
"""Failures decided before any provider call: they say nothing of the channel's health."""


def observe(
    circuit: CircuitBreaker,
    result: DeliveryResult,
    destinations: DestinationCircuits | None = None,
    destination: str | None = None,
) -> None:
    """Count ``result`` on the circuit it went through: a failure decided before any provider
    call gives back its trial instead, and a destination's circuit is kept for the next send."""
    if result.error is not None and result.error.code in LOCAL_CODES:
        circuit.release()
    else:
        circuit.record(result)
    if destination is not None and destinations is not None:
        destinations.keep(destination, circuit)
