"""Every query of Telegram inbound: the polling lease and offset of each inbound channel, the
inbound messages, and the route mutes.

None of it is on a hot path (a poll answers a few updates at a time; the worker reads the mutes
at most once a second), so it runs through SQLAlchemy Core on the caller's session, on both
databases alike. Functions here flush; the caller's unit of work commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import InboundOutcome, Mute
from app.store.models import InboundMessage, InboundPoll, RouteMute
from app.store.sql import newest_first

INBOUND_MESSAGES = cast(Table, InboundMessage.__table__)
INBOUND_POLLS = cast(Table, InboundPoll.__table__)
ROUTE_MUTES = cast(Table, RouteMute.__table__)


@dataclass(frozen=True, slots=True)
class InboundFilter:
    """Which inbound messages a list shows (every field given must match)."""

    channel: str | None = None
    outcome: InboundOutcome | None = None
    since: datetime | None = None
    """Received at or after this time."""


class InboundLog:
    """The inbound tables, through one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- the polling lease and offset ----------------------------------------------------

    async def take_lease(
        self, channel: str, holder: str, *, now: datetime, until: datetime
    ) -> int | None:
        """Hold (or keep holding) ``channel``'s polling until ``until``; its next offset, or
        ``None`` while another holder's lease runs."""
        table = INBOUND_POLLS
        await self.session.execute(
            _insert_ignoring(self.session, table).values(
                channel=channel, next_offset=0, holder=None, lease_expires_at=None, updated_at=now
            )
        )
        stmt = (
            update(table)
            .where(
                table.c.channel == channel,
                or_(
                    table.c.holder == holder,
                    table.c.holder.is_(None),
                    table.c.lease_expires_at < now,
                ),
            )
            .values(holder=holder, lease_expires_at=until, updated_at=now)
            .returning(table.c.next_offset)
        )
        offset: int | None = (await self.session.execute(stmt)).scalar_one_or_none()
        return offset

    async def advance(
        self,
        channel: str,
        holder: str,
        *,
        offset: int,
        to: int,
        now: datetime,
        until: datetime,
    ) -> bool:
        """Move ``channel``'s offset from ``offset`` to ``to`` and renew the lease, if
        ``holder`` still holds it at ``offset``; whether it did. Run first in the transaction
        that stores the updates: it locks the row, and a holder that lost its lease (or
        another that stored them meanwhile) writes nothing."""
        table = INBOUND_POLLS
        stmt = (
            update(table)
            .where(
                table.c.channel == channel,
                table.c.holder == holder,
                table.c.next_offset == offset,
            )
            .values(next_offset=to, lease_expires_at=until, updated_at=now)
        )
        result: Any = await self.session.execute(stmt)
        return bool(result.rowcount == 1)

    async def release(self, channel: str, holder: str, *, now: datetime) -> None:
        """Let another process poll ``channel`` at once (a graceful stop)."""
        table = INBOUND_POLLS
        await self.session.execute(
            update(table)
            .where(table.c.channel == channel, table.c.holder == holder)
            .values(holder=None, lease_expires_at=None, updated_at=now)
        )

    # --- inbound messages ------------------------------------------------------------------

    async def add(self, row: dict[str, Any]) -> None:
        await self.session.execute(insert(INBOUND_MESSAGES).values(**row))

    async def messages(
        self, filters: InboundFilter, *, limit: int, before_id: uuid.UUID | None
    ) -> Sequence[InboundMessage]:
        """Newest first by id (ids are time-ordered); ``before_id`` is the cursor."""
        stmt = newest_first(
            select(InboundMessage), InboundMessage.id, limit=limit, before_id=before_id
        )
        if filters.channel is not None:
            stmt = stmt.where(InboundMessage.channel == filters.channel)
        if filters.outcome is not None:
            stmt = stmt.where(InboundMessage.outcome == filters.outcome)
        if filters.since is not None:
            stmt = stmt.where(InboundMessage.received_at >= filters.since)
        return list((await self.session.execute(stmt)).scalars())

    # --- route mutes -----------------------------------------------------------------------

    async def mute(self, mute: Mute, *, now: datetime) -> None:
        """Mute ``mute.route`` for ``mute.channel_type`` until ``mute.until``, replacing any
        earlier mute of the two (a shorter one too: the last word counts)."""
        await self.unmute(mute.route, mute.channel_type)
        await self.session.execute(
            insert(ROUTE_MUTES).values(
                route=mute.route,
                channel_type=mute.channel_type,
                until=mute.until,
                muted_by=mute.by,
                created_at=now,
            )
        )

    async def unmute(self, route: str, channel_type: str) -> bool:
        """Lift the mute; whether there was one."""
        table = ROUTE_MUTES
        result: Any = await self.session.execute(
            delete(table).where(table.c.route == route, table.c.channel_type == channel_type)
        )
        return bool(result.rowcount)

    async def mutes(self, now: datetime) -> list[Mute]:
        """The mutes still in force at ``now``."""
        table = ROUTE_MUTES
        rows = await self.session.execute(
            select(table.c.route, table.c.channel_type, table.c.until, table.c.muted_by).where(
                table.c.until > now
            )
        )
        return [Mute(route, channel_type, until, by) for route, channel_type, until, by in rows]


def _insert_ignoring(session: AsyncSession, table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the session's database's own words."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()
