"""The worker's store: every statement the delivery loop runs, each written once.

The statements (``Statements``) are SQLAlchemy Core built once from the tables: claim due
notifications under a lease, save finished rounds, renew and release leases, sweep expired ones,
purge old idempotency keys. ``WorkQueue`` runs them, with one implementation per database where
the databases differ:

- PostgreSQL runs each statement compiled once to its own SQL, on the pooled driver (asyncpg)
  connection, as the accept step does (``Intake``): a claim, a renewal, a release or a sweep is
  one statement in autocommit, and a save one transaction, without SQLAlchemy's per-statement
  compile-cache lookups, parameter processing and result objects (bench/results/levers.md,
  "`DeliveryStore`"). Values pass through the bind processors SQLAlchemy would apply, so rows
  read back identically. Claims skip rows another worker is claiming (``SKIP LOCKED``).
- SQLite runs the same statements compiled once the same way (``?`` for each value), on the
  pooled connection a whole step at a time (``SqliteCalls``): a statement in autocommit is
  ``BEGIN IMMEDIATE``, the statement and ``COMMIT`` in one call to aiosqlite's thread; in a
  transaction, the writes whose results nobody reads (``many``) wait for the next statement or
  the ``COMMIT`` and go with it, so a save is two calls where SQLAlchemy's adapter took about
  twenty (bench/results/levers.md, "SQLite"). One writer at a time: there is nothing to skip.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    Delete,
    Insert,
    Select,
    Update,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain import (
    AttemptTrigger,
    HeldAttempt,
    HoldPolicy,
    Hop,
    NotificationStatus,
    Receipt,
    ReceiptStatus,
    RoundUpdate,
    Strategy,
)
from app.store.sql import (
    ATTEMPTS,
    DEDUP_WINDOWS,
    EVENT_DELIVERIES,
    EVENTS,
    EVENTS_CHANNEL,
    IDEMPOTENCY_KEYS,
    NOTIFICATIONS,
    RECEIPTS,
    OutboxRows,
    Row,
    SqliteCalls,
    driver_connection,
    sqlite_connection,
    status_is,
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """What the worker reads of a notification it claimed (columns by name, ``metadata``)."""

    id: uuid.UUID
    route: str | None
    strategy: Strategy
    channels: list[str]
    recipient: dict[str, Any]
    subject: str | None
    text: str | None
    html: str | None
    severity: str
    source: str | None
    metadata: dict[str, Any]
    retry_schedule: list[float]
    retry_jitter: float
    round: int
    round_base: int
    trigger: AttemptTrigger
    attempt_count: int
    hops: list[Hop]
    expires_at: datetime | None
    created_at: datetime
    owner: str | None
    callback_url: str | None
    callback_events: list[str] | None
    holds: HoldPolicy | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledged_via: str | None
    rendered: dict[str, dict[str, Any]] | None
    """Its template's per-channel-type overrides, rendered."""
    occurrences: int
    digest_key: str | None


CLAIMED_COLUMNS = tuple(Claimed.__dataclass_fields__)
"""The columns a claim returns, in ``Claimed``'s order."""

_STRATEGY, _TRIGGER, _HOPS, _HOLDS = (
    CLAIMED_COLUMNS.index(n) for n in ("strategy", "trigger", "hops", "holds")
)


def claimed_of(row: Sequence[Any]) -> Claimed:
    """A claimed row, its stored strings read as the domain's types."""
    values = list(row)
    values[_STRATEGY] = Strategy(values[_STRATEGY])
    values[_TRIGGER] = AttemptTrigger(values[_TRIGGER])
    values[_HOPS] = [Hop.from_dict(hop) for hop in values[_HOPS]]
    values[_HOLDS] = HoldPolicy.from_dict(values[_HOLDS])
    return Claimed(*values)


@dataclass(frozen=True, slots=True)
class FinishedRound:
    """One round to save: what it changes on the notification, its ``attempts`` rows, and the
    outbox's rows of the events it causes (``None``: nobody takes them)."""

    notification_id: uuid.UUID
    change: RoundUpdate
    attempts: Sequence[Row]
    events: OutboxRows | None = None
    revisions: Sequence[Row] = ()
    """``revise_attempt``'s parameters: delivered attempts a receipt showed failed."""


_WRITTEN_WHEN_SET = tuple(field.name for field in fields(RoundUpdate) if field.default is None)
"""``RoundUpdate``'s optional fields: ``None`` leaves the column (of the same name) alone."""


def columns_of(change: RoundUpdate) -> Row:
    """The ``notifications`` columns a round writes (those it leaves alone are absent)."""
    row: Row = {
        "status": change.status,
        "hops": [hop.as_dict() for hop in change.hops],
        "next_attempt_at": change.next_attempt_at,
        "updated_at": change.updated_at,
    }
    for name in _WRITTEN_WHEN_SET:
        value = getattr(change, name)
        if value is not None:
            row[name] = value
    return row


# --- the statements ----------------------------------------------------------------------

_N = NOTIFICATIONS.c


class Statements:
    """Every statement of the worker's store, built once for one database.

    Parameters are named; none is named as a ``notifications`` column, since a parameter that
    is (``status``, ``hops``…) is a value for the ``SET`` of ``save_round``. Every statement that
    locks several notification rows (save, renew, release, sweep) takes them in id order, so
    two of them cannot deadlock on each other.
    """

    def __init__(self, dialect: Dialect) -> None:
        held = (
            status_is(_N.status, NotificationStatus.DELIVERING),
            _N.claimed_by == bindparam("worker_id"),
        )
        """Held by ``:worker_id`` under its lease."""
        unclaimed = {"claimed_by": None, "lease_expires_at": None}

        due = (
            select(_N.id)
            # Without statistics SQLite's planner took ix_notifications_status_id for the
            # status and sorted every pending row to pick the oldest (a claim grew with the
            # backlog: bench/results/levers.md, "SQLite claims"); the due index is in order.
            .with_hint(NOTIFICATIONS, "INDEXED BY ix_notifications_due", "sqlite")
            .where(
                status_is(_N.status, NotificationStatus.PENDING),
                _N.next_attempt_at <= bindparam("now"),
            )
            .order_by(_N.next_attempt_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self.claim = claiming(due)
        """Up to ``:limit`` notifications due at ``:now``, oldest due first, marked delivering
        under ``:worker_id``'s lease until ``:lease_until``; their ``CLAIMED_COLUMNS``."""

        group = (
            select(_N.id)
            .where(
                status_is(_N.status, NotificationStatus.PENDING),
                _N.digest_key == bindparam("group"),
                _N.id != bindparam("leader"),
                or_(_N.send_at.is_(None), _N.send_at <= bindparam("now")),
                or_(_N.expires_at.is_(None), _N.expires_at > bindparam("now")),
            )
            .order_by(_N.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self.gather = claiming(group)
        """Up to ``:limit`` pending notifications of digest group ``:group`` besides
        ``:leader``, oldest first, due or not (a digest sends them with the first that came
        due), but none whose ``send_at`` is still ahead or whose expiry has passed: claimed
        as ``claim`` does."""

        self.lock_held = _in_lock_order(select(_N.id).where(among(_N.id, "ids", dialect), *held))
        """The rows of ``:ids`` that ``:worker_id`` still holds, locked; their ids."""
        locked_held = _N.id.in_(self.lock_held.scalar_subquery())

        self.save_round = (
            update(NOTIFICATIONS).where(_N.id == bindparam("b_id"), *held).values(**unclaimed)
        )
        """One round's columns (its parameters named as columns) on ``:b_id``, if
        ``:worker_id`` holds it; the lease ends."""

        self.add_attempts = insert(ATTEMPTS)
        """Attempts rows (every column given)."""

        _A, _R = ATTEMPTS.c, RECEIPTS.c
        self.revise_attempt = update(ATTEMPTS).where(_A.id == bindparam("a_id"))
        """An attempt's outcome and error (its parameters named as columns) on ``:a_id``."""

        self.held_attempt = (
            select(_A.id, _A.started_at, _A.channel_type, _A.provider_message_id)
            .where(_A.notification_id == bindparam("n_id"), _A.hop == bindparam("n_hop"))
            .order_by(_A.started_at.desc(), _A.id.desc())
            .limit(1)
        )
        """The latest attempt of hop ``:n_hop`` of notification ``:n_id``."""

        self.receipts_of = select(
            _R.channel, _R.channel_type, _R.provider_message_id, _R.status, _R.occurred_at, _R.code
        ).where(_R.channel_type == bindparam("r_type"), _R.provider_message_id == bindparam("r_id"))
        """The receipts for provider message ``:r_id`` of channel type ``:r_type``."""

        self.add_events = insert(EVENTS)
        """``events`` rows (every column given)."""

        self.add_event_deliveries = insert(EVENT_DELIVERIES)
        """``event_deliveries`` rows (every column but ``seq``, which the database takes)."""

        self.notify_events = notify_statement(EVENTS_CHANNEL, dialect)
        """``NOTIFY herald_events`` (PostgreSQL; ``None`` elsewhere)."""

        self.renew = (
            update(NOTIFICATIONS)
            .where(locked_held, *held)
            .values(lease_expires_at=bindparam("lease_until"))
        )
        """``:worker_id``'s lease on the rows of ``:ids`` it still holds, moved to
        ``:lease_until``."""

        self.release = (
            update(NOTIFICATIONS)
            .where(locked_held, *held)
            .values(status=NotificationStatus.PENDING, updated_at=bindparam("now"), **unclaimed)
        )
        """The rows of ``:ids`` that ``:worker_id`` holds, handed back untried."""

        self.recover = recovery(
            _N.id, pending=NotificationStatus.PENDING, held=NotificationStatus.DELIVERING
        )
        """Notifications whose lease ran out before ``:now`` (their worker died), pending and
        due at once."""

        self.purge_keys = delete(IDEMPOTENCY_KEYS).where(
            IDEMPOTENCY_KEYS.c.created_at < bindparam("cutoff")
        )
        """Idempotency keys stored before ``:cutoff``."""

        self.purge_windows = delete(DEDUP_WINDOWS).where(
            DEDUP_WINDOWS.c.closes_at < bindparam("cutoff")
        )
        """Dedup windows closed before ``:cutoff``."""


def among(column: ColumnElement[Any], name: str, dialect: Dialect) -> ColumnElement[bool]:
    """``column`` is in the list parameter ``:name``: ``= ANY`` of one array parameter on
    PostgreSQL (one statement, prepared once, whatever the count), an expanding ``IN``
    elsewhere. The one place the statements differ by database."""
    if dialect.name == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(column.type)))
    return column.in_(bindparam(name, expanding=True))


def claiming(candidates: Select[Any]) -> Update:
    """The notifications ``candidates`` picks (``picked``), marked delivering under
    ``:worker_id``'s lease until ``:lease_until``; their ``CLAIMED_COLUMNS``."""
    return (
        update(NOTIFICATIONS)
        .where(picked(_N.id, candidates))
        .values(
            status=NotificationStatus.DELIVERING,
            claimed_by=bindparam("worker_id"),
            lease_expires_at=bindparam("lease_until"),
            updated_at=bindparam("now"),
        )
        .returning(*(_N[name] for name in CLAIMED_COLUMNS))
    )


def picked(key: Column[Any], candidates: Select[Any]) -> ColumnElement[bool]:
    """``key`` is among the rows ``candidates`` (a ``LIMIT … FOR UPDATE SKIP LOCKED`` select)
    locked, selected once. As a plain ``IN (subquery)`` PostgreSQL's planner may run the
    subquery again for each row of the outer scan (on a table not analyzed yet, say), and each
    run locks a further ``LIMIT`` rows: a claim of 2 came back with 3. A ``MATERIALIZED`` CTE
    runs once."""
    once = candidates.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    return key.in_(select(once.c[key.name]))


def notify_statement(channel: str, dialect: Dialect) -> Select[Any] | None:
    """``SELECT pg_notify(channel, '')`` on PostgreSQL (sent when the transaction commits);
    ``None`` on SQLite, whose one process wakes its loops in memory."""
    if dialect.name != "postgresql":
        return None
    return select(func.pg_notify(literal(channel), literal("")))


def recovery(key: Column[Any], *, pending: StrEnum, held: StrEnum) -> Update:
    """The rows of ``key``'s table whose lease ran out before ``:now`` (their holder died),
    locked in ``key`` order, marked ``pending`` and due at once: a leased table's sweep."""
    table = key.table
    expired = (status_is(table.c.status, held), table.c.lease_expires_at < bindparam("now"))
    lapsed = select(key).where(*expired).order_by(key).with_for_update()
    return (
        update(table)
        .where(key.in_(lapsed.scalar_subquery()))
        .where(*expired)
        .values(
            status=pending,
            next_attempt_at=bindparam("now"),
            updated_at=bindparam("now"),
            claimed_by=None,
            lease_expires_at=None,
        )
    )


def _in_lock_order(ids: Select[tuple[uuid.UUID]]) -> Select[tuple[uuid.UUID]]:
    """``ids``' rows locked in id order (PostgreSQL; SQLite has one writer at a time)."""
    return ids.order_by(_N.id).with_for_update()


Statement = Select[Any] | Update | Insert | Delete


# --- one way to run them per database ----------------------------------------------------


class _Connection(Protocol):
    """A connection running the store's statements, parameters by name."""

    async def rows(self, statement: Statement, params: Row) -> Sequence[Sequence[Any]]: ...

    async def count(self, statement: Statement, params: Row) -> int:
        """Run an ``UPDATE`` or ``DELETE``; the rows it changed."""
        ...

    async def many(self, statement: Statement, params: Sequence[Row]) -> None:
        """Run a statement once per parameter set (every set has the same names)."""
        ...


class Database(Protocol):
    """One way to run statements per database (``database_of``)."""

    def autocommit(self, statement: Statement) -> AbstractAsyncContextManager[_Connection]:
        """A connection whose statements each commit by themselves (``statement``: the first
        it runs; SQLite runs them in one transaction)."""
        ...

    def transaction(self, statement: Statement) -> AbstractAsyncContextManager[_Connection]:
        """A connection in a transaction (``statement``: the first it runs)."""
        ...


def database_of(engine: AsyncEngine) -> Database:
    """How the store's statements run on ``engine``'s database: plain SQL on the pooled
    driver connection, asyncpg's (PostgreSQL) or sqlite3's through aiosqlite's thread."""
    return _Driver(engine) if engine.dialect.name == "postgresql" else _Sqlite(engine)


class WorkQueue:
    """The one store the worker talks to: claims, saves, renewals, releases and sweeps."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.statements = Statements(engine.dialect)
        self._database = database_of(engine)

    async def claim(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Claimed]:
        """Mark up to ``limit`` due notifications ``delivering`` under this worker's lease."""
        claim = self.statements.claim
        params = {"worker_id": worker_id, "now": now, "lease_until": lease_until, "limit": limit}
        async with self._database.autocommit(claim) as connection:
            rows = await connection.rows(claim, params)
        return [claimed_of(row) for row in rows]

    async def gather(
        self,
        group: str,
        *,
        leader: uuid.UUID,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
    ) -> list[Claimed]:
        """Claim the pending notifications of digest ``group`` that ``leader``'s digest sends
        (at most ``limit`` of them), as ``claim`` does."""
        gather = self.statements.gather
        params = {
            "group": group,
            "leader": leader,
            "worker_id": worker_id,
            "now": now,
            "lease_until": lease_until,
            "limit": limit,
        }
        async with self._database.autocommit(gather) as connection:
            rows = await connection.rows(gather, params)
        return [claimed_of(row) for row in rows]

    async def save_rounds(
        self, rounds: Sequence[FinishedRound], *, worker_id: str
    ) -> set[uuid.UUID]:
        """Write finished rounds (new state and attempts together) whose lease is still ours.

        Returns the ids that were saved. A round whose notification this worker no longer holds
        (the lease ran out and another worker took it over, or it was released) is skipped
        whole: neither its attempts nor its state nor its events are written, so it is not
        counted twice.

        However many rounds, one transaction: one statement locks the rows still ours, one
        executemany ``UPDATE`` per set of changed columns writes them, one executemany
        ``INSERT`` their attempts (bench/results/levers.md, "group commit"), and, when rounds
        carry events, one for their ``events`` and one for their ``event_deliveries`` (taken
        in the order the rounds' events happened, after their rows were locked: ``seq``
        orders each notification's events) and a ``NOTIFY herald_events``.
        """
        if not rounds:
            return set()
        statements = self.statements
        ids = [finished.notification_id for finished in rounds]
        async with self._database.transaction(statements.lock_held) as connection:
            ours: set[uuid.UUID] = await still_held(
                connection, statements.lock_held, {"ids": ids, "worker_id": worker_id}
            )
            if not ours:
                return ours
            kept = [finished for finished in rounds if finished.notification_id in ours]
            for group in _by_columns(kept, worker_id):
                await connection.many(statements.save_round, group)
            attempts = [attempt for finished in kept for attempt in finished.attempts]
            if attempts:
                await connection.many(statements.add_attempts, attempts)
            revisions = [row for finished in kept for row in finished.revisions]
            if revisions:
                await connection.many(statements.revise_attempt, revisions)
            events = [finished.events for finished in kept if finished.events]
            if events:
                await _add_events(connection, statements, events)
        return ours

    async def held(self, notification_id: uuid.UUID, hops: Sequence[int]) -> dict[int, HeldAttempt]:
        """What a round settling held hops reads: each held hop's latest attempt and its
        receipts (by provider message id, whether or not they were matched to it yet)."""
        statements = self.statements
        found: dict[int, HeldAttempt] = {}
        async with self._database.autocommit(statements.held_attempt) as connection:
            for hop in hops:
                rows = await connection.rows(
                    statements.held_attempt, {"n_id": notification_id, "n_hop": hop}
                )
                if not rows:
                    continue
                attempt_id, started_at, channel_type, message_id = rows[0]
                receipts: list[Receipt] = []
                if message_id is not None:
                    params = {"r_type": channel_type, "r_id": message_id}
                    receipts = [
                        Receipt(channel, kind, mid, ReceiptStatus(status), at, code)
                        for channel, kind, mid, status, at, code in await connection.rows(
                            statements.receipts_of, params
                        )
                    ]
                found[hop] = HeldAttempt(attempt_id, started_at, receipts)
        return found

    async def renew(
        self, ids: Sequence[uuid.UUID], *, worker_id: str, lease_until: datetime
    ) -> int:
        """Move this worker's leases on ``ids`` to ``lease_until`` (rounds still running); how
        many it still held."""
        if not ids:
            return 0
        params = {"ids": list(ids), "worker_id": worker_id, "lease_until": lease_until}
        return await self._count(self.statements.renew, params)

    async def release(self, ids: Sequence[uuid.UUID], *, worker_id: str, now: datetime) -> int:
        """Give claimed notifications back untried (shutdown), without counting an attempt."""
        if not ids:
            return 0
        params = {"ids": list(ids), "worker_id": worker_id, "now": now}
        return await self._count(self.statements.release, params)

    async def recover_expired(self, now: datetime) -> int:
        """Return notifications whose worker died mid-delivery to ``pending``, due at once."""
        return await self._count(self.statements.recover, {"now": now})

    async def purge_keys(self, cutoff: datetime) -> int:
        """Delete idempotency keys stored before ``cutoff``."""
        return await self._count(self.statements.purge_keys, {"cutoff": cutoff})

    async def purge_windows(self, cutoff: datetime) -> int:
        """Delete dedup windows that closed before ``cutoff``."""
        return await self._count(self.statements.purge_windows, {"cutoff": cutoff})

    async def _count(self, statement: Statement, params: Row) -> int:
        async with self._database.autocommit(statement) as connection:
            return await connection.count(statement, params)


async def still_held(connection: _Connection, lock_held: Statement, params: Row) -> set[Any]:
    """Lock the rows ``lock_held`` selects, those the lease holder named in ``params`` still
    holds; their keys."""
    return {row[0] for row in await connection.rows(lock_held, params)}


async def _add_events(
    connection: _Connection, statements: Statements, events: Sequence[OutboxRows]
) -> None:
    """Insert the outbox's rows of the rounds that carry events, and tell the event
    dispatchers (``NOTIFY``, sent on commit)."""
    await connection.many(
        statements.add_events, [row for rows in events for row in rows.event_rows]
    )
    await connection.many(
        statements.add_event_deliveries, [row for rows in events for row in rows.deliveries]
    )
    if statements.notify_events is not None:
        await connection.rows(statements.notify_events, {})


def _by_columns(rounds: Sequence[FinishedRound], worker_id: str) -> list[list[Row]]:
    """``save_round``'s parameters for each round, grouped by the columns it changes (one
    executemany a group)."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for finished in rounds:
        row = columns_of(finished.change)
        group = groups.setdefault(tuple(row), [])
        row["b_id"] = finished.notification_id
        row["worker_id"] = worker_id
        group.append(row)
    return list(groups.values())


class _Compiled:
    """A database's way of running the statements: each compiled to plain SQL once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._plain: dict[tuple[Statement, tuple[str, ...]], PlainSql] = {}

    def plain(self, statement: Statement, names: tuple[str, ...]) -> PlainSql:
        """``statement`` compiled for parameters named ``names`` (once)."""
        key = (statement, names)
        found = self._plain.get(key)
        if found is None:
            found = self._plain[key] = PlainSql(statement, self.engine.dialect, names)
        return found


class _Sqlite(_Compiled):
    """SQLite: the statements compiled once to plain SQL (``PlainSql``), run on the pooled
    connection a step at a time (``SqliteCalls``); each transaction ``BEGIN IMMEDIATE``, so a
    second process (``herald worker`` beside ``herald serve --no-worker``) waits for the write
    lock instead of failing on a stale snapshot."""

    @asynccontextmanager
    async def autocommit(self, statement: Statement) -> AsyncIterator[_Connection]:
        async with sqlite_connection(self.engine) as calls:
            yield _SqliteConnection(self, calls, autocommit=True)

    @asynccontextmanager
    async def transaction(self, statement: Statement) -> AsyncIterator[_Connection]:
        async with sqlite_connection(self.engine) as calls:
            connection = _SqliteConnection(self, calls, autocommit=False)
            yield connection
            await connection.commit()


Bound = tuple[str, list[Any]]
"""A statement's SQL and its driver-level arguments."""


class _SqliteConnection:
    """Runs each statement that answers (``rows``, ``count``) in one call to the connection's
    thread, with the transaction's ``BEGIN IMMEDIATE`` when it is the first and the writes
    queued before it (``many``); ``commit`` sends what is queued with the ``COMMIT``. In
    ``autocommit`` each statement is a transaction of its own, in one call."""

    def __init__(self, database: _Sqlite, calls: SqliteCalls, *, autocommit: bool) -> None:
        self.database = database
        self.calls = calls
        self.autocommit = autocommit
        self._begun = False
        self._queued: list[tuple[str, list[list[Any]]]] = []

    async def rows(self, statement: Statement, params: Row) -> Sequence[Sequence[Any]]:
        plain = self.database.plain(statement, tuple(params))
        rows, _ = await self._call(plain.bound(params), commit=self.autocommit)
        return [plain.result(row) for row in rows]

    async def count(self, statement: Statement, params: Row) -> int:
        plain = self.database.plain(statement, tuple(params))
        _, count = await self._call(plain.bound(params), commit=self.autocommit)
        return count

    async def many(self, statement: Statement, params: Sequence[Row]) -> None:
        plain = self.database.plain(statement, tuple(params[0]))
        bound = [plain.bound(one) for one in params]
        by_sql: dict[str, list[list[Any]]] = {}  # an expanding list's length changes the SQL
        for sql, args in bound:
            by_sql.setdefault(sql, []).append(args)
        self._queued += by_sql.items()
        if self.autocommit:
            await self._call(None, commit=True)

    async def commit(self) -> None:
        if self._begun or self._queued:
            await self._call(None, commit=True)

    async def _call(self, query: Bound | None, *, commit: bool) -> tuple[list[Any], int]:
        queued, self._queued = self._queued, []
        step = partial(_step, begin=not self._begun, queued=queued, query=query, commit=commit)
        self._begun = not commit
        sql = query[0] if query else (queued[0][0] if queued else "COMMIT")
        return await self.calls.call(step, sql)


def _step(
    connection: sqlite3.Connection,
    *,
    begin: bool,
    queued: Sequence[tuple[str, list[list[Any]]]],
    query: Bound | None,
    commit: bool,
) -> tuple[list[Any], int]:
    """In aiosqlite's thread: one step of a transaction (rolled back if it fails)."""
    try:
        if begin:
            connection.execute("BEGIN IMMEDIATE")
        for sql, args in queued:
            connection.executemany(sql, args)
        rows: list[Any] = []
        count = -1
        if query is not None:
            cursor = connection.execute(*query)
            rows = cursor.fetchall()
            count = cursor.rowcount
        if commit:
            connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return rows, count


class _Driver(_Compiled):
    """PostgreSQL: the statements compiled once to plain SQL, on the pooled asyncpg
    connection; outside ``transaction`` each statement commits by itself."""

    @asynccontextmanager
    async def autocommit(self, statement: Statement) -> AsyncIterator[_Connection]:
        sql = self.plain(statement, ()).sql
        async with driver_connection(self.engine, sql) as connection:
            yield _DriverConnection(self, connection)

    @asynccontextmanager
    async def transaction(self, statement: Statement) -> AsyncIterator[_Connection]:
        sql = self.plain(statement, ()).sql
        async with driver_connection(self.engine, sql) as connection, connection.transaction():
            yield _DriverConnection(self, connection)


class _DriverConnection:
    def __init__(self, database: _Driver, connection: Any) -> None:
        self.database = database
        self.connection = connection

    async def rows(self, statement: Statement, params: Row) -> Sequence[Sequence[Any]]:
        plain = self.database.plain(statement, tuple(params))
        rows: list[Sequence[Any]] = await self.connection.fetch(plain.sql, *plain.args(params))
        return rows

    async def count(self, statement: Statement, params: Row) -> int:
        plain = self.database.plain(statement, tuple(params))
        status: str = await self.connection.execute(plain.sql, *plain.args(params))
        return int(status.rpartition(" ")[2])  # "UPDATE 3"

    async def many(self, statement: Statement, params: Sequence[Row]) -> None:
        plain = self.database.plain(statement, tuple(params[0]))
        await self.connection.executemany(plain.sql, [plain.args(one) for one in params])


class PlainSql:
    """A Core statement compiled once to the driver's own SQL (``$1``…), and the driver-level
    arguments for a set of named parameters.

    The names given become the ``SET`` or ``VALUES`` columns of an ``UPDATE`` or ``INSERT``
    that has them, as when SQLAlchemy executes the statement with those parameters; values go
    through the bind processors it would apply, and values fixed in the statement are bound
    once here.
    """

    def __init__(self, statement: Statement, dialect: Dialect, names: tuple[str, ...]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        if compiled.positiontup is None:
            raise TypeError(f"{dialect.name} does not bind parameters by position")
        self.sql = compiled.string
        self._slots: list[tuple[str | None, Any, Any]] = []
        """Per position: the parameter's name and bind processor, or ``None`` and the value."""
        self._expanding: str | None = None
        """The one expanding list parameter (``among`` on SQLite), if any."""
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.expanding:
                if self._expanding is not None:
                    raise TypeError("one expanding parameter per statement at most")
                self._expanding = name
            if bind.required:
                self._slots.append((name, process, None))
            else:
                value = bind.effective_value
                self._slots.append((None, None, value if process is None else process(value)))
        self._results = (
            [
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in statement.exported_columns
            ]
            if dialect.name == "sqlite"
            else []
        )
        """Per returned column: what turns the driver's value into the column's type (SQLite;
        asyncpg's codecs do it on PostgreSQL, where ``result`` is not used)."""

    def args(self, params: Row) -> list[Any]:
        args = []
        for name, process, value in self._slots:
            if name is not None:
                value = params[name]
                if process is not None:
                    value = process(value)
            args.append(value)
        return args

    def bound(self, params: Row) -> Bound:
        """The SQL and arguments for ``params``, an expanding list written out as one ``?``
        per item (``NULL`` for none: it matches nothing)."""
        if self._expanding is None:
            return self.sql, self.args(params)
        args: list[Any] = []
        for name, process, value in self._slots:
            if name is None:
                args.append(value)
            elif name == self._expanding:
                items = params[name]
                args += items if process is None else [process(item) for item in items]
            else:
                args.append(params[name] if process is None else process(params[name]))
        count = len(params[self._expanding])
        places = ", ".join("?" * count) if count else "NULL"
        return self.sql.replace(f"__[POSTCOMPILE_{self._expanding}]", places), args

    def result(self, row: Sequence[Any]) -> Sequence[Any]:
        """A row as SQLAlchemy would return it (SQLite's values read as the columns' types)."""
        return [
            value if process is None else process(value)
            for process, value in zip(self._results, row, strict=True)
        ]
