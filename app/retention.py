"""Retention: how long a finished notification is kept, per final status, before it is purged.

herald.yaml has a global ``retention`` section (a period per final status, how long Herald
remembers which ids it purged, and the sweep's batch bounds); a route's own ``retention`` names
periods for some statuses, and the others come from the global section. A period of ``null``
keeps notifications of that status for ever.

``Cutoffs`` turns the config into what one sweep deletes: for each final status, groups of
routes sharing one cutoff time (``updated_at`` before it: the notification finished, or last
changed, that long ago). The sweep itself is ``app.delivery.retention``; its statements are
``app.store.retention``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from app.domain import FINAL_STATUSES, NotificationStatus
from app.durations import Duration

DAY = 86400.0


class RetentionPeriods(BaseModel):
    """A period per final status (``30d``, ``90d``…; ``null`` keeps for ever). On a route,
    a status left out takes the global section's period."""

    model_config = ConfigDict(extra="forbid")

    delivered: Duration | None = 30 * DAY
    failed: Duration | None = 90 * DAY
    partial: Duration | None = 90 * DAY
    expired: Duration | None = 90 * DAY
    cancelled: Duration | None = 30 * DAY
    acknowledged: Duration | None = 30 * DAY

    def period(self, status: NotificationStatus) -> float | None:
        value: float | None = getattr(self, status.value)
        return value

    def over(self, defaults: RetentionPeriods) -> RetentionPeriods:
        """These periods where they were written, ``defaults``' elsewhere."""
        return defaults.model_copy(
            update={name: getattr(self, name) for name in self.model_fields_set}
        )


class RetentionConfig(RetentionPeriods):
    """The global ``retention`` section: default periods, and how the sweep runs."""

    every: Duration = Field(default=60.0, gt=0)
    """How often the sweep looks for notifications past their period."""
    batch_size: int = Field(default=500, ge=1, le=10000)
    """Most notifications deleted in one transaction (the sweep shrinks it when a batch takes
    longer than ``batch_time``)."""
    batch_time: Duration = Field(default=0.05, gt=0, le=5)
    """Longest a batch's transaction should hold the database; after each batch the sweep
    pauses as long as the batch took, so writers get at least half the time."""
    inbound: Duration | None = Field(default=30 * DAY, gt=0)
    """How long the messages chats sent Herald's bots (``GET /v1/inbound``) are kept;
    ``null``: for ever."""
    remember_purged: Duration = Field(default=365 * DAY, gt=0)
    """How long a ``GET`` of a purged id still says it was purged (the knowledge is kept as
    id ranges, one per batch and owner, so it stays small)."""

    @property
    def periods(self) -> RetentionPeriods:
        return RetentionPeriods(
            **{name: getattr(self, name) for name in RetentionPeriods.model_fields}
        )


PURGEABLE = tuple(sorted(FINAL_STATUSES))
"""The statuses retention applies to: a notification is only purged once it is final."""


@dataclass(frozen=True, slots=True)
class CutoffGroup:
    """Notifications of ``status`` last changed before ``cutoff``, of the routes ``routes``
    (``others``: of every route not named by another group of the status, and of none)."""

    status: NotificationStatus
    cutoff: datetime
    routes: tuple[str, ...]
    others: bool


def cutoffs(
    config: RetentionConfig, routes: Mapping[str, RetentionPeriods | None], now: datetime
) -> list[CutoffGroup]:
    """What one sweep deletes at ``now``: per final status, the routes grouped by period.

    ``routes``: each configured route's own ``retention`` (``None``: it has none). A route with
    the global period shares the "others" group; a status kept for ever has no group at all.
    """
    defaults = config.periods
    groups: list[CutoffGroup] = []
    for status in PURGEABLE:
        default = defaults.period(status)
        named: dict[float | None, list[str]] = {}
        for route, own in sorted(routes.items()):
            period = own.over(defaults).period(status) if own is not None else default
            if period != default:
                named.setdefault(period, []).append(route)
        if default is not None:
            excluded = tuple(route for names in named.values() for route in names)
            groups.append(CutoffGroup(status, now - timedelta(seconds=default), excluded, True))
        for period, names in named.items():
            if period is not None:
                groups.append(
                    CutoffGroup(status, now - timedelta(seconds=period), tuple(names), False)
                )
    return groups
