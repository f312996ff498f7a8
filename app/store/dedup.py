"""The statements of dedup windows and digest groups (``app.dedup``).

A request with a ``dedup_key`` is decided in one transaction, one key at a time:

1. ``INSERT`` its window row (API key, route, key → the new notification, closing one window
   from now) ``ON CONFLICT DO NOTHING``. When that inserts, the key is new: the notification is
   stored in the same transaction.
2. Otherwise the row is there: ``SELECT … FOR UPDATE`` locks it. On PostgreSQL a concurrent
   request with the same key waits in step 1 (the primary key's index entry is locked until
   the first inserter commits) or here, so the requests of one key are decided one after the
   other, each seeing what the one before committed. SQLite has one writer at a time
   (``BEGIN IMMEDIATE``): the transaction is the lock.
3. While the window is open, ``drop`` answers with the window's notification; ``collapse``
   counts the repeat on it with one conditional ``UPDATE … WHERE status = 'pending'`` (a worker
   that claimed it first makes that update miss, and the repeat becomes a new notification).
4. Otherwise (closed, or nothing to collapse into) the window row is pointed at a new
   notification, stored in the same transaction, and its window starts again.

Why a row of its own rather than a unique partial index on the notifications: the decision
depends on time (the window) and on the notification's state (collapse only into a pending one),
neither of which an index predicate can hold, and a unique index would turn the second of two
concurrent requests into an error to retry instead of a row lock to wait on.

Digests: ``release_full`` makes the oldest pending notification of a group due at once when the
group holds ``max_items``: run after each accept that stored into the group, the count of the
accept that commits last sees every row committed before it, so a full group is never missed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.domain import DedupMode, NotificationStatus, StoredNotification
from app.store.intake import DuplicateKey, duplicate_key
from app.store.sql import (
    DEDUP_WINDOWS,
    IDEMPOTENCY_KEYS,
    NOTIFICATIONS,
    OutboxRows,
    Row,
    notify_due,
    status_is,
    write_events,
)

_N, _W = NOTIFICATIONS.c, DEDUP_WINDOWS.c


@dataclass(frozen=True, slots=True)
class Window:
    """A key's window as a request asks for it: who, which route, which key, how long, what a
    repeat does."""

    scope: str
    route: str
    key: str
    seconds: float
    mode: DedupMode


class DedupStore:
    """Accepts requests with a ``dedup_key``; makes full digest groups due."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        insert_of = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._open = (
            insert_of(DEDUP_WINDOWS)
            .on_conflict_do_nothing(index_elements=[_W.scope, _W.route, _W.key])
            .returning(_W.notification_id)
        )
        self._locate = (_W.scope == bindparam("w_scope"), _W.route == bindparam("w_route"))
        self._lock = (
            select(_W.notification_id, _W.closes_at)
            .where(*self._locate, _W.key == bindparam("w_key"))
            .with_for_update()
        )
        self._move = (
            update(DEDUP_WINDOWS)
            .where(*self._locate, _W.key == bindparam("w_key"))
            .values(
                notification_id=bindparam("w_id"),
                opened_at=bindparam("w_now"),
                closes_at=bindparam("w_closes"),
            )
        )
        self._read = select(NOTIFICATIONS).where(_N.id == bindparam("n_id"))
        self._collapse = (
            update(NOTIFICATIONS)
            .where(_N.id == bindparam("n_id"), status_is(_N.status, NotificationStatus.PENDING))
            .values(
                occurrences=_N.occurrences + 1,
                subject=bindparam("n_subject"),
                text=bindparam("n_text"),
                html=bindparam("n_html"),
                template=bindparam("n_template"),
                rendered=bindparam("n_rendered"),
                updated_at=bindparam("w_now"),
            )
            .returning(*NOTIFICATIONS.c)
        )
        pending_of_group = (
            status_is(_N.status, NotificationStatus.PENDING),
            _N.digest_key == bindparam("group"),
        )
        oldest = select(_N.id).where(*pending_of_group).order_by(_N.id).limit(1)
        count = select(func.count()).select_from(NOTIFICATIONS).where(*pending_of_group)
        self._release = (
            update(NOTIFICATIONS)
            .where(
                _N.id == oldest.scalar_subquery(),
                count.scalar_subquery() >= bindparam("most"),
                _N.next_attempt_at > bindparam("now"),
            )
            .values(next_attempt_at=bindparam("now"))
        )

    async def accept(
        self,
        row: StoredNotification,
        window: Window,
        *,
        key: Row | None,
        events: OutboxRows | None,
        announce: bool,
    ) -> tuple[StoredNotification, bool]:
        """Store ``row`` unless ``window`` holds a notification its repeat is dropped or
        collapsed into: ``(row, False)``, or ``(the window's notification, True)``.

        ``key``: the request's idempotency key row, stored either way (pointing at whichever
        notification answers). ``DuplicateKey`` when another request took it first.
        """
        now = row["created_at"]
        params = {"w_scope": window.scope, "w_route": window.route, "w_key": window.key}
        closes = now + timedelta(seconds=window.seconds)
        fresh = {
            "scope": window.scope,
            "route": window.route,
            "key": window.key,
            "notification_id": row["id"],
            "opened_at": now,
            "closes_at": closes,
        }
        try:
            async with self.engine.begin() as conn:
                if (await conn.execute(self._open, fresh)).first() is None:
                    current = (await conn.execute(self._lock, params)).first()
                    if current is None:  # purged between the two statements: long closed
                        await conn.execute(insert(DEDUP_WINDOWS), [fresh])
                    elif current.closes_at > now:
                        found = await self._repeat(conn, row, window, current.notification_id)
                        if found is not None:
                            await self._add_key(conn, key, found["id"])
                            return found, True
                    if current is not None:
                        await conn.execute(
                            self._move,
                            {**params, "w_id": row["id"], "w_now": now, "w_closes": closes},
                        )
                await conn.execute(insert(NOTIFICATIONS), [dict(row)])
                await self._add_key(conn, key, row["id"])
                await write_events(conn, events)
                if announce:
                    await notify_due(conn, self.engine.dialect)
        except IntegrityError as exc:
            if key is not None and duplicate_key(exc):
                raise DuplicateKey() from exc
            raise
        return row, False

    async def _repeat(
        self,
        conn: AsyncConnection,
        row: StoredNotification,
        window: Window,
        existing: uuid.UUID,
    ) -> StoredNotification | None:
        """The window's notification, once the repeat ``row`` is dropped or counted on it;
        ``None`` when there is none to drop or collapse into (retention purged it, or it is
        no longer pending)."""
        if window.mode is DedupMode.DROP:
            found = (await conn.execute(self._read, {"n_id": existing})).first()
        else:
            found = (
                await conn.execute(
                    self._collapse,
                    {
                        "n_id": existing,
                        "n_subject": row["subject"],
                        "n_text": row["text"],
                        "n_html": row["html"],
                        "n_template": row["template"],
                        "n_rendered": row["rendered"],
                        "w_now": row["created_at"],
                    },
                )
            ).first()
        if found is None:
            return None
        return cast(StoredNotification, dict(found._mapping))

    async def _add_key(
        self, conn: AsyncConnection, key: Row | None, notification_id: uuid.UUID
    ) -> None:
        if key is not None:
            await conn.execute(
                insert(IDEMPOTENCY_KEYS), [{**key, "notification_id": notification_id}]
            )

    async def release_full(self, groups: Mapping[str, int], now: datetime) -> int:
        """For each digest group (key → its ``max_items``) that holds that many pending
        notifications, make the oldest due ``now`` (its digest then takes the others); how many
        groups were released."""
        if not groups:
            return 0
        released = 0
        async with self.engine.begin() as conn:
            for group, most in groups.items():
                result = await conn.execute(
                    self._release, {"group": group, "most": most, "now": now}
                )
                released += max(result.rowcount, 0)
        return released


def digest_groups(rows: Sequence[Mapping[str, Any]], most: Mapping[str, int]) -> dict[str, int]:
    """The digest groups ``rows`` went into, each with its route's ``max_items`` (``most``, by
    route name)."""
    groups: dict[str, int] = {}
    for row in rows:
        group, route = row.get("digest_key"), row.get("route")
        if group is not None and route is not None and route in most:
            groups[group] = most[route]
    return groups
