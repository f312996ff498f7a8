"""The fallback orchestrator: one round over a chain of channels, and what follows from it.

Pure in the sense that matters: no SQL, no FastAPI, no sleeping. It is handed the chain, the
message and the notification's hop states; it calls the channels and returns every attempt, the
new hop states and the decision (final status, or when the next round runs). The worker feeds it
and persists what it returns.

Hop states::

    pending   not tried yet in this set of rounds
    retrying  failed in a way worth another round (transient, rate_limited, config, circuit open)
    delivered the channel took the message
    failed    permanent failure, or rounds exhausted: never tried again
    skipped   nothing to try (no address for this channel type, channel disabled, the route
              muted for the channel's type)
    unused    never tried because an earlier hop delivered (fallback)
    cancelled not tried (again) because the notification was cancelled
    expired   not tried (again) because the notification expired first
    awaiting_confirmation / awaiting_ack
              delivered, held open until a receipt or an acknowledgement, or its deadline
    unacknowledged
              delivered, but not acknowledged within its ack_within: the chain went on

Holds (README, "Receipts, acknowledgements and escalation"). Confirmation and escalation are one
mechanism: a delivered hop is held open (``HOLD_STATES``) and the notification stays ``pending``,
due at the hold's deadline, so a worker claims it then as any due notification (the timer is a
row, not a sleep). ``resume`` settles the holds from what the worker read (the held attempt and
its receipts) and, when a hold ended without settling the notification, goes on with the hops
after it, in the same round. An acknowledgement ends it from outside (``acknowledged``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from app.channels.base import (
    ChannelConfig,
    DeliveryError,
    DeliveryResult,
    Message,
    redact_result,
)
from app.delivery.circuit import CircuitBreaker, DestinationCircuits, observe
from app.delivery.retry import next_round_at, rounds_allowed
from app.domain import (
    CONFIRMING,
    FINAL_STATUSES,
    FIRST_SUCCESS,
    HOLD_STATES,
    MUTED,
    OPEN_HOP_STATES,
    REFUTING,
    STOPPING_STATUSES,
    AttemptOutcome,
    AttemptTrigger,
    ConfirmOn,
    ErrorClass,
    HeldAttempt,
    HoldPolicy,
    Hop,
    HopState,
    NotificationStatus,
    Strategy,
)
from app.durations import format_duration
from app.ids import uuid7
from app.ratelimit import RateLimiter

logger = logging.getLogger("herald.delivery")

RETRYABLE_SKIPS = frozenset({"circuit_open"})
"""Skip codes that may clear by the next round; every other skip is final for the hop."""


TIMEOUT_GRACE = 0.5
"""Seconds past the channel's own timeout before the orchestrator cancels a send."""


class SendingChannel(Protocol):
    """What the orchestrator needs of a channel."""

    @property
    def name(self) -> str: ...
    @property
    def type_name(self) -> str: ...
    @property
    def config(self) -> ChannelConfig: ...

    async def send(self, message: Message) -> DeliveryResult: ...


@dataclass(slots=True)
class Link:
    """One hop of a chain: the channel, its rate limiter, its circuit (or, for a channel that
    sends where the recipient says, its circuits per destination), the secrets to redact."""

    channel: SendingChannel
    limiter: RateLimiter | None = None
    circuit: CircuitBreaker | None = None
    secrets: Sequence[str] = ()
    destinations: DestinationCircuits | None = None
    receipts: bool = False
    """The channel's provider sends receipts for what it delivers (and Herald takes them)."""

    def breaker(self, message: Message) -> tuple[CircuitBreaker | None, str | None]:
        """The circuit ``message`` goes through, and its destination when it is per destination."""
        if self.destinations is None:
            return self.circuit, None
        destination = self.destinations.locate(message)
        if destination is None:
            return self.circuit, None
        return self.destinations.breaker(destination), destination


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    channel: str
    channel_type: str
    hop: int
    round: int
    trigger: AttemptTrigger
    result: DeliveryResult
    started_at: datetime
    duration_ms: int
    digest_id: uuid.UUID | None = None
    """The digest send this try was (``app.dedup``): its attempt row on each notification the
    digest listed names it."""

    def row(self, notification_id: uuid.UUID) -> dict[str, Any]:
        """The ``attempts`` row of this try (a plain row: it is only ever inserted)."""
        error = self.result.error
        return {
            "id": uuid7(),
            "notification_id": notification_id,
            "channel": self.channel,
            "channel_type": self.channel_type,
            "round": self.round,
            "hop": self.hop,
            "trigger": self.trigger,
            "outcome": self.outcome,
            "error_class": str(error.cls) if error else None,
            "error_code": error.code if error else None,
            "error_message": error.message if error else None,
            "provider_status": self.result.provider_status,
            "provider_message_id": self.result.provider_message_id,
            "response_excerpt": self.result.response_excerpt,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "digest_id": self.digest_id,
        }

    @property
    def outcome(self) -> AttemptOutcome:
        if self.result.error is None:
            return AttemptOutcome.DELIVERED
        if self.result.error.cls is ErrorClass.SKIPPED:
            return AttemptOutcome.SKIPPED
        return AttemptOutcome.FAILED


@dataclass(frozen=True, slots=True)
class Plan:
    """What the notification asks of this round."""

    strategy: Strategy
    schedule: Sequence[float]
    jitter: float
    round: int
    """The number this round gets (over the notification's life)."""
    rounds_done: int
    """Rounds of the current set already run before this one."""
    trigger: AttemptTrigger
    expires_at: datetime | None
    holds: HoldPolicy | None = None
    muted: Mapping[int, str] = field(default_factory=dict)
    """Hops (by index) left out of this round because their route is muted for their channel
    type (``/mute``), each with the reason its skipped attempt records."""


@dataclass(frozen=True, slots=True)
class Revision:
    """An attempt that delivered, found failed after all by its receipts (or their absence)."""

    attempt_id: uuid.UUID
    error: DeliveryError


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything a round decided; the worker writes it in one transaction."""

    status: NotificationStatus
    hops: list[Hop]
    attempts: list[AttemptRecord] = field(default_factory=list)
    next_attempt_at: datetime | None = None
    delivered_via: str | list[str] | None = None
    delivered_at: datetime | None = None
    last_error: dict[str, Any] | None = None
    revisions: list[Revision] = field(default_factory=list)
    """Delivered attempts that a receipt (or its absence) showed failed."""
    acknowledgement: dict[str, Any] | None = None
    """Who acknowledged it, when and how (``acknowledged`` only)."""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def utcnow() -> datetime:
    return datetime.now(UTC)


def _error_dict(channel: str, error: DeliveryError) -> dict[str, Any]:
    return {
        "channel": channel,
        "class": str(error.cls),
        "code": error.code,
        "message": error.message,
    }


def _hop_state_after(result: DeliveryResult) -> HopState:
    error = result.error
    if error is None:
        return HopState.DELIVERED
    if error.cls is ErrorClass.PERMANENT:
        return HopState.FAILED
    if error.cls is ErrorClass.SKIPPED and error.code not in RETRYABLE_SKIPS:
        return HopState.SKIPPED
    return HopState.RETRYING


NOT_ACKNOWLEDGED = "not_acknowledged"
"""The reason an escalation that nobody acknowledged ends ``failed`` or ``expired``."""


def is_muted(hop: Hop) -> bool:
    """A hop skipped because its route was muted: as if it were not in the chain."""
    return hop.state == HopState.SKIPPED and (hop.last_error or {}).get("code") == MUTED


def settle(hops: Sequence[Hop], status: NotificationStatus) -> list[Hop]:
    """Hop states for a final status: no hop stays ``pending``, ``retrying`` or held open (a
    held hop was delivered: acknowledged with the notification, else unacknowledged if it
    waited for an acknowledgement)."""
    if status not in FINAL_STATUSES:
        return list(hops)
    settled = []
    for hop in hops:
        if hop.state == HopState.AWAITING_ACK:
            acked = status == NotificationStatus.ACKNOWLEDGED
            hop = replace(hop, state=HopState.DELIVERED if acked else HopState.UNACKNOWLEDGED)
        elif hop.state == HopState.AWAITING_CONFIRMATION:
            hop = replace(hop, state=HopState.DELIVERED)
        elif status in STOPPING_STATUSES and hop.state in OPEN_HOP_STATES:
            hop = replace(hop, state=HopState(status))
        elif hop.state == HopState.PENDING:
            hop = replace(hop, state=HopState.UNUSED)
        elif hop.state == HopState.RETRYING:
            skipped = (hop.last_error or {}).get("class") == ErrorClass.SKIPPED
            hop = replace(hop, state=HopState.SKIPPED if skipped else HopState.FAILED)
        settled.append(hop)
    return settled


def unacknowledged_error(hops: Sequence[Hop], status: NotificationStatus) -> dict[str, Any] | None:
    """The ``last_error`` of a notification that ends ``failed`` or ``expired`` after some hop
    went unacknowledged: the reason is ``not_acknowledged`` (``None`` otherwise)."""
    if status not in (NotificationStatus.FAILED, NotificationStatus.EXPIRED):
        return None
    missed = [hop.channel for hop in hops if hop.state == HopState.UNACKNOWLEDGED]
    if not missed:
        return None
    return {
        "channel": missed[-1],
        "class": str(ErrorClass.PERMANENT),
        "code": NOT_ACKNOWLEDGED,
        "message": f"delivered through {', '.join(missed)}, but nobody acknowledged it",
    }


def _held_state(
    index: int, link: Link, plan: Plan, delivered_at: datetime
) -> tuple[HopState, datetime] | None:
    """The hold a hop that just delivered enters, and its deadline (``None``: not held)."""
    holds = plan.holds
    if holds is None:
        return None
    if holds.confirm_within is not None and link.receipts:
        return HopState.AWAITING_CONFIRMATION, delivered_at + _seconds(holds.confirm_within)
    return _ack_hold(index, plan, delivered_at)


def _ack_hold(index: int, plan: Plan, delivered_at: datetime) -> tuple[HopState, datetime] | None:
    ack_within = plan.holds.ack_for(index) if plan.holds is not None else None
    if plan.strategy != Strategy.ESCALATE or ack_within is None:
        return None
    return HopState.AWAITING_ACK, delivered_at + _seconds(ack_within)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _verdict(held: HeldAttempt, policy: HoldPolicy) -> tuple[bool, DeliveryError | None] | None:
    """What the receipts of a hop held for confirmation say: ``(True, None)`` confirmed,
    ``(False, error)`` refuted, ``None`` nothing decisive yet."""
    refuted = [r for r in held.receipts if r.status in REFUTING]
    for receipt in sorted(refuted, key=lambda r: r.at):
        if REFUTING[receipt.status] in policy.confirm_on:
            code = f" (error {receipt.code})" if receipt.code else ""
            return False, DeliveryError(
                ErrorClass.PERMANENT,
                "receipt_failed",
                f"the provider reported the message {receipt.status}{code}",
            )
    if any(r.status in CONFIRMING for r in held.receipts) or refuted:
        return True, None  # a refutation confirm.on does not name counts as delivered
    return None


class Orchestrator:
    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()

    def expire(self, hops: Sequence[Hop]) -> Outcome:
        """The outcome for a notification whose ``expires_at`` has passed: no attempt at all."""
        expired = NotificationStatus.EXPIRED
        settled = settle(hops, expired)
        return Outcome(
            status=expired, hops=settled, last_error=unacknowledged_error(settled, expired)
        )

    def acknowledged(self, hops: Sequence[Hop], acknowledgement: dict[str, Any]) -> Outcome:
        """The outcome for a notification acknowledged while a worker held it (recorded, not
        yet final): no attempt. ``acknowledgement``: who, when and how."""
        status = NotificationStatus.ACKNOWLEDGED
        return Outcome(status=status, hops=settle(hops, status), acknowledgement=acknowledgement)

    async def run_round(
        self,
        message: Message,
        chain: Sequence[Link],
        hops: Sequence[Hop],
        plan: Plan,
    ) -> Outcome:
        """Try the hops still worth trying, in order, and decide what follows."""
        hops = list(hops)
        attempts: list[AttemptRecord] = []
        deadlines: dict[int, datetime] = {}
        await self._pass(message, chain, hops, plan, 0, attempts, deadlines)
        return self._decide(hops, attempts, plan, deadlines)

    async def resume(
        self,
        message: Message,
        chain: Sequence[Link],
        hops: Sequence[Hop],
        plan: Plan,
        held: Mapping[int, HeldAttempt],
    ) -> Outcome:
        """Settle the held hops (``held``: what the worker read of each) and go on.

        ``plan`` is the round the holds belong to (its number is not moved on). A hop held for
        confirmation is confirmed by a ``delivered`` or ``read`` receipt, and refuted by an
        ``undelivered`` or ``failed`` one (when ``confirm.on`` names it) or by its deadline
        passing first (``timeout``): its attempt is then revised as failed (``receipt_failed``,
        ``receipt_timeout``) and the chain goes on. A confirmed hop of an escalation then
        waits for an acknowledgement; a hop whose ``ack_within`` passed is ``unacknowledged``
        and the chain goes on. A hold whose deadline has not come keeps the notification
        pending until it does.
        """
        now = self.clock()
        hops = list(hops)
        policy = plan.holds or HoldPolicy()
        deadlines: dict[int, datetime] = {}
        revisions: list[Revision] = []
        delivered_at: datetime | None = None
        go_on_after: int | None = None
        for index, hop in enumerate(hops):
            if hop.state not in HOLD_STATES:
                continue
            found = held.get(index)
            if found is None:  # its attempt is gone: nothing to wait for
                hops[index] = replace(hop, state=HopState.DELIVERED)
                continue
            state = hop.state
            if state == HopState.AWAITING_CONFIRMATION:
                deadline = found.started_at + _seconds(policy.confirm_within or 0.0)
                verdict = _verdict(found, policy)
                if verdict is None and now < deadline:
                    deadlines[index] = deadline
                    continue
                if verdict is None:
                    verdict = self._timed_out(policy)
                confirmed, error = verdict
                if not confirmed and error is not None:
                    hops[index] = replace(
                        hop, state=HopState.FAILED, last_error=_error_dict(hop.channel, error)
                    )
                    revisions.append(Revision(found.id, error))
                    go_on_after = index
                    continue
                ack = _ack_hold(index, plan, found.started_at)
                if ack is None:
                    hops[index] = replace(hop, state=HopState.DELIVERED)
                    delivered_at = found.started_at
                    continue
                state, deadline = ack
                hops[index] = hop = replace(hop, state=state)
            else:
                deadline = found.started_at + _seconds(policy.ack_for(index) or 0.0)
            if now < deadline:
                deadlines[index] = deadline
                continue
            hops[index] = replace(hop, state=HopState.UNACKNOWLEDGED)
            go_on_after = index
        attempts: list[AttemptRecord] = []
        if not deadlines and go_on_after is not None:
            await self._pass(message, chain, hops, plan, go_on_after + 1, attempts, deadlines)
        outcome = self._decide(hops, attempts, plan, deadlines, delivered_at)
        return replace(outcome, revisions=revisions)

    def _timed_out(self, policy: HoldPolicy) -> tuple[bool, DeliveryError | None]:
        if ConfirmOn.TIMEOUT not in policy.confirm_on:
            return True, None
        within = format_duration(policy.confirm_within or 0.0)
        return False, DeliveryError(
            ErrorClass.PERMANENT,
            "receipt_timeout",
            f"no delivered receipt from the provider within {within}",
        )

    async def _pass(
        self,
        message: Message,
        chain: Sequence[Link],
        hops: list[Hop],
        plan: Plan,
        start: int,
        attempts: list[AttemptRecord],
        deadlines: dict[int, datetime],
    ) -> None:
        """Try the open hops from ``start`` on, in order, until one delivers (fallback and
        escalate) or every one was tried (all); a hop that delivered may be held open."""
        for index in range(start, len(chain)):
            link = chain[index]
            if hops[index].state not in OPEN_HOP_STATES:
                continue
            record = await self._attempt(message, link, index, plan)
            attempts.append(record)
            hop = hops[index]
            error = record.result.error
            state = _hop_state_after(record.result)
            if state == HopState.DELIVERED:
                hold = _held_state(index, link, plan, record.started_at)
                if hold is not None:
                    state, deadlines[index] = hold
            hops[index] = replace(
                hop,
                state=state,
                attempts=hop.attempts + 1,
                last_error=_error_dict(hop.channel, error) if error else hop.last_error,
            )
            if error is None and plan.strategy in FIRST_SUCCESS:
                break

    async def _attempt(self, message: Message, link: Link, index: int, plan: Plan) -> AttemptRecord:
        channel = link.channel
        started_at = self.clock()
        began = time.perf_counter()
        muted = plan.muted.get(index)
        result = (
            DeliveryResult.skipped(MUTED, muted)
            if muted is not None
            else await self._send(message.for_type(channel.type_name), link)
        )
        return AttemptRecord(
            channel=channel.name,
            channel_type=channel.type_name,
            hop=index,
            round=plan.round,
            trigger=plan.trigger,
            result=result,
            started_at=started_at,
            duration_ms=round((time.perf_counter() - began) * 1000),
        )

    async def _send(self, message: Message, link: Link) -> DeliveryResult:
        channel = link.channel
        if not channel.config.enabled:
            return DeliveryResult.skipped("channel_disabled", f"channel {channel.name} is disabled")
        circuit, destination = link.breaker(message)
        if circuit is not None and not circuit.allow():
            where = f" for {destination}" if destination else ""
            return DeliveryResult.skipped(
                "circuit_open",
                f"circuit open{where} ({circuit.reason}); next trial in {circuit.retry_in():.0f}s",
            )
        # The one border: what the channel said is redacted and cut before anything keeps it
        # (a circuit's reason is logged and shown by GET /v1/channels).
        result = redact_result(await self._call(message, link), link.secrets)
        if circuit is not None:
            observe(circuit, result, link.destinations, destination)
        return result

    async def _call(self, message: Message, link: Link) -> DeliveryResult:
        channel = link.channel
        config = channel.config
        waited = 0.0 if link.limiter is None else await link.limiter.acquire(config.timeout)
        if waited is None:
            return DeliveryResult.failed(
                ErrorClass.RATE_LIMITED,
                "local_rate_limit",
                f"channel rate limit {config.rate_limit} left no token within the timeout",
            )
        try:
            async with asyncio.timeout(max(0.0, config.timeout - waited) + TIMEOUT_GRACE):
                return await channel.send(message)
        except TimeoutError:
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT, "timeout", f"no answer within {config.timeout:g}s"
            )
        except Exception as exc:
            logger.exception("channel %s raised instead of returning a result", channel.name)
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT, "channel_error", f"channel raised {type(exc).__name__}"
            )

    def _decide(
        self,
        hops: list[Hop],
        attempts: list[AttemptRecord],
        plan: Plan,
        deadlines: Mapping[int, datetime],
        confirmed_at: datetime | None = None,
    ) -> Outcome:
        now = self.clock()
        states = [hop.state for hop in hops]
        delivered = [hop.channel for hop in hops if hop.state == HopState.DELIVERED]
        retryable = any(state in OPEN_HOP_STATES for state in states)
        failures = [a for a in attempts if a.result.error is not None]
        last_error = (
            _error_dict(failures[-1].channel, failures[-1].result.error)  # type: ignore[arg-type]
            if failures
            else None
        )
        rounds_done = plan.rounds_done + 1

        Status = NotificationStatus
        more = retryable and rounds_done < rounds_allowed(plan.schedule)
        # A muted hop is left out as if the route did not list it: ``all`` asks every other hop.
        counted = [hop.state for hop in hops if not is_muted(hop)]
        if deadlines:
            status = Status.PENDING
        elif plan.strategy in FIRST_SUCCESS:
            status = Status.DELIVERED if delivered else Status.PENDING if more else Status.FAILED
        elif counted and all(state == HopState.DELIVERED for state in counted):
            status = Status.DELIVERED
        elif more:
            status = Status.PENDING
        else:
            status = Status.PARTIAL if delivered else Status.FAILED

        next_attempt_at = None
        if deadlines:
            next_attempt_at = min(deadlines.values())
            if plan.expires_at is not None:
                next_attempt_at = min(next_attempt_at, plan.expires_at)
        elif status == Status.PENDING:
            retry_afters = [
                a.result.retry_after
                for a in attempts
                if a.result.error is not None
                and a.result.error.cls is ErrorClass.RATE_LIMITED
                and a.result.retry_after is not None
            ]
            next_attempt_at = next_round_at(
                now=now,
                schedule=plan.schedule,
                jitter=plan.jitter,
                rounds_done=rounds_done,
                retry_after=max(retry_afters) if retry_afters else None,
                expires_at=plan.expires_at,
                rng=self.rng,
            )
        via: str | list[str] | None = None
        if delivered:
            via = delivered if plan.strategy == Strategy.ALL else delivered[0]
        delivered_at = None
        if status in (Status.DELIVERED, Status.PARTIAL) and delivered:
            delivered_at = max(
                (a.started_at for a in attempts if a.result.error is None),
                default=confirmed_at or now,
            )
        settled = settle(hops, status)
        return Outcome(
            status=status,
            hops=settled,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            delivered_via=via,
            delivered_at=delivered_at,
            last_error=unacknowledged_error(settled, status) or last_error,
        )
