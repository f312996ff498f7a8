"""Load and bookkeeping for the chaos suite: submit notifications, read back what happened.

Three sources are compared at the end of a scenario: the ids the API accepted (the client's
view), the database (status, attempts) and the sink's request log (what actually arrived).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx

FINAL = ["delivered", "failed", "partial", "expired", "cancelled"]
RETRY_PAUSE = 0.2


@dataclass
class Submission:
    index: int
    route: str
    key: str
    id: str | None = None
    accepted_at: float | None = None
    tries: int = 0


@dataclass
class Load:
    """POSTs notifications at a steady pace with bounded concurrency.

    Each notification has its own ``Idempotency-Key``, so a POST that failed (503 while the
    database is down, a dropped connection) is simply sent again until it is accepted: a replay
    of one that was stored after all answers 200 with the same id, so none is lost or doubled.
    """

    base_url: str
    tag: str
    concurrency: int = 16
    give_up_after: float = 90.0
    submissions: list[Submission] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    unavailable: list[float] = field(default_factory=list)
    """When each 503 problem answer arrived."""
    unexpected: list[str] = field(default_factory=list)
    transport_errors: int = 0
    sent_so_far: int = 0

    async def run(self, routes: list[str], duration: float) -> None:
        """Submit one notification per entry of ``routes``, spread evenly over ``duration``."""
        gate = asyncio.Semaphore(self.concurrency)
        step = duration / max(1, len(routes))
        began = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, trust_env=False, timeout=10, limits=limits
        ) as client:
            for index, route in enumerate(routes):
                pause = began + index * step - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                await gate.acquire()
                submission = Submission(index, route, f"chaos-{self.tag}-{index}")
                self.submissions.append(submission)
                self.sent_so_far = index + 1
                task = asyncio.create_task(self._submit(client, submission))
                task.add_done_callback(lambda _: gate.release())
                tasks.append(task)
            await asyncio.gather(*tasks)

    async def _submit(self, client: httpx.AsyncClient, submission: Submission) -> None:
        body = {
            "route": submission.route,
            "subject": f"chaos {self.tag}",
            "text": f"notification {submission.index} of the {self.tag} scenario",
            "metadata": {"i": submission.index},
        }
        headers = {"Idempotency-Key": submission.key}
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            submission.tries += 1
            try:
                response = await client.post("/v1/notifications", json=body, headers=headers)
            except httpx.TransportError:
                self.transport_errors += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            self.statuses[response.status_code] += 1
            if response.status_code in (200, 202):
                submission.id = response.json()["id"]
                submission.accepted_at = time.time()
                return
            if response.status_code == 503 and _is_problem(response, 503):
                self.unavailable.append(time.time())
            else:
                self.unexpected.append(
                    f"POST #{submission.index}: {response.status_code} "
                    f"{response.headers.get('content-type')} {response.text[:300]}"
                )
            await asyncio.sleep(RETRY_PAUSE)

    @property
    def accepted(self) -> dict[str, Submission]:
        return {s.id: s for s in self.submissions if s.id is not None}

    def not_accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.id is None]


def _is_problem(response: httpx.Response, status: int) -> bool:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == status and "detail" in body


# --- the sink's log ----------------------------------------------------------------------


CUT = 0
"""The status the sink logs for a request cut off mid-body (see ``tests.chaos.sink``)."""


@dataclass(frozen=True)
class SinkRequest:
    at: float
    webhook_id: str
    data_id: str
    path: str
    status: int


def read_sink_log(path: Path) -> list[SinkRequest]:
    requests: list[SinkRequest] = []
    if not path.exists():
        return requests
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) != 5:
            continue  # a line cut short by a kill of the sink (never happens in these tests)
        requests.append(SinkRequest(float(parts[0]), parts[1], parts[2], parts[3], int(parts[4])))
    return requests


def by_id(requests: list[SinkRequest]) -> dict[str, list[SinkRequest]]:
    grouped: dict[str, list[SinkRequest]] = defaultdict(list)
    for request in requests:
        grouped[request.webhook_id].append(request)
    return grouped


# --- the database ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    status: str
    route: str | None
    attempt_count: int
    claimed_by: str | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class AttemptRow:
    notification_id: str
    outcome: str
    round: int
    started_at: datetime


async def notifications(connection: asyncpg.Connection) -> dict[str, Row]:
    records = await connection.fetch(
        "SELECT id::text AS id, status, route, attempt_count, claimed_by, lease_expires_at "
        "FROM notifications"
    )
    return {r["id"]: Row(**dict(r)) for r in records}


async def attempts(connection: asyncpg.Connection) -> dict[str, list[AttemptRow]]:
    records = await connection.fetch(
        "SELECT notification_id::text AS notification_id, outcome, round, started_at "
        "FROM attempts ORDER BY started_at, id"
    )
    grouped: dict[str, list[AttemptRow]] = defaultdict(list)
    for record in records:
        grouped[record["notification_id"]].append(AttemptRow(**dict(record)))
    return grouped


async def wait_all_final(connection: asyncpg.Connection, expected: int, within: float) -> float:
    """Until ``expected`` notifications exist and all are final; seconds waited."""
    began = time.monotonic()
    while True:
        row = await connection.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status = ANY($1::text[])) AS final "
            "FROM notifications",
            list(FINAL),
        )
        assert row is not None
        if row["total"] >= expected and row["final"] == row["total"]:
            return time.monotonic() - began
        if time.monotonic() - began > within:
            counts = await connection.fetch(
                "SELECT status, count(*) AS n FROM notifications GROUP BY status"
            )
            raise AssertionError(
                f"not all final within {within}s: {expected} expected, "
                + ", ".join(f"{r['status']}={r['n']}" for r in counts)
            )
        await asyncio.sleep(0.25)


async def list_statuses(api_url: str) -> dict[str, str]:
    """Every notification's status, paging through ``GET /v1/notifications`` (limit 200)."""
    statuses: dict[str, str] = {}
    cursor: str | None = None
    async with httpx.AsyncClient(base_url=api_url, trust_env=False, timeout=10) as client:
        for _ in range(1000):  # bounded: 200,000 notifications is more than any scenario has
            params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
            response = await client.get("/v1/notifications", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            statuses |= {item["id"]: item["status"] for item in page["items"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
    return statuses


def worker_pattern(pid: int) -> str:
    """A LIKE pattern for ``claimed_by`` of the worker process ``pid`` (host-pid-hex6)."""
    return f"%-{pid}-______"


async def claimed_by(connection: asyncpg.Connection, pid: int) -> set[str]:
    records = await connection.fetch(
        "SELECT id::text AS id FROM notifications WHERE status = 'delivering' "
        "AND claimed_by LIKE $1",
        worker_pattern(pid),
    )
    return {r["id"] for r in records}


# --- the verdict -------------------------------------------------------------------------


@dataclass
class Tally:
    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicates_by_id: Counter[str] = field(default_factory=Counter)
    cut: int = 0
    """Requests whose sender died before the whole body reached the sink (in ``duplicates``)."""
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str, limit: int = 20) -> None:
        if len(self.problems) < limit:
            self.problems.append(text)
        elif len(self.problems) == limit:
            self.problems.append("… (more problems left out)")


def tally(
    load: Load,
    rows: dict[str, Row],
    attempt_rows: dict[str, list[AttemptRow]],
    requests: list[SinkRequest],
    expected: dict[str, str],
) -> Tally:
    """Compare the client's, the database's and the sink's views; count and list problems.

    ``expected``: the final status each accepted notification must end in. ``lost`` counts
    accepted notifications that did not end so, or that ended ``delivered`` without the sink
    ever answering a try of theirs with 2xx. ``duplicates`` counts requests at the sink beyond
    the attempts Herald recorded for the notification (tries in flight at a fault, sent again).
    """
    accepted = load.accepted
    t = Tally(accepted=len(accepted))
    for submission in load.not_accepted():
        t.problem(f"POST #{submission.index} never accepted after {submission.tries} tries")
    t.problems.extend(load.unexpected[:10])
    extra = set(rows) - set(accepted)
    if extra:
        t.problem(
            f"{len(extra)} stored notifications no client was told about: {sorted(extra)[:5]}"
        )
    seen = by_id(requests)
    for request in requests:
        if request.webhook_id not in accepted:
            t.problem(f"unknown webhook-id at the sink: {request}")
        if request.status == CUT:
            t.cut += 1
        elif request.data_id != request.webhook_id:
            t.problem(f"webhook-id {request.webhook_id} carries body data.id {request.data_id}")
    for notification_id in accepted:
        row = rows.get(notification_id)
        tries = attempt_rows.get(notification_id, [])
        arrived = seen.get(notification_id, [])
        if row is None:
            t.lost += 1
            t.problem(f"{notification_id}: accepted but not in the database")
            continue
        t.delivered += row.status == "delivered"
        t.failed += row.status == "failed"
        lost = False
        if row.status != expected[notification_id]:
            lost = True
            t.problem(f"{notification_id}: {row.status}, expected {expected[notification_id]}")
        if row.status == "delivered" and not any(200 <= r.status < 300 for r in arrived):
            lost = True
            t.problem(f"{notification_id}: delivered, but the sink never answered it 2xx")
        t.lost += lost
        if row.claimed_by is not None or row.lease_expires_at is not None:
            t.problem(f"{notification_id}: still claimed by {row.claimed_by} ({row.status})")
        if row.attempt_count != len(tries):
            t.problem(
                f"{notification_id}: attempt_count {row.attempt_count} but {len(tries)} attempts"
            )
        delivered_tries = sum(a.outcome == "delivered" for a in tries)
        if row.status == "delivered" and delivered_tries != 1:
            t.problem(f"{notification_id}: delivered with {delivered_tries} delivered attempts")
        if len(arrived) < len(tries):
            t.problem(f"{notification_id}: {len(tries)} attempts, {len(arrived)} reached the sink")
        extra_requests = len(arrived) - len(tries)
        if extra_requests > 0:
            t.duplicates += extra_requests
            t.duplicates_by_id[notification_id] += extra_requests
    return t


def last_arrival(requests: list[SinkRequest]) -> dict[str, float]:
    latest: dict[str, float] = {}
    for request in requests:
        latest[request.webhook_id] = max(latest.get(request.webhook_id, 0.0), request.at)
    return latest
