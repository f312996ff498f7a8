"""Quiet hours: a local time window during which some hops of a route are held or skipped.

A route's ``quiet_hours`` (and a request's ``recipient.quiet_hours``, which replaces the
route's for that notification) names a time zone, a window (``from`` → ``to``, local wall-clock
times; a window that crosses midnight, ``22:00`` → ``07:00``, is the usual case), the hops it
applies to (channel names or channel types), what happens to them (``hold``: the notification
waits until the window ends; ``skip``: those hops are skipped and the chain goes on), and the
severity from which a notification ignores it.

Times are computed with ``zoneinfo`` on the wall clock of the zone: the window ``22:00`` →
``07:00`` ends at 07:00 local time whatever the UTC offset did in between (the night of a DST
change is an hour shorter or longer). A ``from`` that does not exist that day (inside the spring
gap) starts the window at the first instant after the gap; a time that exists twice (the autumn
overlap) is taken at its first occurrence.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.domain import QuietMode, Severity

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
SEVERITY_ORDER = tuple(Severity)
"""Severities, least to most severe."""


def _wall_time(value: object) -> time:
    if isinstance(value, time):
        return value
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a 24-hour time HH:MM such as 22:00, not {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


class QuietHours(BaseModel):
    """Quiet hours: from ``from`` to ``to`` (HH:MM, local time in ``timezone``), the hops named
    in ``hops`` (channel names or types) are held until the window ends (``mode: hold``) or
    skipped (``skip``); ``bypass_severity`` and more severe notifications ignore the window."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    timezone: str = Field(max_length=64, examples=["Europe/Berlin"])
    """An IANA time zone name."""
    start: str = Field(alias="from", examples=["22:00"])
    end: str = Field(alias="to", examples=["07:00"])
    hops: list[str] = Field(min_length=1, max_length=32)
    """Channel names or channel types the window applies to."""
    mode: QuietMode = QuietMode.HOLD
    bypass_severity: Severity | None = Severity.CRITICAL
    """This severity and the more severe ones ignore the window (``null``: none does)."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin"
            ) from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        _wall_time(value)
        return value

    @field_validator("hops")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if any(not name or len(name) > 64 for name in value):
            raise ValueError("a hop is a channel name or type (1 to 64 characters)")
        return value

    def applies_to(self, channel: str, channel_type: str) -> bool:
        return channel in self.hops or channel_type in self.hops

    def bypassed_by(self, severity: str) -> bool:
        if self.bypass_severity is None:
            return False
        try:
            rank = SEVERITY_ORDER.index(Severity(severity))
        except ValueError:
            return False
        return rank >= SEVERITY_ORDER.index(self.bypass_severity)

    def quiet_until(self, now: datetime) -> datetime | None:
        """When the window that holds ``now`` ends (UTC); ``None`` when ``now`` is outside it."""
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        start, end = _wall_time(self.start), _wall_time(self.end)
        if start == end:
            return None  # an empty window
        # The window that holds ``now`` began today or yesterday (local dates).
        for days_back in (0, 1):
            day = local.date() - timedelta(days=days_back)
            opens = _at(day, start, zone)
            closes_day = day if end > start else day + timedelta(days=1)
            closes = _at(closes_day, end, zone)
            if opens <= now < closes:
                return closes.astimezone(UTC)
        return None


def _at(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The instant the local wall clock of ``zone`` reads ``wall`` on ``day``: in a spring gap,
    the first instant after it; in an autumn overlap, the first occurrence."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=zone)  # fold=0: the earlier of two occurrences
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In the gap: the two offsets bracket the transition; find the first instant past it.
    bounds = sorted(naive.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    low, high = bounds
    while high - low > timedelta(microseconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) > naive:
            high = middle
        else:
            low = middle
    return high.astimezone(zone)
