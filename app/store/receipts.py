"""Every query about receipts: keep them, match them to their attempts, read them back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import NotificationStatus, Receipt, ReceiptStatus
from app.ids import uuid7
from app.store.sql import ATTEMPTS, NOTIFICATIONS, RECEIPTS, Row, notify_due, status_is

_R, _A, _N = RECEIPTS.c, ATTEMPTS.c, NOTIFICATIONS.c

ATTEMPT_COLUMNS = (
    "id",
    "notification_id",
    "channel",
    "channel_type",
    "round",
    "hop",
    "trigger",
    "outcome",
    "error_class",
    "error_code",
    "error_message",
    "provider_status",
    "started_at",
    "duration_ms",
)
"""What a match reads of the attempt (``attempt.`` in the row)."""
NOTIFICATION_COLUMNS = (
    "status",
    "route",
    "owner",
    "callback_url",
    "callback_events",
    "delivered_via",
    "hops",
)
"""What a match reads of the notification (``notification.`` in the row)."""


def receipt_of(row: Mapping[Any, Any]) -> Receipt:
    """The receipt a ``receipts`` row (column name → value) keeps."""
    return Receipt(
        channel=row["channel"],
        channel_type=row["channel_type"],
        provider_message_id=row["provider_message_id"],
        status=ReceiptStatus(row["status"]),
        at=row["occurred_at"],
        code=row["code"],
    )


async def _changed(session: AsyncSession, statement: Any, params: Row | None = None) -> int:
    """Run an ``INSERT``, ``UPDATE`` or ``DELETE``; the rows it changed."""
    result = cast(CursorResult[Any], await session.execute(statement, params))
    return result.rowcount


class ReceiptStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, receipts: Sequence[Receipt], now: datetime) -> int:
        """Keep ``receipts``; one already kept (the same message and status: a provider's
        retry, a replay) is not kept twice. How many were new."""
        if not receipts:
            return 0
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        rows = [
            {
                "id": uuid7(),
                "channel": receipt.channel,
                "channel_type": receipt.channel_type,
                "provider_message_id": receipt.provider_message_id,
                "status": receipt.status,
                "code": receipt.code,
                "occurred_at": receipt.at,
                "received_at": now,
                "attempt_id": None,
                "notification_id": None,
            }
            for receipt in receipts
        ]
        statement = insert(RECEIPTS).on_conflict_do_nothing(
            index_elements=["channel_type", "provider_message_id", "status"]
        )
        added = 0
        for row in rows:  # one by one: a batch's rowcount is not reliable on every driver
            added += await _changed(self.session, statement, row)
        return added

    async def unmatched(self, keys: Sequence[tuple[str, str]] | None = None) -> list[Row]:
        """Receipts not matched yet whose attempt is now saved (``keys``: only those of these
        ``(channel_type, provider_message_id)``), with their attempt and notification."""
        columns = [
            _R.id.label("receipt_id"),
            _R.channel,
            _R.channel_type,
            _R.provider_message_id,
            _R.status,
            _R.code,
            _R.occurred_at,
            _R.received_at,
            *(_A[name].label(f"attempt.{name}") for name in ATTEMPT_COLUMNS),
            *(_N[name].label(f"notification.{name}") for name in NOTIFICATION_COLUMNS),
        ]
        joined = RECEIPTS.join(
            ATTEMPTS,
            and_(
                _A.provider_message_id == _R.provider_message_id,
                _A.channel_type == _R.channel_type,
            ),
        ).join(NOTIFICATIONS, _N.id == _A.notification_id)
        statement = (
            select(*columns)
            .select_from(joined)
            .where(_R.attempt_id.is_(None))
            .order_by(_R.received_at, _R.id)
        )
        if keys is not None:
            if not keys:
                return []
            statement = statement.where(
                tuple_(_R.channel_type, _R.provider_message_id).in_(list(keys))
            )
        return [dict(row) for row in (await self.session.execute(statement)).mappings()]

    async def match(
        self, receipt_id: uuid.UUID, attempt_id: uuid.UUID, notification_id: uuid.UUID
    ) -> bool:
        """Tie a receipt to its attempt, unless another process did first."""
        statement = (
            update(RECEIPTS)
            .where(_R.id == receipt_id, _R.attempt_id.is_(None))
            .values(attempt_id=attempt_id, notification_id=notification_id)
        )
        return bool(await _changed(self.session, statement))

    async def wake(self, notification_id: uuid.UUID, now: datetime) -> bool:
        """Make a pending notification due now (a receipt settles its held hop); whether it
        was waiting. Listening workers hear of it on commit."""
        statement = (
            update(NOTIFICATIONS)
            .where(
                _N.id == notification_id,
                status_is(_N.status, NotificationStatus.PENDING),
                _N.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        woke = bool(await _changed(self.session, statement))
        if woke:
            await notify_due(self.session, self.session.get_bind().dialect)
        return woke

    async def of_attempts(self, attempt_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Receipt]]:
        """The receipts matched to each of ``attempt_ids``."""
        if not attempt_ids:
            return {}
        statement = select(RECEIPTS).where(_R.attempt_id.in_(list(attempt_ids)))
        found: dict[uuid.UUID, list[Receipt]] = {}
        for row in (await self.session.execute(statement)).mappings():
            found.setdefault(row["attempt_id"], []).append(receipt_of(row))
        return found

    async def purge_unmatched(self, cutoff: datetime) -> int:
        """Forget receipts received before ``cutoff`` that never matched an attempt."""
        statement = delete(RECEIPTS).where(_R.attempt_id.is_(None), _R.received_at < cutoff)
        return await _changed(self.session, statement)
