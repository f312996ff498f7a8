"""The chaos suite: real Herald processes against a throwaway PostgreSQL cluster, under faults.

Every scenario runs ``herald serve --no-worker`` (the API), two or more ``herald worker``
processes and a sink (``tests/chaos/sink.py``), all on loopback, and POSTs notifications while
it injects one kind of fault:

(a) ``kill -9`` of a random worker, again and again, a replacement started each time;
(b) SIGTERM of a worker while the sink is slow: a graceful stop within the shutdown timeout;
(c) a PostgreSQL restart mid-load: the API answers 503 meanwhile, nothing accepted is lost;
(d) a sink answering 500, or 429 with Retry-After: the retry schedule is kept.

Each scenario has a short version (in ``make test``) and a full one (``make chaos``, marked
``chaos_full``, deselected unless ``--chaos-full``). Each records a row of the summary table
(accepted, delivered, failed, lost, duplicates, longest recovery) before it asserts, so a
failing scenario still shows its numbers. ``HERALD_CHAOS_SEED`` replays a run's random choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.delivery.worker import SWEEP_EVERY
from tests.chaos.cluster import free_port
from tests.chaos.fleet import Proc, Scenario, herald_env, wait_http, wait_log, write_config
from tests.chaos.observe import (
    FINAL,
    AttemptRow,
    Load,
    Row,
    SinkRequest,
    Tally,
    attempts,
    by_id,
    claimed_by,
    last_arrival,
    list_statuses,
    notifications,
    read_sink_log,
    tally,
    wait_all_final,
)

LEASE = 3.0
POLL = 0.2
CONCURRENCY = 16
SCHEDULE = ["1s", "2s"]
DELAYS = (1.0, 2.0)
JITTER = 0.2
SLACK = POLL + 0.5
"""Beyond the schedule, a round may start this late: one poll interval plus claim and save."""
LOAD_ALLOWANCE_CAP = 1.5
"""(d) adds to SLACK how long a first try waited for a worker in the same run (a loaded
machine delays every claim alike), up to this."""
RETRY = {"schedule": SCHEDULE, "jitter": JITTER}
STOP_WITHIN = 15.0
STARTED = re.compile(r"herald\.worker: worker \S+ started")

SIZES = pytest.mark.parametrize(
    "size", ["short", pytest.param("full", marks=pytest.mark.chaos_full)]
)

Record = Callable[..., None]


@dataclass(frozen=True)
class Plan:
    """The size of one version (short or full) of a scenario."""

    notifications: int
    duration: float
    """Seconds over which the notifications are POSTed."""
    faults: int
    workers: int


def seed() -> int:
    value = int(os.environ.get("HERALD_CHAOS_SEED") or time.time_ns() % 1_000_000)
    print(f"HERALD_CHAOS_SEED={value}")
    return value


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Herald:
    """The processes of a scenario once started, and where to reach them."""

    scenario: Scenario
    config: Path
    sink: Proc
    api: Proc
    api_url: str
    sink_log: Path
    workers: list[Proc] = field(default_factory=list)

    def add_worker(self) -> Proc:
        worker = self.scenario.fleet.worker(self.config)
        self.workers.append(worker)
        return worker

    def started_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive() and STARTED.search(w.log_text())]

    async def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every worker and the API (gracefully); their exit codes. A replacement
        still starting (importing, connecting) is waited for first: a graceful stop is of a
        worker that runs."""
        fleet = self.scenario.fleet
        for worker in self.workers:
            if worker.alive():
                await wait_log(worker, STARTED, within=30)
        codes = await fleet.stop([w for w in self.workers if w.alive()], STOP_WITHIN)
        codes |= await fleet.stop([self.api], STOP_WITHIN)
        return codes

    async def settle(self, db: asyncpg.Connection, load: Load, within: float) -> Snapshot:
        """Wait (bounded) until every accepted notification is final; what the database and
        the API list endpoint then say. The processes keep running."""
        waited = await wait_all_final(db, len(load.accepted), within=within)
        log(f"all {len(load.accepted)} final {waited:.1f}s after the load")
        rows, tries = await notifications(db), await attempts(db)
        return Snapshot(rows, tries, await list_statuses(self.api_url))

    async def verdict(
        self, load: Load, snapshot: Snapshot, expected: dict[str, str]
    ) -> tuple[Tally, list[SinkRequest], dict[str, int | None]]:
        """Stop every process gracefully, then compare the client, database, API and sink."""
        stop_codes = await self.stop_all()
        requests = read_sink_log(self.sink_log)
        t = tally(load, snapshot.rows, snapshot.attempts, requests, expected)
        in_db = {i: row.status for i, row in snapshot.rows.items()}
        if snapshot.listed != in_db:
            differ = {
                i
                for i in in_db.keys() | snapshot.listed.keys()
                if in_db.get(i) != snapshot.listed.get(i)
            }
            t.problem(f"GET /v1/notifications disagrees with the database on {sorted(differ)[:5]}")
        return t, requests, stop_codes


@dataclass
class Snapshot:
    rows: dict[str, Row]
    attempts: dict[str, list[AttemptRow]]
    listed: dict[str, str]
    """Status of each notification as the API's list endpoint pages through them."""


async def start_herald(
    scenario: Scenario,
    channels: dict[str, dict[str, Any]],
    routes: dict[str, Any],
    workers: int,
    **settings: str,
) -> Herald:
    sink_port, api_port = free_port(), free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    config = write_config(scenario.workdir / "herald.yaml", sink_url, channels, routes)
    env = herald_env(
        scenario.url,
        **{
            "lease": f"{LEASE}s",
            "poll_interval": f"{POLL}s",
            "worker_concurrency": str(CONCURRENCY),
            "shutdown_timeout": "2s",
            **settings,
        },
    )
    fleet = scenario.fleet
    fleet.env = env
    sink = fleet.sink(sink_port)
    api = fleet.api(config, api_port)
    herald = Herald(scenario, config, sink, api, f"http://127.0.0.1:{api_port}", fleet.sink_log)
    for _ in range(workers):
        herald.add_worker()
    await wait_http(f"{sink_url}/stats", sink, within=20)
    await wait_http(f"{herald.api_url}/readyz", api, within=30)
    for worker in herald.workers:
        await wait_log(worker, STARTED, within=30)
    log(f"herald up: api {herald.api_url}, sink {sink_url}, {workers} workers, db {scenario.url}")
    return herald


def assert_clean(t: Tally, stop_codes: dict[str, int | None]) -> None:
    assert not t.problems, "\n".join(t.problems)
    assert t.lost == 0
    unclean = {name: code for name, code in stop_codes.items() if code != 0}
    assert not unclean, f"processes that did not stop cleanly on SIGTERM: {unclean}"


# --- (a) kill -9 ---------------------------------------------------------------------------

KILL = {"short": Plan(300, 9.0, 3, 2), "full": Plan(2400, 60.0, 12, 3)}


@dataclass
class Kill:
    at: float
    pid: int
    held: set[str]


@SIZES
async def test_kill_nine_loses_nothing(scenario: Scenario, size: str, record_row: Record) -> None:
    """kill -9 a random worker while notifications flow: all delivered, duplicates only for
    the tries in flight at a kill, each with the notification's own webhook-id."""
    plan = KILL[size]
    chaos_seed = seed()
    rng = random.Random(chaos_seed)
    began = time.monotonic()
    herald = await start_herald(
        scenario,
        {"hook": {"path": "/a?delay=0.2", "timeout": "5s"}},
        {"default": {"channels": ["hook"], "retry": RETRY}},
        workers=plan.workers,
    )
    fleet = scenario.fleet
    db = await asyncpg.connect(scenario.dsn)
    load = Load(herald.api_url, tag=f"kill-{size}")
    kills: list[Kill] = []

    async def killer() -> None:
        start = time.monotonic()
        for k in range(plan.faults):
            when = start + plan.duration * (0.1 + 0.8 * (k + rng.uniform(0.3, 0.7)) / plan.faults)
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            victim = rng.choice(
                herald.started_workers() or [w for w in herald.workers if w.alive()]
            )
            fleet.kill(victim, signal.SIGKILL)
            at = time.time()
            code = await fleet.wait_exit(victim, within=10)
            assert code == -signal.SIGKILL, f"worker {victim.pid} did not die of SIGKILL: {code}"
            held = await claimed_by(db, victim.pid)
            kills.append(Kill(at, victim.pid, held))
            herald.workers.remove(victim)
            herald.add_worker()
            log(f"kill -9 worker {victim.pid}: it held {len(held)} notifications")

    try:
        routes = ["default"] * plan.notifications
        await asyncio.gather(load.run(routes, plan.duration), killer())
        snapshot = await herald.settle(db, load, within=90)
    finally:
        await db.close()
    t, requests, stop_codes = await herald.verdict(
        load, snapshot, dict.fromkeys(load.accepted, "delivered")
    )
    recoveries = fault_recoveries([(x.at, x.held) for x in kills], last_arrival(requests))
    times_held = Counter(i for kill in kills for i in kill.held)
    record_row(
        scenario=f"a kill -9 ({size})",
        accepted=t.accepted,
        delivered=t.delivered,
        failed=t.failed,
        lost=t.lost,
        duplicates=t.duplicates,
        longest_recovery_s=max(recoveries, default=0.0),
        faults=f"{len(kills)} kills",
        wall_s=time.monotonic() - began,
        notes=(
            f"{plan.workers} workers, {sum(times_held.values())} held at kills, "
            f"{t.cut} cut mid-body, seed {chaos_seed}"
        ),
    )
    assert_clean(t, stop_codes)
    assert t.accepted == plan.notifications
    assert len(kills) == plan.faults
    # A duplicate is a try that reached the sink from a worker killed before it saved it: each
    # one belongs to a notification that a killed worker held, once per kill that caught it.
    beyond = {i: n for i, n in t.duplicates_by_id.items() if n > times_held[i]}
    assert not beyond, f"duplicates not explained by the kills (id: count): {beyond}"
    assert t.duplicates <= len(kills) * CONCURRENCY
    # The sweep (every SWEEP_EVERY s, in every worker) hands a dead worker's claims back once
    # its lease has run out; then the next poll or wake-up claims them again.
    bound = LEASE + SWEEP_EVERY + 5.0
    assert max(recoveries, default=0.0) <= bound, f"recoveries {recoveries} beyond {bound}s"


def fault_recoveries(faults: list[tuple[float, set[str]]], latest: dict[str, float]) -> list[float]:
    """Per fault (time, notifications the stricken worker held): seconds until the last of them
    was delivered (its final try reached the sink). One caught again by a later fault counts as
    recovered from this one when that later worker held it, and then counts for that fault."""
    recoveries = []
    for k, (at, held) in enumerate(faults):
        ends = []
        for notification_id in held:
            later = [when for when, again in faults[k + 1 :] if notification_id in again]
            ends.append(min(later) if later else latest.get(notification_id, at))
        if ends:
            recoveries.append(max(ends) - at)
    return recoveries


# --- (b) SIGTERM ---------------------------------------------------------------------------

TERM = {"short": Plan(160, 6.0, 1, 2), "full": Plan(900, 24.0, 3, 4)}
SHUTDOWN = 2.0
EXIT_MARGIN = 3.0
SLOW = 4.0
"""The slow path's delay: longer than the shutdown grace, so a try cut off by it exists, and
longer than the lease, so the workers must renew their leases or sweep each other's claims."""


@dataclass
class Term:
    at: float
    pid: int
    exit_code: int | None
    exit_s: float
    held: set[str]
    """What the worker had claimed 0.3 s after the signal (in flight in the grace period)."""
    released_logged: int
    left_claimed: set[str]
    released: set[str] = field(default_factory=set)
    """Those of ``held`` tried again by another worker (found from the attempts afterwards)."""


@SIZES
async def test_sigterm_releases_claims(scenario: Scenario, size: str, record_row: Record) -> None:
    """SIGTERM a worker mid-load with a slow sink: it exits 0 within the shutdown timeout, no
    row stays claimed by it, the other workers deliver everything, no attempt is lost."""
    plan = TERM[size]
    began = time.monotonic()
    herald = await start_herald(
        scenario,
        {
            "hook": {"path": "/b?delay=0.3", "timeout": "5s"},
            "slowhook": {"path": f"/slow?delay={SLOW}", "timeout": "10s"},
        },
        {
            "default": {"channels": ["hook"], "retry": RETRY},
            "slow": {"channels": ["slowhook"], "retry": RETRY},
        },
        workers=plan.workers,
        shutdown_timeout=f"{SHUTDOWN}s",
        worker_concurrency="32",
    )
    fleet = scenario.fleet
    db = await asyncpg.connect(scenario.dsn)
    load = Load(herald.api_url, tag=f"term-{size}")
    terms: list[Term] = []

    async def terminator() -> None:
        start = time.monotonic()
        for k in range(plan.faults):
            when = start + plan.duration * (k + 1) / (plan.faults + 1)
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            victim = await _worker_mid_slow_try(db, herald.started_workers(), within=8)
            fleet.kill(victim, signal.SIGTERM)
            at = time.time()
            await asyncio.sleep(0.3)
            held = await claimed_by(db, victim.pid)
            code = await fleet.wait_exit(victim, within=SHUTDOWN + EXIT_MARGIN + 10)
            exit_s = time.time() - at
            left = await claimed_by(db, victim.pid)
            text = victim.log_text()
            logged = sum(int(n) for n in re.findall(r"released (\d+) unfinished claims", text))
            terms.append(Term(at, victim.pid, code, exit_s, held, logged, left))
            herald.workers.remove(victim)
            log(
                f"SIGTERM worker {victim.pid}: exit {code} after {exit_s:.2f}s, held "
                f"{len(held)}, released {logged}"
            )

    try:
        routes = ["slow" if i % 5 == 2 else "default" for i in range(plan.notifications)]
        await asyncio.gather(load.run(routes, plan.duration), terminator())
        snapshot = await herald.settle(db, load, within=90)
    finally:
        await db.close()
    t, requests, stop_codes = await herald.verdict(
        load, snapshot, dict.fromkeys(load.accepted, "delivered")
    )
    recoveries = fault_recoveries([(x.at, x.held) for x in terms], last_arrival(requests))
    for term in terms:
        # Released: tried again after the grace began, so by another worker (the stopping one
        # starts no try after the signal; the others claim a released one only after release).
        # A try cut off just as its round was being saved may have been saved after all: it is
        # then neither released nor tried again, which the worker's own count agrees with.
        cutoff = term.at + SHUTDOWN / 2
        term.released = {
            i
            for i in term.held
            if any(a.started_at.timestamp() > cutoff for a in snapshot.attempts.get(i, []))
        }
    times_released = Counter(i for x in terms for i in x.released)
    record_row(
        scenario=f"b SIGTERM ({size})",
        accepted=t.accepted,
        delivered=t.delivered,
        failed=t.failed,
        lost=t.lost,
        duplicates=t.duplicates,
        longest_recovery_s=max(recoveries, default=0.0),
        faults=f"{len(terms)} SIGTERM",
        wall_s=time.monotonic() - began,
        notes=(
            f"exit {', '.join(f'{x.exit_s:.1f}s' for x in terms)} (timeout {SHUTDOWN:g}s), "
            f"{sum(times_released.values())} released"
        ),
    )
    assert_clean(t, stop_codes)
    assert t.accepted == plan.notifications
    assert len(terms) == plan.faults
    slow_ids = {i for i, s in load.accepted.items() if s.route == "slow"}
    for term in terms:
        assert term.exit_code == 0, f"worker {term.pid} exited {term.exit_code}"
        assert term.exit_s <= SHUTDOWN + EXIT_MARGIN, f"worker {term.pid}: {term.exit_s:.2f}s"
        assert not term.left_claimed, f"worker {term.pid} left claims: {term.left_claimed}"
        assert term.released, f"worker {term.pid} had no try cut off by the grace period"
        assert len(term.released) == term.released_logged, (term.released, term.released_logged)
        assert term.released <= slow_ids, "a fast try was cut off by a 2 s grace"
    # A duplicate is a try cut off by the grace period (it reached the sink) and released.
    beyond = {i: n for i, n in t.duplicates_by_id.items() if n > times_released[i]}
    assert not beyond, f"duplicates not explained by released claims (id: count): {beyond}"


async def _worker_mid_slow_try(db: asyncpg.Connection, workers: list[Proc], within: float) -> Proc:
    """A worker that claimed a slow notification under a second ago (so its try outlasts the
    shutdown grace); bounded wait, then any started worker."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for worker in workers:
            fresh = await db.fetchval(
                "SELECT count(*) FROM notifications WHERE status = 'delivering' AND route = 'slow' "
                "AND claimed_by LIKE $1 AND updated_at > now() - interval '1 second'",
                f"%-{worker.pid}-______",
            )
            if fresh:
                return worker
        await asyncio.sleep(0.05)
    return workers[0]


# --- (c) PostgreSQL restart ----------------------------------------------------------------

RESTART = {"short": Plan(240, 10.0, 1, 2), "full": Plan(1200, 40.0, 3, 3)}
PAUSE = 2.0
RESTART_LEASE = 10.0


@dataclass
class Restart:
    began: float
    stopped: float
    started: float
    open_before: set[str]
    """Notifications not final just before the stop."""
    settled: float | None = None
    """When the last of ``open_before`` was recorded final."""
    unavailable: int = 0


async def open_notifications(dsn: str, among: set[str] | None = None) -> set[str] | None:
    """Ids not final now (``None`` while the database does not answer)."""
    try:
        connection = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        records = await connection.fetch(
            "SELECT id::text AS id FROM notifications WHERE status <> ALL($1::text[])", FINAL
        )
    except (OSError, asyncpg.PostgresError):
        return None
    finally:
        await connection.close()
    found = {r["id"] for r in records}
    return found if among is None else found & among


async def settled_at(dsn: str, ids: set[str], within: float) -> float | None:
    """When none of ``ids`` is open any more (polled every 0.1 s); ``None`` past ``within``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ids and await open_notifications(dsn, ids) == set():
            return time.time()
        if not ids:
            return time.time()
        await asyncio.sleep(0.1)
    return None


@SIZES
async def test_postgres_restart_loses_nothing(
    scenario: Scenario, size: str, record_row: Record
) -> None:
    """Restart PostgreSQL mid-load: the API answers 503 problems meanwhile, the POSTs are sent
    again, and everything accepted ends delivered once the database is back."""
    plan = RESTART[size]
    began = time.monotonic()
    herald = await start_herald(
        scenario,
        {"hook": {"path": "/c?delay=0.05", "timeout": "5s"}},
        {"default": {"channels": ["hook"], "retry": RETRY}},
        workers=plan.workers,
        # A worker keeps trying to save a delivered round for half its lease: 5 s outlasts the
        # outage, so the tries in flight when PostgreSQL stops are kept, not sent again.
        lease=f"{RESTART_LEASE}s",
    )
    cluster = scenario.cluster
    load = Load(herald.api_url, tag=f"restart-{size}")
    restarts: list[Restart] = []

    async def restarter() -> None:
        start = time.monotonic()
        for k in range(plan.faults):
            when = start + plan.duration * (k + 1) / (plan.faults + 1)
            await asyncio.sleep(max(0.0, when - time.monotonic()))
            before = await open_notifications(scenario.dsn) or set()
            at = time.time()
            try:
                stopped, started = await asyncio.to_thread(cluster.restart, PAUSE)
            finally:
                if not cluster.running:
                    await asyncio.to_thread(cluster.start)
            restart = Restart(at, stopped, started, before)
            restarts.append(restart)
            restart.settled = await settled_at(scenario.dsn, before, within=30)
            log(f"PostgreSQL restarted: down {started - at:.1f}s, {len(before)} were open")

    await asyncio.gather(load.run(["default"] * plan.notifications, plan.duration), restarter())
    db = await asyncpg.connect(scenario.dsn)
    try:
        snapshot = await herald.settle(db, load, within=90)
    finally:
        await db.close()
    t, _, stop_codes = await herald.verdict(
        load, snapshot, dict.fromkeys(load.accepted, "delivered")
    )
    logs = "\n".join(w.log_text() for w in herald.workers)
    crashes = logs.count("task crashed")
    retried = set(re.findall(r"saving the round of (\S+): ", logs))
    given_up = Counter(
        re.findall(r"delivery of (\S+) failed before it was saved", logs)
        + re.findall(r"lease on (\S+) was lost before the round was saved", logs)
    )
    recoveries, api_back = [], []
    for r in restarts:
        r.unavailable = sum(r.began <= when <= r.started + 2.0 for when in load.unavailable)
        if r.settled is None:
            t.problem(f"notifications open before the stop at {r.began} not final within 30 s")
        recoveries.append((r.settled or r.began) - r.began)
        after = [s.accepted_at or 0.0 for s in load.accepted.values()]
        api_back.append(min((a for a in after if a > r.stopped), default=r.began) - r.began)
    record_row(
        scenario=f"c PostgreSQL restart ({size})",
        accepted=t.accepted,
        delivered=t.delivered,
        failed=t.failed,
        lost=t.lost,
        duplicates=t.duplicates,
        longest_recovery_s=max(recoveries, default=0.0),
        faults=f"{len(restarts)} restarts",
        wall_s=time.monotonic() - began,
        notes=(
            f"down {', '.join(f'{r.started - r.began:.1f}s' for r in restarts)}, "
            f"API back {', '.join(f'{x:.1f}s' for x in api_back)}; "
            f"503 x{len(load.unavailable)}; {len(retried)} saves retried, "
            f"{sum(given_up.values())} given up"
        ),
    )
    assert_clean(t, stop_codes)
    assert t.accepted == plan.notifications
    assert len(restarts) == plan.faults
    for r in restarts:
        assert r.unavailable > 0, f"no 503 problem answer during the outage at {r.began}"
    assert not crashes, f"worker tasks crashed {crashes} times on the outage"
    # A duplicate is a round delivered during the outage whose save gave up (or whose lease
    # ran out first): the worker logs each one.
    beyond = {i: n for i, n in t.duplicates_by_id.items() if n > given_up[i]}
    assert not beyond, f"duplicates not explained by an unsaved round (id: count): {beyond}"


# --- (d) 500 and 429 -----------------------------------------------------------------------

SCHEDULE_SIZES = {"short": Plan(36, 2.0, 0, 2), "full": Plan(120, 4.0, 0, 2)}
"""Notifications are split evenly over the three routes."""
NO_CIRCUIT = {"failures": 0}
"""The circuit breaker off: it would turn later tries into skips and hide the schedule."""


@SIZES
async def test_retry_schedule_is_kept(scenario: Scenario, size: str, record_row: Record) -> None:
    """A sink answering 500, or 429 with Retry-After: 2. Tries follow the schedule [1s, 2s]
    within the jitter (never early; late by at most one poll interval + 0.5 s + the machine's
    current claim latency), a 429 waits at least Retry-After, and exhausted notifications end
    failed with exactly 3 attempts (2 delays, 3 rounds)."""
    plan = SCHEDULE_SIZES[size]
    began = time.monotonic()
    herald = await start_herald(
        scenario,
        {
            "h500": {"path": "/d500?status=500", "circuit": NO_CIRCUIT},
            "h429": {"path": "/d429?status=429&retry_after=2", "circuit": NO_CIRCUIT},
            "hflaky": {"path": "/dflaky?fail_first=2", "circuit": NO_CIRCUIT},
        },
        {
            "r500": {"channels": ["h500"], "retry": RETRY},
            "r429": {"channels": ["h429"], "retry": RETRY},
            "rflaky": {"channels": ["hflaky"], "retry": RETRY},
        },
        workers=plan.workers,
    )
    load = Load(herald.api_url, tag=f"schedule-{size}")
    per_route = plan.notifications // 3
    routes = ["r500", "r429", "rflaky"] * per_route
    await load.run(routes, plan.duration)
    db = await asyncpg.connect(scenario.dsn)
    try:
        snapshot = await herald.settle(db, load, within=60)
    finally:
        await db.close()
    histories: dict[str, list[dict[str, Any]]] = {}
    async with httpx.AsyncClient(base_url=herald.api_url, trust_env=False, timeout=10) as client:
        for notification_id in load.accepted:
            response = await client.get(f"/v1/notifications/{notification_id}/attempts")
            assert response.status_code == 200, response.text
            histories[notification_id] = response.json()["items"]
    expected = {
        i: "delivered" if s.route == "rflaky" else "failed" for i, s in load.accepted.items()
    }
    t, requests, stop_codes = await herald.verdict(load, snapshot, expected)
    arrivals = by_id(requests)
    recoveries = [
        arrivals[i][-1].at - arrivals[i][0].at
        for i, s in load.accepted.items()
        if s.route == "rflaky" and len(arrivals.get(i, [])) >= 2
    ]
    # How late a due notification gets its first try here and now (woken by NOTIFY at once):
    # later rounds, found by polling, wait at least as long on a busy machine.
    waits = [
        datetime.fromisoformat(histories[i][0]["started_at"]).timestamp() - (s.accepted_at or 0)
        for i, s in load.accepted.items()
        if histories.get(i)
    ]
    allowance = min(LOAD_ALLOWANCE_CAP, max(0.0, *waits)) if waits else 0.0
    gaps: list[float] = []
    for notification_id, submission in load.accepted.items():
        history = histories[notification_id]
        problems = _check_history(submission.route, history, gaps, SLACK + allowance)
        for problem in problems:
            t.problem(f"{notification_id} ({submission.route}): {problem}")
    record_row(
        scenario=f"d 500 / 429 ({size})",
        accepted=t.accepted,
        delivered=t.delivered,
        failed=t.failed,
        lost=t.lost,
        duplicates=t.duplicates,
        longest_recovery_s=max(recoveries, default=0.0),
        faults="500, 429+RA 2s",
        wall_s=time.monotonic() - began,
        notes=(
            f"gaps {min(gaps, default=0):.2f}..{max(gaps, default=0):.2f}s, "
            f"slack {SLACK:g}s + load {allowance:.2f}s"
        ),
    )
    assert_clean(t, stop_codes)
    assert t.accepted == len(routes)
    assert t.duplicates == 0
    assert t.failed == 2 * per_route and t.delivered == per_route


def _check_history(
    route: str, items: list[dict[str, Any]], gaps: list[float], slack: float
) -> list[str]:
    """What is wrong with one notification's attempts (from the API), per its route: a round
    may never start early, and at most ``slack`` late."""
    problems = []
    outcomes = [a["outcome"] for a in items]
    want = {
        "r500": (["failed"] * 3, "http_500", 500),
        "r429": (["failed"] * 3, "http_429", 429),
        "rflaky": (["failed", "failed", "delivered"], "http_500", 500),
    }[route]
    if outcomes != want[0]:
        return [f"outcomes {outcomes}, expected {want[0]}"]
    if [a["round"] for a in items] != [1, 2, 3]:
        problems.append(f"rounds {[a['round'] for a in items]}")
    for attempt in items:
        if attempt["outcome"] == "failed" and (
            attempt["error"]["code"] != want[1] or attempt["provider_status"] != want[2]
        ):
            problems.append(f"attempt {attempt['round']}: {attempt['error']}")
    starts = [datetime.fromisoformat(a["started_at"]) for a in items]
    for k, delay in enumerate(DELAYS):
        gap = (starts[k + 1] - starts[k]).total_seconds()
        gaps.append(gap)
        low, high = delay * (1 - JITTER), delay * (1 + JITTER)
        if route == "r429":  # the round waits at least Retry-After
            low, high = max(low, 2.0), max(high, 2.0)
        if not low - 0.001 <= gap <= high + slack:  # stored times keep microseconds
            problems.append(f"gap {k + 1} is {gap:.3f}s, expected {low:.2f}..{high + slack:.2f}s")
    return problems
