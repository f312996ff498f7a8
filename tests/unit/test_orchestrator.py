"""The orchestrator with fake channels: no I/O, no sleeping, a fixed clock and seed."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from app.channels.base import (
    ChannelConfig,
    DeliveryError,
    DeliveryResult,
    ErrorClass,
    Message,
    Recipient,
)
from app.delivery.orchestrator import Link, Orchestrator, Plan
from app.domain import (
    ConfirmOn,
    HeldAttempt,
    HoldPolicy,
    Hop,
    HopState,
    Receipt,
    ReceiptStatus,
    Strategy,
    fresh_hops,
)
from app.ratelimit import RateLimiter
from tests.support.harness import Clock

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SCHEDULE = (5.0, 60.0, 300.0)

OK = DeliveryResult.ok(provider_status=200)
DOWN = DeliveryResult.failed(ErrorClass.TRANSIENT, "http_503", "HTTP 503")
GONE = DeliveryResult.failed(ErrorClass.PERMANENT, "http_410", "HTTP 410")
BROKEN = DeliveryResult.failed(ErrorClass.CONFIG, "http_401", "HTTP 401")
NO_ADDRESS = DeliveryResult.skipped("no_address", "recipient has no phone")


def slow(seconds: float) -> DeliveryResult:
    return DeliveryResult.failed(
        ErrorClass.RATE_LIMITED, "http_429", "slow down", retry_after=seconds
    )


class FakeChannel:
    type_name = "fake"

    def __init__(
        self, name: str, *results: DeliveryResult | BaseException, **config: object
    ) -> None:
        self.name = name
        self.results = list(results)
        self.config = ChannelConfig(type="fake", **config)
        self.calls = 0

    async def send(self, message: Message) -> DeliveryResult:
        self.calls += 1
        result = self.results.pop(0) if self.results else OK
        if isinstance(result, BaseException):
            raise result
        return result


class Hang(FakeChannel):
    async def send(self, message: Message) -> DeliveryResult:
        self.calls += 1
        await asyncio.sleep(3600)
        return OK


def message() -> Message:
    return Message(
        id=uuid.uuid4(),
        route="alerts",
        recipient=Recipient(email="ops@example.com"),
        subject="s",
        text="t",
        html=None,
        severity="info",
        source=None,
        metadata={},
        created_at=NOW,
    )


def plan(
    *,
    strategy: str = "fallback",
    rounds_done: int = 0,
    schedule: Sequence[float] = SCHEDULE,
    jitter: float = 0.0,
    expires_at: datetime | None = None,
) -> Plan:
    return Plan(
        strategy=strategy,
        schedule=schedule,
        jitter=jitter,
        round=rounds_done + 1,
        rounds_done=rounds_done,
        trigger="scheduled",
        expires_at=expires_at,
    )


def orchestrator(seed: int = 1) -> Orchestrator:
    return Orchestrator(clock=lambda: NOW, rng=random.Random(seed))


async def run(
    channels: Sequence[FakeChannel],
    hops: list[Hop] | None = None,
    **plan_args: object,
):
    chain = [Link(channel=c) for c in channels]
    return await orchestrator().run_round(
        message(),
        chain,
        hops or fresh_hops([c.name for c in channels]),
        plan(**plan_args),
    )


async def test_first_success_stops_the_chain() -> None:
    a, b, c = FakeChannel("a", DOWN), FakeChannel("b", OK), FakeChannel("c")
    outcome = await run([a, b, c])
    assert outcome.status == "delivered"
    assert outcome.delivered_via == "b"
    assert (a.calls, b.calls, c.calls) == (1, 1, 0)
    assert [h.state for h in outcome.hops] == ["failed", "delivered", "unused"]
    assert [x.outcome for x in outcome.attempts] == ["failed", "delivered"]
    assert [x.hop for x in outcome.attempts] == [0, 1]
    assert outcome.delivered_at == NOW
    assert outcome.next_attempt_at is None
    assert outcome.last_error == {
        "channel": "a",
        "class": "transient",
        "code": "http_503",
        "message": "HTTP 503",
    }


@pytest.mark.parametrize(
    ("result", "hop_state"),
    [
        (DOWN, "retrying"),
        (slow(1), "retrying"),
        (BROKEN, "retrying"),
        (GONE, "failed"),
        (NO_ADDRESS, "skipped"),
        (DeliveryResult.skipped("circuit_open", "open"), "retrying"),
    ],
)
async def test_each_class_sets_the_hop_state(result: DeliveryResult, hop_state: str) -> None:
    outcome = await run([FakeChannel("a", result), FakeChannel("b", DOWN)])
    assert outcome.hops[0].state == hop_state
    assert result.error is not None
    expected = "skipped" if result.error.cls is ErrorClass.SKIPPED else "failed"
    assert outcome.attempts[0].outcome == expected
    assert len(outcome.attempts) == 2, "every class moves on to the next hop at once"


async def test_retryable_failure_schedules_next_round_without_jitter() -> None:
    outcome = await run([FakeChannel("a", DOWN), FakeChannel("b", DOWN)])
    assert outcome.status == "pending"
    assert outcome.next_attempt_at == NOW + timedelta(seconds=5)
    assert [h.state for h in outcome.hops] == ["retrying", "retrying"]


async def test_later_rounds_use_later_delays() -> None:
    hops = [Hop("a", HopState.RETRYING, 2)]
    outcome = await run([FakeChannel("a", DOWN)], hops, rounds_done=2)
    assert outcome.next_attempt_at == NOW + timedelta(seconds=300)
    assert outcome.hops[0].attempts == 3


async def test_rounds_exhausted_fails_after_schedule_plus_one_rounds() -> None:
    hops = [Hop("a", HopState.RETRYING, 3)]
    outcome = await run([FakeChannel("a", DOWN)], hops, rounds_done=3)
    assert outcome.status == "failed"
    assert outcome.next_attempt_at is None
    assert outcome.hops[0].state == "failed"


async def test_all_permanent_fails_at_once() -> None:
    outcome = await run([FakeChannel("a", GONE), FakeChannel("b", NO_ADDRESS)])
    assert outcome.status == "failed"
    assert [h.state for h in outcome.hops] == ["failed", "skipped"]


async def test_permanent_hop_is_not_tried_in_later_rounds() -> None:
    a, b = FakeChannel("a"), FakeChannel("b", OK)
    hops = [Hop("a", HopState.FAILED, 1), Hop("b", HopState.RETRYING, 1)]
    outcome = await run([a, b], hops, rounds_done=1)
    assert a.calls == 0
    assert outcome.status == "delivered"
    assert [x.round for x in outcome.attempts] == [2]


async def test_retry_after_pushes_the_next_round_back() -> None:
    outcome = await run([FakeChannel("a", slow(120)), FakeChannel("b", DOWN)])
    assert outcome.next_attempt_at == NOW + timedelta(seconds=120)


async def test_retry_after_shorter_than_schedule_keeps_schedule() -> None:
    outcome = await run([FakeChannel("a", slow(1))])
    assert outcome.next_attempt_at == NOW + timedelta(seconds=5)


async def test_retry_after_is_clamped() -> None:
    outcome = await run([FakeChannel("a", slow(10 * 86400))])
    assert outcome.next_attempt_at == NOW + timedelta(seconds=3600)


@pytest.mark.parametrize("seed", range(20))
async def test_jitter_stays_within_bounds(seed: int) -> None:
    chain = [Link(channel=FakeChannel("a", DOWN))]
    outcome = await Orchestrator(clock=lambda: NOW, rng=random.Random(seed)).run_round(
        message(), chain, fresh_hops(["a"]), plan(jitter=0.2, schedule=(100.0,))
    )
    assert outcome.next_attempt_at is not None
    delay = (outcome.next_attempt_at - NOW).total_seconds()
    assert 80.0 <= delay <= 120.0


async def test_jitter_varies_between_draws() -> None:
    orch = Orchestrator(clock=lambda: NOW, rng=random.Random(7))
    delays = set()
    for _ in range(5):
        outcome = await orch.run_round(
            message(),
            [Link(channel=FakeChannel("a", DOWN))],
            fresh_hops(["a"]),
            plan(jitter=0.5, schedule=(100.0,)),
        )
        delays.add(outcome.next_attempt_at)
    assert len(delays) == 5


async def test_next_round_is_capped_at_expiry() -> None:
    expires = NOW + timedelta(seconds=2)
    outcome = await run([FakeChannel("a", DOWN)], expires_at=expires)
    assert outcome.status == "pending"
    assert outcome.next_attempt_at == expires


def test_expire_settles_hops_without_attempts() -> None:
    hops = [Hop("a", HopState.RETRYING, 1), Hop("b", HopState.PENDING)]
    outcome = orchestrator().expire(hops)
    assert outcome.status == "expired"
    assert outcome.attempts == []
    assert [h.state for h in outcome.hops] == ["expired", "expired"]


async def test_strategy_all_tries_every_hop() -> None:
    a, b, c = FakeChannel("a", OK), FakeChannel("b", OK), FakeChannel("c", OK)
    outcome = await run([a, b, c], strategy="all")
    assert outcome.status == "delivered"
    assert outcome.delivered_via == ["a", "b", "c"]
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)


async def test_strategy_all_retries_only_undelivered_hops() -> None:
    a, b = FakeChannel("a", OK), FakeChannel("b", DOWN, OK)
    first = await run([a, b], strategy="all")
    assert first.status == "pending"
    assert [h.state for h in first.hops] == ["delivered", "retrying"]
    second = await run([a, b], first.hops, strategy="all", rounds_done=1)
    assert (a.calls, b.calls) == (1, 2)
    assert second.status == "delivered"
    assert second.delivered_via == ["a", "b"]


async def test_strategy_all_partial_when_the_rest_is_permanent() -> None:
    outcome = await run([FakeChannel("a", OK), FakeChannel("b", GONE)], strategy="all")
    assert outcome.status == "partial"
    assert outcome.delivered_via == ["a"]


async def test_strategy_all_partial_when_rounds_run_out() -> None:
    hops = [Hop("a", HopState.DELIVERED, 1), Hop("b", HopState.RETRYING, 3)]
    outcome = await run(
        [FakeChannel("a"), FakeChannel("b", DOWN)], hops, strategy="all", rounds_done=3
    )
    assert outcome.status == "partial"
    assert [h.state for h in outcome.hops] == ["delivered", "failed"]


async def test_strategy_all_failed_when_nothing_delivers() -> None:
    outcome = await run([FakeChannel("a", GONE), FakeChannel("b", GONE)], strategy="all")
    assert outcome.status == "failed"
    assert outcome.delivered_via is None


async def test_disabled_channel_is_skipped_without_a_call() -> None:
    a = FakeChannel("a", enabled=False)
    outcome = await run([a, FakeChannel("b", OK)])
    assert a.calls == 0
    assert outcome.attempts[0].result.error.code == "channel_disabled"
    assert outcome.hops[0].state == "skipped"


async def test_a_raising_channel_is_a_transient_failure() -> None:
    outcome = await run([FakeChannel("a", RuntimeError("boom")), FakeChannel("b", OK)])
    error = outcome.attempts[0].result.error
    assert error is not None
    assert (error.cls, error.code) == (ErrorClass.TRANSIENT, "channel_error")
    assert outcome.status == "delivered"


async def test_a_hanging_channel_times_out() -> None:
    hang = Hang("a", timeout=0.05)
    outcome = await run([hang, FakeChannel("b", OK)])
    error = outcome.attempts[0].result.error
    assert error is not None
    assert (error.cls, error.code) == (ErrorClass.TRANSIENT, "timeout")
    assert outcome.delivered_via == "b"


async def test_rate_limit_without_a_token_in_time_is_rate_limited() -> None:
    channel = FakeChannel("a", timeout=0.01)
    chain = [Link(channel=channel, limiter=RateLimiter(1, 60.0))]
    orch = orchestrator()
    first = await orch.run_round(message(), chain, fresh_hops(["a"]), plan())
    second = await orch.run_round(message(), chain, fresh_hops(["a"]), plan())
    assert first.status == "delivered"
    assert second.attempts[0].result.error.code == "local_rate_limit"
    assert channel.calls == 1


async def test_the_rate_limit_waits_on_its_clock_and_the_wait_costs_no_real_time() -> None:
    clock = Clock()
    channel = FakeChannel("a", timeout=5.0)
    chain = [Link(channel=channel, limiter=RateLimiter(1, 2.0, clock))]
    began = time.monotonic()
    for _ in range(3):
        outcome = await orchestrator().run_round(message(), chain, fresh_hops(["a"]), plan())
        assert outcome.status == "delivered"
    assert time.monotonic() - began < 0.5
    assert len(clock.slept) == 2, clock.slept
    assert all(1.9 < wait <= 2.0 for wait in clock.slept), clock.slept
    assert channel.calls == 3


async def test_secrets_are_redacted_from_errors_and_excerpts() -> None:
    leaky = DeliveryResult.failed(
        ErrorClass.CONFIG, "http_401", "token s3cr3t rejected", response_excerpt="bad s3cr3t"
    )
    chain = [Link(channel=FakeChannel("a", leaky), secrets=("s3cr3t",))]
    outcome = await orchestrator().run_round(message(), chain, fresh_hops(["a"]), plan())
    result = outcome.attempts[0].result
    assert "s3cr3t" not in (result.error.message + (result.response_excerpt or ""))
    assert "s3cr3t" not in str(outcome.last_error)


async def test_a_muted_hop_is_skipped_without_a_call_and_the_chain_goes_on() -> None:
    a, b = FakeChannel("a"), FakeChannel("b")
    chain = [Link(channel=a), Link(channel=b)]
    muted = replace(plan(), muted={0: "route alerts is muted for fake until …"})
    outcome = await orchestrator().run_round(message(), chain, fresh_hops(["a", "b"]), muted)
    assert (a.calls, b.calls) == (0, 1)
    assert outcome.status == "delivered" and outcome.delivered_via == "b"
    skipped = outcome.attempts[0]
    assert (skipped.outcome, skipped.hop) == ("skipped", 0)
    assert skipped.result.error == DeliveryError(
        ErrorClass.SKIPPED, "muted", "route alerts is muted for fake until …"
    )
    assert [h.state for h in outcome.hops] == ["skipped", "delivered"]


async def test_a_muted_hop_is_not_tried_again_in_later_rounds() -> None:
    a, b = FakeChannel("a"), FakeChannel("b", DOWN, OK)
    chain = [Link(channel=a), Link(channel=b)]
    first = await orchestrator().run_round(
        message(), chain, fresh_hops(["a", "b"]), replace(plan(), muted={0: "muted"})
    )
    assert first.status == "pending"
    second = await orchestrator().run_round(message(), chain, first.hops, plan(rounds_done=1))
    assert (a.calls, b.calls) == (0, 2), "the mute was lifted, but this notification left a out"
    assert second.status == "delivered"


@pytest.mark.parametrize(
    ("muted", "status", "via"),
    [({0: "muted"}, "delivered", ["b"]), ({0: "muted", 1: "muted"}, "failed", None)],
)
async def test_strategy_all_leaves_muted_hops_out(
    muted: dict[int, str], status: str, via: list[str] | None
) -> None:
    """Every hop the route lists but the muted ones must deliver; all muted is nothing
    delivered."""
    a, b = FakeChannel("a"), FakeChannel("b")
    chain = [Link(channel=a), Link(channel=b)]
    outcome = await orchestrator().run_round(
        message(), chain, fresh_hops(["a", "b"]), replace(plan(strategy="all"), muted=muted)
    )
    assert (outcome.status, outcome.delivered_via) == (status, via)


# --- resume: settling held hops -----------------------------------------------------------------

HELD_AT = NOW - timedelta(seconds=30)
CONFIRM = HoldPolicy(confirm_within=60.0)


def receipt(status: ReceiptStatus, code: str | None = None) -> Receipt:
    return Receipt("a", "fake", "SM1", status, HELD_AT + timedelta(seconds=5), code)


def held_hops(state: HopState) -> list[Hop]:
    return [Hop("a", state, attempts=1), Hop("b")]


async def resume(
    hops: list[Hop],
    held: dict[int, HeldAttempt],
    policy: HoldPolicy,
    *,
    strategy: Strategy = Strategy.FALLBACK,
    b: FakeChannel | None = None,
):
    a, b = FakeChannel("a"), b or FakeChannel("b")
    chain = [Link(channel=a, receipts=True), Link(channel=b)]
    outcome = await orchestrator().resume(
        message(), chain, hops, replace(plan(strategy=strategy), holds=policy), held
    )
    assert a.calls == 0, "a held hop is never sent again"
    return outcome, b


async def test_resume_keeps_waiting_for_a_receipt_until_the_deadline() -> None:
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT, [receipt(ReceiptStatus.SENT)])}
    outcome, b = await resume(held_hops(HopState.AWAITING_CONFIRMATION), held, CONFIRM)
    assert (outcome.status, b.calls, outcome.revisions) == ("pending", 0, [])
    assert outcome.next_attempt_at == HELD_AT + timedelta(seconds=60)
    assert [h.state for h in outcome.hops] == ["awaiting_confirmation", "pending"]


@pytest.mark.parametrize("status", [ReceiptStatus.DELIVERED, ReceiptStatus.READ])
async def test_resume_confirms_on_a_delivered_or_read_receipt(status: ReceiptStatus) -> None:
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT, [receipt(status)])}
    outcome, b = await resume(held_hops(HopState.AWAITING_CONFIRMATION), held, CONFIRM)
    assert (outcome.status, outcome.delivered_via, b.calls) == ("delivered", "a", 0)
    assert outcome.delivered_at == HELD_AT and outcome.revisions == []


async def test_resume_revises_a_refuted_hop_and_goes_on_to_the_next() -> None:
    attempt = uuid.uuid4()
    held = {0: HeldAttempt(attempt, HELD_AT, [receipt(ReceiptStatus.UNDELIVERED, "21610")])}
    outcome, b = await resume(held_hops(HopState.AWAITING_CONFIRMATION), held, CONFIRM)
    assert (outcome.status, outcome.delivered_via, b.calls) == ("delivered", "b", 1)
    [revision] = outcome.revisions
    assert revision.attempt_id == attempt
    assert revision.error.code == "receipt_failed" and "21610" in revision.error.message
    assert [h.state for h in outcome.hops] == ["failed", "delivered"]


async def test_a_refutation_confirm_on_leaves_out_counts_as_delivered() -> None:
    policy = HoldPolicy(confirm_within=60.0, confirm_on=frozenset({ConfirmOn.TIMEOUT}))
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT, [receipt(ReceiptStatus.FAILED)])}
    outcome, b = await resume(held_hops(HopState.AWAITING_CONFIRMATION), held, policy)
    assert (outcome.status, outcome.delivered_via, b.calls) == ("delivered", "a", 0)


@pytest.mark.parametrize(
    ("confirm_on", "status", "b_calls"),
    [(frozenset(ConfirmOn), "delivered", 1), (frozenset({ConfirmOn.FAILED}), "delivered", 0)],
)
async def test_no_receipt_by_the_deadline_is_a_timeout_only_when_confirm_on_names_it(
    confirm_on: frozenset[ConfirmOn], status: str, b_calls: int
) -> None:
    policy = HoldPolicy(confirm_within=10.0, confirm_on=confirm_on)
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT)}
    outcome, b = await resume(held_hops(HopState.AWAITING_CONFIRMATION), held, policy)
    assert (outcome.status, b.calls) == (status, b_calls)
    codes = [r.error.code for r in outcome.revisions]
    assert codes == (["receipt_timeout"] if b_calls else [])


async def test_an_escalation_confirmed_then_waits_for_its_ack() -> None:
    policy = HoldPolicy(confirm_within=60.0, ack_within=(300.0, None))
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT, [receipt(ReceiptStatus.DELIVERED)])}
    outcome, b = await resume(
        held_hops(HopState.AWAITING_CONFIRMATION), held, policy, strategy=Strategy.ESCALATE
    )
    assert (outcome.status, b.calls) == ("pending", 0)
    assert [h.state for h in outcome.hops] == ["awaiting_ack", "pending"]
    assert outcome.next_attempt_at == HELD_AT + timedelta(seconds=300)


@pytest.mark.parametrize(
    ("ack_within", "status", "states", "b_calls"),
    [
        (60.0, "pending", ["awaiting_ack", "pending"], 0),
        (10.0, "delivered", ["unacknowledged", "delivered"], 1),
    ],
)
async def test_an_unacknowledged_hop_goes_on_once_ack_within_passed(
    ack_within: float, status: str, states: list[str], b_calls: int
) -> None:
    policy = HoldPolicy(ack_within=(ack_within, None))
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT)}
    outcome, b = await resume(
        held_hops(HopState.AWAITING_ACK), held, policy, strategy=Strategy.ESCALATE
    )
    assert (outcome.status, b.calls) == (status, b_calls)
    assert [h.state for h in outcome.hops] == states


async def test_an_escalation_whose_last_hop_is_unacknowledged_fails() -> None:
    policy = HoldPolicy(ack_within=(10.0, None))
    held = {0: HeldAttempt(uuid.uuid4(), HELD_AT)}
    outcome, b = await resume(
        held_hops(HopState.AWAITING_ACK),
        held,
        policy,
        strategy=Strategy.ESCALATE,
        b=FakeChannel("b", GONE),
    )
    assert (outcome.status, b.calls) == ("failed", 1)
    assert [h.state for h in outcome.hops] == ["unacknowledged", "failed"]


async def test_a_held_hop_whose_attempt_is_gone_counts_as_delivered() -> None:
    outcome, b = await resume(held_hops(HopState.AWAITING_CONFIRMATION), {}, CONFIRM)
    assert (outcome.status, outcome.delivered_via, b.calls) == ("delivered", "a", 0)
