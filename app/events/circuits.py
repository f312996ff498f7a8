"""Circuit changes of this process's channels, held in memory until a round's save writes them.

A circuit moves inside a delivery round, on a provider's answer; writing its event there would
put a database write in the delivery path. The breaker's hook only appends to a bounded queue;
the worker's next save of a round takes what is queued and writes its events in that same
transaction (``Outbox.of_round``), so they cost no transaction of their own and reach the
event dispatchers, in this process or another, as a round's events do. A save that did not
happen (its lease was lost, the database was unreachable) gives them back for the next one. A
process that stops before that loses those events (a circuit is per process state anyway,
rebuilt from its own tries); past ``limit`` queued changes the oldest are dropped and counted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from app.delivery.circuit import CircuitBreaker
from app.delivery.orchestrator import utcnow
from app.domain import CircuitState
from app.events.body import CircuitChange

logger = logging.getLogger("herald.events")

QUEUE_LIMIT = 1024


class CircuitChanges:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: deque[CircuitChange] = deque(maxlen=limit)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._queue)

    def hook(
        self,
        breaker: CircuitBreaker,
        channel_type: str,
        then: Callable[[str, CircuitState], None],
    ) -> Callable[[str, CircuitState], None]:
        """An ``on_change`` for ``breaker`` that queues each change, after calling ``then``
        (the breaker's own ``on_change``: the metric)."""

        def changed(channel: str, state: CircuitState) -> None:
            then(channel, state)
            self.saw(
                CircuitChange(
                    channel=channel,
                    channel_type=channel_type,
                    state=state,
                    quarantined=breaker.quarantined,
                    reason=breaker.reason,
                    cooldown=breaker.cooldown,
                    at=utcnow(),
                )
            )

        return changed

    def saw(self, change: CircuitChange) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            logger.warning("circuit change of %s dropped: too many unwritten", change.channel)
        self._queue.append(change)

    def restore(self, taken: list[CircuitChange]) -> None:
        """Queue again what ``take`` gave that could not be written, ahead of what was queued
        since."""
        since = list(self._queue)
        self._queue.clear()
        for change in (*taken, *since):
            self.saw(change)

    def take(self) -> list[CircuitChange]:
        """Everything queued, oldest first; the queue is left empty."""
        taken = list(self._queue)
        self._queue.clear()
        return taken
