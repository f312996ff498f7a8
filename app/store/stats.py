"""What the console shows of recent traffic: attempts per channel, hour and outcome; each
channel's latest failures; each route's notifications by status. Read only, from the database
(not Prometheus), over a window that starts at ``since``.

Attempts and notifications are narrowed by id, not by time: ids are UUIDv7 (``app.ids``), so
``id >= floor(since)`` is a range on the primary key rather than a scan of the whole table.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.domain import AttemptOutcome
from app.store.sql import ATTEMPTS, NOTIFICATIONS

HOUR = 3600


def id_floor(since: datetime) -> uuid.UUID:
    """The smallest UUIDv7 made at or after ``since``."""
    ms = int(since.timestamp() * 1000)
    return uuid.UUID(int=ms << 80)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, as a channel's recent failures list it."""

    notification_id: uuid.UUID
    started_at: datetime
    error_class: str | None
    error_code: str | None
    error_message: str | None


def _hour_of(session: AsyncSession, column: ColumnElement[datetime]) -> ColumnElement[int]:
    """Whole hours since the Unix epoch of a timestamp column, in the session's dialect."""
    if session.get_bind().dialect.name == "sqlite":
        return cast(cast(func.strftime("%s", column), Integer) / HOUR, Integer)
    return cast(func.floor(func.extract("epoch", column) / HOUR), Integer)


async def attempts_by_hour(
    session: AsyncSession, since: datetime
) -> dict[str, dict[int, dict[AttemptOutcome, int]]]:
    """Per channel, per hour (whole hours since the epoch), attempts by outcome since
    ``since``."""
    table = ATTEMPTS
    hour = _hour_of(session, table.c.started_at).label("hour")
    stmt = (
        select(table.c.channel, hour, table.c.outcome, func.count())
        .where(table.c.id >= id_floor(since), table.c.started_at >= since)
        .group_by(table.c.channel, hour, table.c.outcome)
    )
    found: dict[str, dict[int, dict[AttemptOutcome, int]]] = defaultdict(lambda: defaultdict(dict))
    for channel, at, outcome, count in (await session.execute(stmt)).all():
        found[channel][int(at)][AttemptOutcome(outcome)] = count
    return found


async def recent_failures(
    session: AsyncSession, since: datetime, *, per_channel: int, scan: int = 200
) -> dict[str, list[Failure]]:
    """Each channel's latest failed attempts since ``since``, newest first, at most
    ``per_channel`` each, among the latest ``scan`` failures of all channels."""
    table = ATTEMPTS
    stmt = (
        select(
            table.c.channel,
            table.c.notification_id,
            table.c.started_at,
            table.c.error_class,
            table.c.error_code,
            table.c.error_message,
        )
        .where(table.c.id >= id_floor(since), table.c.outcome == AttemptOutcome.FAILED)
        .order_by(table.c.id.desc())
        .limit(scan)
    )
    found: dict[str, list[Failure]] = defaultdict(list)
    for channel, *rest in (await session.execute(stmt)).all():
        if len(found[channel]) < per_channel:
            found[channel].append(Failure(*rest))
    return found


async def routes_by_status(
    session: AsyncSession, since: datetime
) -> dict[str | None, dict[str, int]]:
    """Per route (``None``: an inline chain), notifications created since ``since`` by
    status."""
    table = NOTIFICATIONS
    stmt = (
        select(table.c.route, table.c.status, func.count())
        .where(table.c.id >= id_floor(since))
        .group_by(table.c.route, table.c.status)
    )
    found: dict[str | None, dict[str, int]] = defaultdict(dict)
    for route, status, count in (await session.execute(stmt)).all():
        found[route][status] = count
    return found
