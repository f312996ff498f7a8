"""The route mutes in force (``/mute``), as the worker reads them before its claims.

A muted hop is left out of its round as if the route did not list it: the orchestrator records
a ``skipped`` attempt with the code ``muted`` and the mute's reason, and the hop ends
``skipped`` for that notification (a message sent while the route was muted never reaches the
muted channel later). Every process's worker reads the table at most once per
``FRESH_FOR``; the process that stores a mute (its inbound loop) reads it again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain import Mute
from app.store.inbound import InboundLog

FRESH_FOR = 1.0
"""Seconds a read of the mutes serves before the next claim reads them again."""


class MuteBook:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._monotonic = monotonic
        self._read_at: float | None = None
        self._mutes: dict[str, list[Mute]] = {}

    def invalidate(self) -> None:
        """Read the table again before the next claim (a mute was just stored or lifted)."""
        self._read_at = None

    async def refresh(self, now: datetime) -> None:
        """Read the mutes in force at ``now`` unless the last read is fresh enough."""
        moment = self._monotonic()
        if self._read_at is not None and moment - self._read_at < FRESH_FOR:
            return
        async with self._sessions() as session:
            mutes = await InboundLog(session).mutes(now)
        by_route: dict[str, list[Mute]] = {}
        for mute in mutes:
            by_route.setdefault(mute.route, []).append(mute)
        self._mutes, self._read_at = by_route, moment

    def muted_hops(
        self, route: str | None, channel_types: Sequence[str], now: datetime
    ) -> dict[int, str]:
        """The hops of a chain (its channels' types, in order) that ``route``'s mutes leave out
        at ``now``, each with the reason its skipped attempt records."""
        mutes = self._mutes.get(route) if route is not None else None
        if not mutes:
            return {}
        return {
            index: mute.reason()
            for mute in mutes
            if mute.until > now
            for index, channel_type in enumerate(channel_types)
            if channel_type == mute.channel_type
        }
