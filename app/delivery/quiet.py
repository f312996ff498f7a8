"""A round under quiet hours (``app.quiet``): which hops may be tried now, and what follows.

Outside the window, for a notification whose severity bypasses it, or with no quiet hours, the
round is the orchestrator's as it is. Inside the window the hops it applies to are:

- ``skip``: tried as a channel that answers ``skipped`` / ``quiet_hours`` at once (an attempt
  says so), so the chain goes on to the next hop as it does for a hop with no address;
- ``hold``: not tried. With ``fallback`` the round runs the hops before the first open quiet
  hop; with ``all``, the hops that are not quiet. When that does not deliver (fallback) and a
  quiet hop is still open, the notification stays ``pending`` with ``next_attempt_at`` at the
  window's end (or its next retry, when that is sooner): a held round that tried nothing is
  not counted as a round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Literal

from app.channels.base import ChannelConfig, DeliveryResult, Message
from app.delivery.orchestrator import Link, Orchestrator, Outcome, Plan, SendingChannel, settle
from app.domain import OPEN_HOP_STATES, Hop, NotificationStatus, QuietMode, Strategy
from app.quiet import QuietHours

QUIET_CODE = "quiet_hours"


class _QuietConfig(ChannelConfig):
    type: Literal["quiet"] = "quiet"


class QuietChannel:
    """Stands in for a hop skipped during quiet hours: answers ``skipped`` without a send."""

    def __init__(self, channel: SendingChannel, until: datetime, quiet: QuietHours) -> None:
        self.name = channel.name
        self.type_name = channel.type_name
        self.config: ChannelConfig = _QuietConfig()
        self._message = (
            f"quiet hours ({quiet.start}-{quiet.end} {quiet.timezone}) until "
            f"{until.isoformat().replace('+00:00', 'Z')}"
        )

    async def send(self, message: Message) -> DeliveryResult:
        return DeliveryResult.skipped(QUIET_CODE, self._message)


async def run_round(
    orchestrator: Orchestrator,
    message: Message,
    chain: Sequence[Link],
    hops: Sequence[Hop],
    plan: Plan,
    quiet: QuietHours | None,
    now: datetime,
) -> Outcome:
    """The round of ``message`` under ``quiet`` at ``now``."""
    until = None
    if quiet is not None and not quiet.bypassed_by(message.severity):
        until = quiet.quiet_until(now)
    if quiet is None or until is None:
        return await orchestrator.run_round(message, chain, hops, plan)
    quiet_hops = {
        index
        for index, link in enumerate(chain)
        if quiet.applies_to(link.channel.name, link.channel.type_name)
        and hops[index].state in OPEN_HOP_STATES
    }
    if not quiet_hops:
        return await orchestrator.run_round(message, chain, hops, plan)
    if quiet.mode is QuietMode.SKIP:
        skipping = [
            Link(channel=QuietChannel(link.channel, until, quiet)) if i in quiet_hops else link
            for i, link in enumerate(chain)
        ]
        return await orchestrator.run_round(message, skipping, hops, plan)
    return await _held(orchestrator, message, chain, hops, plan, quiet_hops, until)


async def _held(
    orchestrator: Orchestrator,
    message: Message,
    chain: Sequence[Link],
    hops: Sequence[Hop],
    plan: Plan,
    quiet_hops: set[int],
    until: datetime,
) -> Outcome:
    if plan.strategy == Strategy.FALLBACK:
        runnable = list(range(min(quiet_hops)))
    else:
        runnable = [i for i in range(len(chain)) if i not in quiet_hops]
    held_until = until if plan.expires_at is None else min(until, plan.expires_at)
    if not any(hops[i].state in OPEN_HOP_STATES for i in runnable):
        return Outcome(
            status=NotificationStatus.PENDING, hops=list(hops), next_attempt_at=held_until
        )
    part = await orchestrator.run_round(
        message, [chain[i] for i in runnable], [hops[i] for i in runnable], plan
    )
    merged = list(hops)
    for position, index in enumerate(runnable):
        merged[index] = part.hops[position]
    attempts = [replace(record, hop=runnable[record.hop]) for record in part.attempts]
    if plan.strategy == Strategy.FALLBACK and part.status == NotificationStatus.DELIVERED:
        return replace(part, hops=settle(merged, part.status), attempts=attempts)
    due = held_until
    if part.status == NotificationStatus.PENDING and part.next_attempt_at is not None:
        due = min(due, part.next_attempt_at)
    return Outcome(
        status=NotificationStatus.PENDING,
        hops=merged,
        attempts=attempts,
        next_attempt_at=due,
        last_error=part.last_error,
    )
