"""Receipts: what providers say later about the messages Herald sent (README, "Receipts,
acknowledgements and escalation").

An inbound endpoint verifies the provider's signature and hands the receipts here. Each is kept
by provider message id first (``ReceiptStore.add``, its own transaction), then matched to its
attempt (``match``). A receipt can arrive before the worker's save of the send has committed:
it is kept unmatched, and matched later, either by the worker right after that save (when the
hop waits for it) or by the worker's sweep. Matching writes the ``attempt.receipt`` event and,
when the attempt's hop is held for confirmation and the receipt settles it, makes the
notification due at once, so a worker settles the hold without waiting out its window.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.delivery.orchestrator import utcnow
from app.domain import (
    CONFIRMING,
    REFUTING,
    Hop,
    HopState,
    NotificationStatus,
    Receipt,
)
from app.events.outbox import Outbox
from app.store.receipts import ReceiptStore, receipt_of
from app.store.sql import OutboxRows, write_events

logger = logging.getLogger("herald.receipts")

UNMATCHED_RETENTION = timedelta(days=7)
"""How long a receipt that matches no attempt is kept (its send may still be saved)."""


@dataclass(frozen=True, slots=True)
class Tally:
    """What became of the receipts of one inbound request."""

    new: int
    duplicate: int
    matched: int


class Receipts:
    """Keeps receipts and matches them to attempts, for the inbound endpoints and the worker."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        *,
        emitted: Callable[[OutboxRows | None], None],
        wake_worker: Callable[[], None],
    ) -> None:
        self.sessions = sessions
        self.outbox = outbox
        self.emitted = emitted
        self.wake_worker = wake_worker

    async def record(self, channel: str, receipts: Sequence[Receipt]) -> Tally:
        """Keep the receipts of one verified callback, then match what can be matched."""
        now = utcnow()
        async with self.sessions() as session:
            new = await ReceiptStore(session).add(receipts, now)
            await session.commit()
        keys = [(r.channel_type, r.provider_message_id) for r in receipts]
        matched = await self.match(keys, now=now)
        tally = Tally(new=new, duplicate=len(receipts) - new, matched=matched)
        for result, count in (
            ("matched", matched),
            ("unmatched", new - matched),
            ("duplicate", tally.duplicate),
        ):
            if count > 0:
                metrics.receipts.labels(channel, result).inc(count)
        return tally

    async def match(
        self, keys: Sequence[tuple[str, str]] | None = None, *, now: datetime | None = None
    ) -> int:
        """Match the receipts not matched yet whose attempt is saved now (``keys``: only those
        of these ``(channel_type, provider_message_id)``); how many were matched here."""
        now = now or utcnow()
        matched = 0
        woke = False
        events: list[OutboxRows] = []
        async with self.sessions() as session:
            store = ReceiptStore(session)
            for row in await store.unmatched(keys):
                attempt_id: uuid.UUID = row["attempt.id"]
                notification_id: uuid.UUID = row["attempt.notification_id"]
                if not await store.match(row["receipt_id"], attempt_id, notification_id):
                    continue  # another process matched it first
                matched += 1
                receipt = receipt_of(row)
                rows = self._event(row, receipt, now)
                if rows:
                    events.append(rows)
                if _settles_hold(row, receipt):
                    woke = await store.wake(notification_id, now) or woke
            for rows in events:
                await write_events(session, rows)
            await session.commit()
        for rows in events:
            self.emitted(rows)
        if woke:
            self.wake_worker()
        return matched

    def _event(self, row: dict[str, object], receipt: Receipt, now: datetime) -> OutboxRows | None:
        notification = {
            name.removeprefix("notification."): value
            for name, value in row.items()
            if name.startswith("notification.")
        }
        attempt = {
            name.removeprefix("attempt."): value
            for name, value in row.items()
            if name.startswith("attempt.")
        }
        return self.outbox.receipt(notification, attempt, receipt, now)

    async def purge(self, now: datetime) -> int:
        """Forget receipts that matched nothing for ``UNMATCHED_RETENTION``."""
        async with self.sessions() as session:
            purged = await ReceiptStore(session).purge_unmatched(now - UNMATCHED_RETENTION)
            await session.commit()
        return purged


def _settles_hold(row: dict[str, object], receipt: Receipt) -> bool:
    """Whether ``receipt`` settles its attempt's hop, held for confirmation."""
    if row["notification.status"] != NotificationStatus.PENDING:
        return False
    if receipt.status not in CONFIRMING and receipt.status not in REFUTING:
        return False
    hops = row["notification.hops"]
    index = row["attempt.hop"]
    if not isinstance(hops, list) or not isinstance(index, int) or index >= len(hops):
        return False
    return Hop.from_dict(hops[index]).state == HopState.AWAITING_CONFIRMATION
