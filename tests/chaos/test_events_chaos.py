"""Chaos for events (issue 15): the outbox and its dispatchers under kill -9 and a receiver outage.

Real processes on the throwaway cluster, as in test_chaos.py: the API, the workers, a sink for
the notifications' channel and a second sink for the event subscription, which is taken down
(kill -9) mid-load and started again on the same port after ``outage`` seconds. Meanwhile a
worker is killed with SIGKILL, and with the split layout an event dispatcher too, each while
events it wrote or held are still unsent (checked: the faults land between a state change and
its event's delivery). Every notification is delivered, then:

- exactly one event row per transition: each notification has one ``notification.accepted``
  and one ``notification.delivered``, whatever the kills (a round a killed worker never saved
  wrote no event; the one that saved it wrote its own);
- none lost: every event reached the events sink with a 2xx, every delivery row is
  ``delivered`` (the subscription's retries outlast the outage, its circuit reopens on a
  trial once the receiver is back);
- order kept: per notification, the events' first 2xx arrivals come in the order the events
  were written (``seq``), although the receiver's outage and the kills interrupted them.

Two layouts: short (``make test``) runs the default ``herald worker`` (the dispatcher in the
worker's process: a kill -9 of the worker takes its dispatcher down with it, between the state
changes it saved and their events' delivery) with a 3 s outage; full (``make chaos``) runs
``herald worker --no-events`` beside two ``herald events`` processes, kills both kinds twice and
keeps the receiver down for 10 s.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.chaos.cluster import free_port
from tests.chaos.fleet import Proc, Scenario, herald_argv, herald_env, wait_http, wait_log
from tests.chaos.observe import (
    CUT,
    Load,
    SinkRequest,
    attempts,
    list_statuses,
    notifications,
    read_sink_log,
    tally,
    wait_all_final,
)
from tests.chaos.test_chaos import log

SECRET = "whsec_" + base64.b64encode(b"herald-chaos-events-signing-key!").decode()
LEASE = 3.0
SINK_RETRY = {"schedule": ["1s", "2s"], "jitter": 0.2}
EVENTS_RETRY = {"schedule": ["1s", "1s", "2s", "2s", "3s", "3s", "5s", "5s"], "jitter": 0.2}
"""About 22 s of retries: more than the longest outage, so no event ends ``failed``."""
WORKER_STARTED = re.compile(r"herald\.worker: worker \S+ started")
DISPATCHER_STARTED = re.compile(r"herald\.events: event dispatcher \S+ started")
TRANSITIONS = ["notification.accepted", "notification.delivered"]


@dataclass(frozen=True)
class Plan:
    notifications: int
    duration: float
    outage: float
    split: bool
    """``herald worker --no-events`` beside ``herald events`` (else ``herald worker`` alone)."""
    worker_kills: int
    dispatcher_kills: int


PLANS = {
    "short": Plan(120, 4.0, 3.0, split=False, worker_kills=1, dispatcher_kills=0),
    "full": Plan(600, 20.0, 10.0, split=True, worker_kills=2, dispatcher_kills=2),
}
SIZES = pytest.mark.parametrize(
    "size", ["short", pytest.param("full", marks=pytest.mark.chaos_full)]
)


@dataclass
class Processes:
    """The scenario's Herald processes and events receiver, and how to start each again."""

    scenario: Scenario
    config: Path
    plan: Plan
    events_port: int
    workers: list[Proc]
    dispatchers: list[Proc]
    events_sink: Proc | None = None

    @property
    def events_log(self) -> Path:
        return self.scenario.workdir / "events-requests.tsv"

    def start_events_sink(self) -> Proc:
        argv = [sys.executable, "-m", "tests.chaos.sink", "--port", str(self.events_port)]
        self.events_sink = self.scenario.fleet.spawn(
            "events-sink", [*argv, "--log", str(self.events_log)]
        )
        return self.events_sink

    def add_worker(self) -> Proc:
        argv = [*herald_argv(), "worker", "--config", str(self.config)]
        if self.plan.split:
            argv.append("--no-events")
        worker = self.scenario.fleet.spawn("worker", argv)
        self.workers.append(worker)
        return worker

    def add_dispatcher(self) -> Proc:
        argv = [*herald_argv(), "events", "--config", str(self.config)]
        dispatcher = self.scenario.fleet.spawn("events", argv)
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def kill(self, proc: Proc, pool: list[Proc]) -> None:
        fleet = self.scenario.fleet
        fleet.kill(proc, signal.SIGKILL)
        code = await fleet.wait_exit(proc, within=10)
        assert code == -signal.SIGKILL, f"{proc.name} {proc.pid} did not die of SIGKILL: {code}"
        pool.remove(proc)


def write_config(path: Path, hooks: str, events: str) -> Path:
    config: dict[str, Any] = {
        "network": {"allowed_networks": ["127.0.0.1/32"]},
        "channels": {"hook": {"type": "webhook", "url": f"{hooks}/a?delay=0.05", "timeout": "5s"}},
        "routes": {"default": {"channels": ["hook"], "retry": SINK_RETRY}},
        "events": {
            "subscriptions": [
                {
                    "name": "chaos",
                    "url": f"{events}/ev",
                    "secret": SECRET,
                    "types": ["notification.*"],
                    "timeout": "1s",
                    "retry": EVENTS_RETRY,
                    "circuit": {"failures": 3, "cooldown": "1s"},
                }
            ]
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def open_deliveries(db: asyncpg.Connection) -> int:
    """Event deliveries written but not yet delivered (pending or being sent)."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM event_deliveries WHERE status IN ('pending', 'delivering')"
    )
    return count


async def wait_events_settled(db: asyncpg.Connection, expected: int, within: float) -> float:
    """Until ``expected`` event deliveries exist and none is open; seconds waited."""
    began = time.monotonic()
    while True:
        row = await db.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER "
            "(WHERE status IN ('pending', 'delivering')) AS open FROM event_deliveries"
        )
        assert row is not None
        if row["total"] >= expected and row["open"] == 0:
            return time.monotonic() - began
        if time.monotonic() - began > within:
            raise AssertionError(
                f"events not settled within {within}s: {row['total']} deliveries of "
                f"{expected}, {row['open']} still open"
            )
        await asyncio.sleep(0.25)


@SIZES
async def test_events_survive_kills_and_a_receiver_outage(
    scenario: Scenario, size: str, record_row: Any
) -> None:
    plan = PLANS[size]
    rng = random.Random()
    began = time.monotonic()
    hooks_port, events_port, api_port = free_port(), free_port(), free_port()
    hooks_url, events_url = f"http://127.0.0.1:{hooks_port}", f"http://127.0.0.1:{events_port}"
    api_url = f"http://127.0.0.1:{api_port}"
    config = write_config(scenario.workdir / "herald.yaml", hooks_url, events_url)
    fleet = scenario.fleet
    fleet.env = herald_env(
        scenario.url,
        lease=f"{LEASE}s",
        poll_interval="0.2s",
        worker_concurrency="16",
        shutdown_timeout="2s",
    )
    hooks = fleet.sink(hooks_port)
    api = fleet.spawn(
        "api",
        [*herald_argv(), "serve", "--no-worker", "--config", str(config), "--port", str(api_port)],
    )
    herald = Processes(scenario, config, plan, events_port, [], [])
    events_sink = herald.start_events_sink()
    for _ in range(2):
        herald.add_worker()
        if plan.split:
            herald.add_dispatcher()
    await wait_http(f"{hooks_url}/stats", hooks, within=20)
    await wait_http(f"{events_url}/stats", events_sink, within=20)
    await wait_http(f"{api_url}/readyz", api, within=30)
    for worker in herald.workers:
        await wait_log(worker, WORKER_STARTED, within=30)
    for proc in herald.dispatchers if plan.split else herald.workers:
        await wait_log(proc, DISPATCHER_STARTED, within=30)
    log(f"herald up: {len(herald.workers)} workers, {len(herald.dispatchers)} dispatchers")

    db = await asyncpg.connect(scenario.dsn)
    load = Load(api_url, tag=f"events-{size}")
    outstanding: list[int] = []
    """Event deliveries still open at each kill: what the kill could have lost."""
    outage: list[float] = []

    async def receiver_down() -> None:
        await asyncio.sleep(plan.duration * 0.2)
        assert herald.events_sink is not None
        fleet.kill(herald.events_sink, signal.SIGKILL)
        await fleet.wait_exit(herald.events_sink, within=10)
        outage.append(time.time())
        log(f"events receiver down for {plan.outage:g}s")
        await asyncio.sleep(plan.outage)
        back = herald.start_events_sink()
        await wait_http(f"{events_url}/stats", back, within=20)
        outage.append(time.time())
        log("events receiver back")

    async def killer() -> None:
        kinds = ["worker"] * plan.worker_kills + ["events"] * plan.dispatcher_kills
        rng.shuffle(kinds)
        for k, kind in enumerate(kinds):
            await asyncio.sleep(plan.duration * (0.3 + 0.6 * k / len(kinds)) - elapsed())
            pool = herald.workers if kind == "worker" else herald.dispatchers
            victim = rng.choice([p for p in pool if p.alive()])
            outstanding.append(await open_deliveries(db))
            await herald.kill(victim, pool)
            log(f"kill -9 {kind} {victim.pid} with {outstanding[-1]} event deliveries open")
            replacement = herald.add_worker() if kind == "worker" else herald.add_dispatcher()
            await wait_log(
                replacement, WORKER_STARTED if kind == "worker" else DISPATCHER_STARTED, 30
            )

    started = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - started

    try:
        await asyncio.gather(
            load.run(["default"] * plan.notifications, plan.duration), receiver_down(), killer()
        )
        await wait_all_final(db, len(load.accepted), within=60)
        waited = await wait_events_settled(db, 2 * len(load.accepted), within=60)
        log(f"every event settled {waited:.1f}s after the load")
        rows, tries = await notifications(db), await attempts(db)
        listed = await list_statuses(api_url)
        written = await db.fetch(
            "SELECT d.seq, d.event_id::text AS event_id, d.notification_id::text AS nid, "
            "d.status, d.attempts, e.type FROM event_deliveries d JOIN events e "
            "ON e.id = d.event_id ORDER BY d.seq"
        )
        event_count = await db.fetchval("SELECT count(*) FROM events")
    finally:
        await db.close()
    codes = await fleet.stop([*herald.workers, *herald.dispatchers, api], within=15)
    hook_requests = read_sink_log(fleet.sink_log)
    t = tally(load, rows, tries, hook_requests, dict.fromkeys(load.accepted, "delivered"))
    if listed != {i: row.status for i, row in rows.items()}:
        t.problem("GET /v1/notifications disagrees with the database")
    arrivals = read_sink_log(herald.events_log)
    verdict = judge(load.accepted.keys(), written, event_count, arrivals)
    recovery = max(verdict.first_ok.values(), default=outage[-1]) - outage[-1]
    record_row(
        scenario=f"e events ({size})",
        accepted=t.accepted,
        delivered=t.delivered,
        failed=t.failed,
        lost=t.lost + verdict.lost,
        duplicates=t.duplicates + verdict.duplicates,
        longest_recovery_s=recovery,
        faults=(
            f"{plan.worker_kills + plan.dispatcher_kills} kills, receiver down {plan.outage:g}s"
        ),
        wall_s=time.monotonic() - began,
        notes=(
            f"{'split' if plan.split else 'in-process'} dispatchers, {len(written)} events, "
            f"{len(arrivals)} requests at the receiver, open at kills {outstanding}"
        ),
    )
    problems = t.problems + verdict.problems
    assert not problems, "\n".join(problems)
    assert t.lost == 0 and verdict.lost == 0
    assert t.accepted == plan.notifications
    assert all(n > 0 for n in outstanding), f"a kill found no event unsent: {outstanding}"
    unclean = {name: code for name, code in codes.items() if code != 0}
    assert not unclean, f"processes that did not stop cleanly on SIGTERM: {unclean}"


@dataclass
class EventVerdict:
    lost: int
    duplicates: int
    first_ok: dict[str, float]
    """Per event id, when the receiver first took it with a 2xx."""
    problems: list[str]


def judge(
    accepted: Any, written: list[Any], event_count: int, arrivals: list[SinkRequest]
) -> EventVerdict:
    """The database's event rows against what reached the events receiver."""
    problems: list[str] = []
    per_notification: dict[str, list[Any]] = defaultdict(list)
    for row in written:
        per_notification[row["nid"]].append(row)
    if event_count != len(written):
        problems.append(f"{event_count} events but {len(written)} deliveries (one subscription)")
    for notification_id in accepted:
        types = [row["type"] for row in per_notification.get(notification_id, [])]
        if types != TRANSITIONS:
            problems.append(f"{notification_id}: events {types}, expected {TRANSITIONS}")
    unknown = set(per_notification) - set(accepted)
    if unknown:
        problems.append(f"events of notifications nobody accepted: {sorted(unknown)[:5]}")
    first_ok: dict[str, float] = {}
    for request in arrivals:
        if 200 <= request.status < 300 and request.webhook_id not in first_ok:
            first_ok[request.webhook_id] = request.at
    known = {row["event_id"] for row in written}
    strangers = {request.webhook_id for request in arrivals} - known
    if strangers:
        problems.append(f"requests for events not in the database: {sorted(strangers)[:5]}")
    lost = 0
    for row in written:
        if row["status"] != "delivered" or row["event_id"] not in first_ok:
            lost += 1
            problems.append(f"event {row['event_id']} ({row['type']}): {row['status']}, unseen")
    for notification_id, rows in per_notification.items():
        times = [first_ok.get(row["event_id"]) for row in rows]
        if None not in times and times != sorted(times):
            problems.append(f"{notification_id}: events arrived out of order: {times}")
    # At least once: an event taken twice with a 2xx was sent by a dispatcher killed before it
    # saved the try (or answered as the receiver was killed), and sent again.
    taken = Counter(r.webhook_id for r in arrivals if 200 <= r.status < 300 and r.status != CUT)
    duplicates = sum(count - 1 for count in taken.values())
    return EventVerdict(lost, duplicates, first_ok, problems[:20])
