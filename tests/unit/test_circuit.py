"""Circuit breakers: the state machine with a fake clock, and the orchestrator honouring it."""

from __future__ import annotations

import logging
import random

import pytest

from app.channels.base import CircuitConfig, DeliveryResult, ErrorClass
from app.delivery.circuit import CircuitBreaker, CircuitState
from app.delivery.orchestrator import Link, Orchestrator, fresh_hops
from tests.unit.test_orchestrator import BROKEN, DOWN, GONE, NOW, OK, FakeChannel, message, plan


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    failures: int = 3, cooldown: float = 30.0
) -> tuple[CircuitBreaker, FakeClock, list[CircuitState]]:
    clock = FakeClock()
    changes: list[CircuitState] = []
    circuit = CircuitBreaker(
        "c",
        CircuitConfig(failures=failures, cooldown=cooldown),
        clock=clock,
        on_change=lambda _, state: changes.append(state),
    )
    return circuit, clock, changes


def test_opens_after_n_consecutive_transient_failures() -> None:
    circuit, _, changes = breaker(failures=3)
    for _ in range(2):
        assert circuit.allow()
        circuit.record(DOWN)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.allow()
    circuit.record(DOWN)
    assert circuit.state is CircuitState.OPEN
    assert changes == [CircuitState.OPEN]
    assert not circuit.allow()


def test_a_success_resets_the_count() -> None:
    circuit, _, _ = breaker(failures=3)
    for result in (DOWN, DOWN, OK, DOWN, DOWN):
        circuit.allow()
        circuit.record(result)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.consecutive_failures == 2


@pytest.mark.parametrize(
    "answer", [GONE, DeliveryResult.failed(ErrorClass.RATE_LIMITED, "http_429", "x")]
)
def test_a_provider_answer_counts_as_healthy(answer: DeliveryResult) -> None:
    circuit, _, _ = breaker(failures=2)
    circuit.record(DOWN)
    circuit.record(answer)
    circuit.record(DOWN)
    assert circuit.state is CircuitState.CLOSED


def test_half_open_lets_exactly_one_trial_through() -> None:
    circuit, clock, changes = breaker(failures=1, cooldown=30)
    circuit.allow()
    circuit.record(DOWN)
    clock.now += 29
    assert not circuit.allow()
    assert circuit.retry_in() == pytest.approx(1)
    clock.now += 1
    assert circuit.allow(), "the trial"
    assert circuit.state is CircuitState.HALF_OPEN
    assert not circuit.allow(), "only one trial at a time"
    circuit.record(OK)
    assert circuit.state is CircuitState.CLOSED
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]
    assert circuit.allow() and circuit.allow()


def test_a_failed_trial_reopens_for_another_cooldown() -> None:
    circuit, clock, _ = breaker(failures=5, cooldown=10)
    for _ in range(5):
        circuit.record(DOWN)
    clock.now += 10
    assert circuit.allow()
    circuit.record(DOWN)
    assert circuit.state is CircuitState.OPEN
    clock.now += 9
    assert not circuit.allow()


def test_config_failure_quarantines_at_once_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    circuit, _, _ = breaker(failures=5)
    with caplog.at_level(logging.ERROR, logger="herald.circuit"):
        circuit.allow()
        circuit.record(BROKEN)
        circuit.record(BROKEN)  # a second in-flight delivery failing the same way
    assert circuit.state is CircuitState.OPEN
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "quarantined" in errors[0].getMessage()


def test_zero_failures_turns_the_breaker_off() -> None:
    circuit, _, _ = breaker(failures=0)
    for _ in range(20):
        assert circuit.allow()
        circuit.record(DOWN)
    assert circuit.state is CircuitState.CLOSED


async def test_orchestrator_skips_an_open_circuit_without_calling() -> None:
    circuit, clock, _ = breaker(failures=2, cooldown=60)
    down = FakeChannel("down", DOWN, DOWN, OK)
    backup = FakeChannel("backup")
    chain = [Link(channel=down, circuit=circuit), Link(channel=backup)]
    orch = Orchestrator(clock=lambda: NOW, rng=random.Random(1))
    for _ in range(2):
        await orch.run_round(message(), chain, fresh_hops(["down", "backup"]), plan())
    assert circuit.state is CircuitState.OPEN
    outcome = await orch.run_round(message(), chain, fresh_hops(["down", "backup"]), plan())
    assert down.calls == 2, "no provider call while open"
    first = outcome.attempts[0]
    assert first.outcome == "skipped"
    assert first.result.error is not None and first.result.error.code == "circuit_open"
    assert outcome.hops[0].state == "skipped"
    assert outcome.delivered_via == "backup"
    clock.now += 60
    outcome = await orch.run_round(message(), chain, fresh_hops(["down", "backup"]), plan())
    assert down.calls == 3 and outcome.delivered_via == "down"
    assert circuit.state is CircuitState.CLOSED


async def test_no_address_does_not_use_up_the_trial() -> None:
    circuit, clock, _ = breaker(failures=1, cooldown=5)
    circuit.record(DOWN)
    clock.now += 5
    channel = FakeChannel("c", DeliveryResult.skipped("no_address", "none"), OK)
    chain = [Link(channel=channel, circuit=circuit)]
    orch = Orchestrator(clock=lambda: NOW, rng=random.Random(1))
    await orch.run_round(message(), chain, fresh_hops(["c"]), plan())
    assert circuit.state is CircuitState.HALF_OPEN
    await orch.run_round(message(), chain, fresh_hops(["c"]), plan())
    assert circuit.state is CircuitState.CLOSED
