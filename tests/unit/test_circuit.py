"""Circuit breakers: the state machine with a fake clock, and the orchestrator honouring it."""

from __future__ import annotations

import logging
import random
from dataclasses import replace

import pytest

from app.channels.base import (
    CircuitConfig,
    DeliveryResult,
    ErrorClass,
    Message,
    Recipient,
    origin,
)
from app.delivery.circuit import CircuitBreaker, DestinationCircuits
from app.delivery.orchestrator import Link, Orchestrator
from app.domain import CircuitState, fresh_hops
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


BLOCKED = DeliveryResult.failed(ErrorClass.PERMANENT, "blocked_address", "blocked address")


def to(url: str) -> Message:
    return replace(message(), recipient=Recipient(webhook_url=url))


def by_destination(failures: int = 2, limit: int = 100) -> DestinationCircuits:
    return DestinationCircuits(
        "hook",
        CircuitConfig(failures=failures, cooldown=60),
        lambda m: origin(m.recipient.webhook_url or ""),
        limit=limit,
        clock=FakeClock(),
    )


def fail_once(circuits: DestinationCircuits, destination: str) -> None:
    circuit = circuits.breaker(destination)
    assert circuit.allow()
    circuit.record(DOWN)
    circuits.keep(destination, circuit)


async def test_one_failing_destination_opens_only_its_own_circuit() -> None:
    circuits = by_destination(failures=2)
    hook = FakeChannel("hook", DOWN, DOWN, OK, OK)
    chain = [Link(channel=hook, destinations=circuits)]
    orch = Orchestrator(clock=lambda: NOW, rng=random.Random(1))
    bad, good = "https://bad.example:8443/x", "https://good.example/hook"
    for _ in range(2):
        await orch.run_round(to(bad), chain, fresh_hops(["hook"]), plan())
    skipped = await orch.run_round(to(bad), chain, fresh_hops(["hook"]), plan())
    error = skipped.attempts[0].result.error
    assert error is not None and error.code == "circuit_open"
    assert "https://bad.example:8443" in error.message
    assert hook.calls == 2, "no call to the open destination"
    delivered = await orch.run_round(to(good), chain, fresh_hops(["hook"]), plan())
    assert delivered.status == "delivered" and hook.calls == 3
    assert circuits.not_closed() == ["https://bad.example:8443"]
    assert len(circuits) == 1, "the good destination has nothing to remember"


def test_destination_circuits_keep_at_most_their_limit() -> None:
    circuits = by_destination(failures=1, limit=3)
    for port in range(1, 11):
        fail_once(circuits, f"http://h:{port}")
    assert len(circuits) == 3
    assert circuits.not_closed() == ["http://h:10", "http://h:9", "http://h:8"]


def test_a_destination_with_nothing_to_remember_is_dropped() -> None:
    circuits = by_destination(failures=3)
    fail_once(circuits, "http://h:80")
    assert len(circuits) == 1
    circuit = circuits.breaker("http://h:80")
    assert circuit.allow()
    circuit.record(OK)
    circuits.keep("http://h:80", circuit)
    assert len(circuits) == 0


async def test_a_blocked_address_says_nothing_of_the_channels_health() -> None:
    """Refused before any packet left: neither a failure nor an answer of the provider."""
    circuit, _, changes = breaker(failures=3)
    channel = FakeChannel("c", DOWN, DOWN, BLOCKED, DOWN)
    orch = Orchestrator(clock=lambda: NOW, rng=random.Random(1))
    chain = [Link(channel=channel, circuit=circuit)]
    states = []
    for _ in range(4):
        outcome = await orch.run_round(message(), chain, fresh_hops(["c"]), plan())
        states.append(outcome.hops[0].state)
    assert states == ["retrying", "retrying", "failed", "retrying"]
    assert changes == [CircuitState.OPEN], "the blocked try did not reset the count"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Hooks.Example.com/x?token=s", "https://hooks.example.com:443"),
        ("http://user:pw@hooks.example.com:8080/x", "http://hooks.example.com:8080"),
        ("http://[2001:db8::1]/x", "http://[2001:db8::1]:80"),
        ("ftp://hooks.example.com/x", None),
        ("http://[::1/x", None),
    ],
)
def test_origin_is_scheme_host_and_port_only(url: str, expected: str | None) -> None:
    assert origin(url) == expected


def test_what_another_process_learnt_moves_the_breaker_without_a_change_of_its_own() -> None:
    circuit, clock, changes = breaker(failures=3, cooldown=30.0)
    circuit.adopt_open(10.0, "3 consecutive transient failures across processes", quarantined=False)
    assert circuit.state is CircuitState.OPEN
    assert circuit.retry_in() == pytest.approx(10.0)
    assert not circuit.allow() and not circuit.allow()
    assert circuit.refused == 2, "the fleet's sync asks for the trial only while refused"
    clock.now += 9.0
    assert not circuit.allow()
    circuit.grant_trial()  # this process claimed the shared trial
    assert circuit.allow(), "the one trial"
    assert not circuit.allow()
    assert circuit.state is CircuitState.HALF_OPEN
    circuit.adopt_open(30.0, "reopened elsewhere", quarantined=False)
    assert circuit.state is CircuitState.HALF_OPEN, "this process's trial under way decides"
    circuit.record(DeliveryResult.ok())
    assert circuit.state is CircuitState.CLOSED
    circuit.adopt_open(30.0, "down", quarantined=True)
    circuit.adopt_closed()
    assert circuit.state is CircuitState.CLOSED
    assert (circuit.reason, circuit.quarantined) == (None, False)
    assert changes == [CircuitState.HALF_OPEN, CircuitState.CLOSED], "only its own moves"
