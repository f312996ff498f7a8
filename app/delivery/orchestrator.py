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
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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
    FINAL_STATUSES,
    MUTED,
    OPEN_HOP_STATES,
    STOPPING_STATUSES,
    AttemptOutcome,
    AttemptTrigger,
    ErrorClass,
    Hop,
    HopState,
    NotificationStatus,
    Strategy,
)
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
    muted: Mapping[int, str] = field(default_factory=dict)
    """Hops (by index) left out of this round because their route is muted for their channel
    type (``/mute``), each with the reason its skipped attempt records."""


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


def is_muted(hop: Hop) -> bool:
    """A hop skipped because its route was muted: as if it were not in the chain."""
    return hop.state == HopState.SKIPPED and (hop.last_error or {}).get("code") == MUTED


def settle(hops: Sequence[Hop], status: NotificationStatus) -> list[Hop]:
    """Hop states for a final status: no hop stays ``pending`` or ``retrying``."""
    if status not in FINAL_STATUSES:
        return list(hops)
    settled = []
    for hop in hops:
        if status in STOPPING_STATUSES and hop.state in OPEN_HOP_STATES:
            hop = replace(hop, state=HopState(status))
        elif hop.state == HopState.PENDING:
            hop = replace(hop, state=HopState.UNUSED)
        elif hop.state == HopState.RETRYING:
            skipped = (hop.last_error or {}).get("class") == ErrorClass.SKIPPED
            hop = replace(hop, state=HopState.SKIPPED if skipped else HopState.FAILED)
        settled.append(hop)
    return settled


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
        return Outcome(status=expired, hops=settle(hops, expired))

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
        for index, link in enumerate(chain):
            if hops[index].state not in OPEN_HOP_STATES:
                continue
            record = await self._attempt(message, link, index, plan)
            attempts.append(record)
            hop = hops[index]
            error = record.result.error
            hops[index] = replace(
                hop,
                state=_hop_state_after(record.result),
                attempts=hop.attempts + 1,
                last_error=_error_dict(hop.channel, error) if error else hop.last_error,
            )
            if error is None and plan.strategy == Strategy.FALLBACK:
                break
        return self._decide(hops, attempts, plan)

    async def _attempt(self, message: Message, link: Link, index: int, plan: Plan) -> AttemptRecord:
        channel = link.channel
        started_at = self.clock()
        began = time.perf_counter()
        muted = plan.muted.get(index)
        result = (
            DeliveryResult.skipped(MUTED, muted)
            if muted is not None
            else await self._send(message, link)
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

    def _decide(self, hops: list[Hop], attempts: list[AttemptRecord], plan: Plan) -> Outcome:
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
        if plan.strategy == Strategy.FALLBACK:
            status = Status.DELIVERED if delivered else Status.PENDING if more else Status.FAILED
        elif counted and all(state == HopState.DELIVERED for state in counted):
            status = Status.DELIVERED
        elif more:
            status = Status.PENDING
        else:
            status = Status.PARTIAL if delivered else Status.FAILED

        next_attempt_at = None
        if status == Status.PENDING:
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
                (a.started_at for a in attempts if a.result.error is None), default=now
            )
        return Outcome(
            status=status,
            hops=settle(hops, status),
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            delivered_via=via,
            delivered_at=delivered_at,
            last_error=last_error,
        )
