"""What the API does to notifications: accept them (one, or a batch), read them back, cancel
and retry them; and what it reads of the store for readiness and metrics. Each write is one
unit of work and commits once; the repositories below it only flush.

The API calls in with domain values (``app.domain``: a ``NewNotification``, a ``ListFilter``)
and gets domain values back (a ``StoredNotification``, ``StoredAttempt`` rows, a batch item's
``Outcome``); HTTP schemas and problem documents stay in ``app.api``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.config import HeraldConfig, RetryPolicy
from app.dedup import digest_key
from app.delivery.orchestrator import settle, utcnow
from app.domain import (
    ACK_BY_LIMIT,
    ACKABLE,
    CANCELLABLE,
    DEFAULT_CALLBACK_EVENTS,
    DEFAULT_ROUTE,
    FINAL_STATUSES,
    RETRYABLE,
    AckOutcome,
    AckResult,
    AckVia,
    Admission,
    AttemptTrigger,
    Hop,
    HopState,
    ListFilter,
    NewNotification,
    NotificationStatus,
    Receipt,
    StoredAttempt,
    StoredNotification,
    Strategy,
    WaitEnd,
    best_receipt,
    fresh_hops,
)
from app.errors import (
    HeraldError,
    IdempotencyMismatch,
    InvalidTransition,
    NotificationNotFound,
    NotificationPurged,
    TemplateNotFound,
    UnknownName,
    Unprocessable,
)
from app.events.body import acknowledgement_data
from app.ids import uuid7
from app.runtime import ResolvedRoute, Runtime
from app.security.guard import url_refusal
from app.store.db import brief
from app.store.dedup import Window, digest_groups
from app.store.intake import DuplicateKey
from app.store.migrate import current_revision, head_revision
from app.store.models import IdempotencyKey
from app.store.receipts import ReceiptStore
from app.store.repositories import IdempotencyRepository, NotificationRepository
from app.store.retention import was_purged
from app.store.sql import OutboxRows, Row, write_events
from app.templates import MessageTemplate, Rendered, RenderError

logger = logging.getLogger("herald.api")

Loc = Sequence[str | int]
T = TypeVar("T")
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ShownAttempt:
    """An attempt as the API shows it: as stored, with its receipt."""

    stored: StoredAttempt
    receipt: Receipt | None


NO_TEMPLATES: Mapping[str, MessageTemplate] = {}

Outcome = uuid.UUID | HeraldError
"""What became of one item of a batch: the id it is stored under, or why it was refused."""


@dataclass(frozen=True, slots=True)
class Keyed:
    """A request with an ``Idempotency-Key`` of its own (a stream entry's, an alert group's)
    and the fingerprint of its body (``digest``)."""

    request: NewNotification
    key: str
    digest: str


@dataclass(frozen=True, slots=True)
class Stored:
    """A keyed request's notification: stored now, or before (``replayed``)."""

    id: uuid.UUID
    replayed: bool


def resolve_route(
    config: HeraldConfig, request: NewNotification, loc: Loc = ("body",)
) -> ResolvedRoute:
    """The chain a request asks for; ``UnknownName`` (422) for names the config lacks."""
    if request.channels is not None:
        unknown = [name for name in request.channels if name not in config.channels]
        if unknown:
            raise UnknownName("channel", unknown, [*loc, "channels"])
        if len(set(request.channels)) != len(request.channels):
            raise Unprocessable(
                "channels lists a channel more than once",
                errors=[{"loc": [*loc, "channels"], "msg": "duplicate channel"}],
            )
        return ResolvedRoute(None, list(request.channels), Strategy.FALLBACK, RetryPolicy(), None)
    name = request.route or DEFAULT_ROUTE
    route = config.routes.get(name)
    if route is None:
        if request.route is None:
            raise Unprocessable(
                "no route or channels given, and the config defines no 'default' route",
                errors=[{"loc": [*loc, "route"], "msg": "required: no default route"}],
            )
        raise UnknownName("route", [name], [*loc, "route"])
    return ResolvedRoute(
        name,
        route.names,
        route.strategy,
        route.retry,
        route.ttl,
        route.holds,
        dedup=route.dedup,
        digest=route.digest,
    )


def admit(runtime: Runtime, request: NewNotification, loc: Loc = ("body",)) -> ResolvedRoute:
    """The checks a valid body must still pass against the config: names, the guard, and a
    secret to sign callbacks with."""
    route = resolve_route(runtime.config, request, loc)
    if request.dedup_key is not None and route.dedup is None:
        where = f"route {route.name}" if route.name else "an inline chain of channels"
        message = f"{where} has no dedup window: set dedup on the route in herald.yaml"
        raise Unprocessable(
            f"dedup_key is refused: {message}",
            errors=[{"loc": [*loc, "dedup_key"], "msg": message}],
        )
    if request.recipient.webhook_url:
        _guarded(runtime, request.recipient.webhook_url, "recipient.webhook_url", loc)
    if request.callback_url is not None:
        if not runtime.outbox.callbacks:
            message = "callbacks are not configured: set events.callback_secret in herald.yaml"
            raise Unprocessable(
                f"callback_url is refused: {message}",
                errors=[{"loc": [*loc, "callback_url"], "msg": message}],
            )
        _guarded(runtime, request.callback_url, "callback_url", loc)
    return route


def _guarded(runtime: Runtime, url: str, field: str, loc: Loc) -> None:
    """Refuse (422) a URL the request names (``field``, dotted, at ``loc``) that the outbound
    guard refuses before any lookup."""
    refusal = url_refusal(runtime.guard, url)
    if refusal is not None:
        raise Unprocessable(
            f"{field} is refused: {refusal}",
            errors=[{"loc": [*loc, *field.split(".")], "msg": refusal}],
        )


async def accept_batch(
    runtime: Runtime,
    items: Sequence[NewNotification | HeraldError],
    answer: Callable[[Sequence[Outcome]], Json],
    *,
    owner: str | None = None,
    idempotency_key: str | None = None,
    digest: str = "",
) -> tuple[Json, bool]:
    """Store every acceptable item in one transaction: ``(the answer, False)``, or ``(the first
    answer, True)`` for a replay of ``idempotency_key`` with the same ``digest`` (a fingerprint
    of the request body).

    Items arrive already parsed (a parse failure is passed in as its error), so one bad item
    costs only its own place in the batch. ``answer`` makes the caller's answer of the items'
    outcomes, in the request's order. With a key, the answer is stored on the key row in the
    same transaction as the items, so two requests racing with one key store the items once:
    the loser's transaction fails on the key and it answers with the winner's answer.
    """
    scope = owner or ""
    if idempotency_key:
        replay = await _batch_replay(runtime, scope, idempotency_key, digest)
        if replay is not None:
            return replay, True
    now = utcnow()
    outcomes: list[Outcome] = []
    accepted: list[StoredNotification] = []
    for index, item in enumerate(items):
        if isinstance(item, HeraldError):
            outcomes.append(item)
            continue
        loc = ("body", "items", index)
        try:
            _one_at_a_time(item, loc)
            row = new_notification(
                item,
                admit(runtime, item, loc),
                now=now,
                owner=owner,
                loc=loc,
                templates=runtime.config.templates,
            )
        except HeraldError as exc:
            outcomes.append(exc)
            continue
        accepted.append(row)
        outcomes.append(row["id"])
    body = answer(outcomes)
    key = key_row(scope, idempotency_key, digest, now, response=body)
    if not accepted and key is None:
        return body, False
    due = any(_due(row, now) for row in accepted)
    events = runtime.outbox.accepted(accepted) if accepted else None
    winner = await _unless_raced(
        runtime.intake.add_many(accepted, keys=[key] if key else (), announce=due, events=events),
        lambda: _batch_replay(runtime, scope, idempotency_key or "", digest),
    )
    if winner is not None:
        return winner, True
    for row in accepted:
        metrics.series(metrics.notifications_received, metrics.route_label(row["route"])).inc()
    runtime.emitted(events)
    await _release_full_digests(runtime, accepted, now)
    if due:
        runtime.wake_worker()
    return body, False


def key_row(
    scope: str,
    key: str | None,
    digest: str,
    now: datetime,
    *,
    notification_id: uuid.UUID | None = None,
    response: dict[str, Any] | None = None,
) -> Row | None:
    """The ``idempotency_keys`` row of a request: a single POST's points at its notification,
    a batch's holds its answer. ``None`` for a request without a key."""
    if not key:
        return None
    return {
        "scope": scope,
        "key": key,
        "request_hash": digest,
        "notification_id": notification_id,
        "response": response,
        "created_at": now,
    }


def render(
    templates: Mapping[str, MessageTemplate], request: NewNotification, loc: Loc = ("body",)
) -> Rendered | None:
    """The request's template rendered with its data (``None`` for a request without one);
    ``Unprocessable`` (422) for an unknown template or a render that fails, naming why."""
    if request.template is None:
        return None
    template = templates.get(request.template)
    if template is None:
        raise UnknownName("template", [request.template], [*loc, "template"])
    return rendered(template, request.data or {}, [*loc, "data"])


def rendered(template: MessageTemplate, data: Mapping[str, Any], loc: Loc) -> Rendered:
    """``template`` rendered with ``data``; ``Unprocessable`` (422, at ``loc``: where the data
    is) naming the field that failed and why: a missing variable, what the sandbox forbids, a
    render limit."""
    try:
        return template.render(data)
    except RenderError as exc:
        raise Unprocessable(
            f"template {exc.template!r} cannot be rendered: {exc.field}: {exc.reason}",
            errors=[{"loc": list(loc), "msg": f"{exc.field}: {exc.reason}"}],
        ) from None


def preview(config: HeraldConfig, name: str, data: Mapping[str, Any]) -> Rendered:
    """Template ``name`` rendered with ``data``, nothing stored or sent; ``TemplateNotFound``
    (404) when the config has none of that name."""
    template = config.templates.get(name)
    if template is None:
        raise TemplateNotFound(name)
    return rendered(template, data, ["body", "data"])


def new_notification(
    request: NewNotification,
    route: ResolvedRoute,
    *,
    now: datetime,
    owner: str | None,
    loc: Loc = ("body",),
    templates: Mapping[str, MessageTemplate] = NO_TEMPLATES,
) -> StoredNotification:
    """The ``notifications`` row of a newly accepted request, its template (one of
    ``templates``) rendered.

    An ``expires_at`` that has passed is refused here, against the time of the accept, not
    when the body is validated: an idempotent replay of a request whose expiry has passed
    since still answers with the original notification.
    """
    rendered = render(templates, request, loc)
    expires_at = request.expires_at
    if expires_at is not None and expires_at <= now:
        raise Unprocessable(
            "expires_at is in the past",
            errors=[{"loc": [*loc, "expires_at"], "msg": "must be in the future"}],
        )
    if expires_at is None and route.ttl is not None:
        try:
            expires_at = max(now, request.send_at or now) + timedelta(seconds=route.ttl)
        except OverflowError:
            raise Unprocessable(
                "send_at plus the route's ttl is past the year 9999",
                errors=[{"loc": [*loc, "send_at"], "msg": "too far ahead for the route's ttl"}],
            ) from None
    due = max(now, request.send_at) if request.send_at else now
    recipient = request.recipient.model_dump(exclude_none=True)
    group = None
    if route.digest is not None and route.name is not None:
        # Held as quiet hours hold: the first of its group to come due sends the digest.
        group = digest_key(owner, route.name, recipient)
        due += timedelta(seconds=route.digest.window)
    return {
        "id": uuid7(),
        "status": NotificationStatus.PENDING,
        "route": route.name,
        "strategy": route.strategy,
        "channels": route.channels,
        "chain_key": "," + ",".join(route.channels) + ",",
        "recipient": recipient,
        "subject": request.subject if rendered is None else rendered.subject,
        "text": request.text if rendered is None else rendered.text,
        "html": request.html if rendered is None else rendered.html,
        "severity": request.severity,
        "source": request.source,
        "metadata": request.metadata,
        "retry_schedule": list(route.retry.schedule),
        "retry_jitter": route.retry.jitter,
        "round": 0,
        "round_base": 0,
        "trigger": AttemptTrigger.SCHEDULED,
        "attempt_count": 0,
        "delivered_via": None,
        "delivered_at": None,
        "next_attempt_at": min(due, expires_at) if expires_at else due,
        "last_error": None,
        "hops": [hop.as_dict() for hop in fresh_hops(route.channels)],
        "send_at": request.send_at,
        "expires_at": expires_at,
        "claimed_by": None,
        "lease_expires_at": None,
        "owner": owner,
        "callback_url": request.callback_url,
        "callback_events": _callback_events(request),
        "holds": None if route.holds is None else route.holds.as_dict(),
        "acknowledged_at": None,
        "acknowledged_by": None,
        "acknowledged_via": None,
        "template": None if rendered is None else rendered.template,
        "rendered": None if rendered is None else rendered.overrides,
        "dedup_key": request.dedup_key,
        "occurrences": 1,
        "digest_key": group,
        "created_at": now,
        "updated_at": now,
    }


def _one_at_a_time(request: NewNotification, loc: Loc) -> None:
    """Refuse (422) a ``dedup_key`` where requests are accepted many at once (a batch, a
    stream): a repeat is decided against the key's window one request at a time."""
    if request.dedup_key is not None:
        message = "dedup_key is taken by POST /v1/notifications only"
        raise Unprocessable(message, errors=[{"loc": [*loc, "dedup_key"], "msg": message}])


async def _release_full_digests(
    runtime: Runtime, rows: Sequence[StoredNotification], now: datetime
) -> None:
    """Send at once each digest group ``rows`` filled up to its route's ``max_items``."""
    if all(row["digest_key"] is None for row in rows):
        return
    most = {
        name: route.digest.max_items
        for name, route in runtime.config.routes.items()
        if route.digest is not None
    }
    groups = digest_groups(rows, most)
    if groups and await runtime.dedup.release_full(groups, now):
        runtime.wake_worker()


def _callback_events(request: NewNotification) -> list[str] | None:
    """What the callback takes, as stored: the request's globs, or the default's types."""
    if request.callback_url is None:
        return None
    if request.callback_events is None:
        return [str(event_type) for event_type in DEFAULT_CALLBACK_EVENTS]
    return list(request.callback_events)


def _due(row: StoredNotification, now: datetime) -> bool:
    return row["next_attempt_at"] is not None and row["next_attempt_at"] <= now


async def accept(
    runtime: Runtime,
    request: NewNotification,
    *,
    idempotency_key: str | None,
    digest: str = "",
    owner: str | None = None,
) -> tuple[StoredNotification, Admission]:
    """Store a notification: ``(it, STORED)``; ``(the original, REPLAYED)`` for a replay of
    ``idempotency_key`` with the same ``digest`` (a fingerprint of the request body); or
    ``(the key's notification, DEDUPLICATED)`` for a repeat of a ``dedup_key`` its route's
    window drops or collapses."""
    route = admit(runtime, request)
    scope = owner or ""
    if idempotency_key:
        replay = await _replay(runtime, scope, idempotency_key, digest)
        if replay is not None:
            return replay, Admission.REPLAYED
    now = utcnow()
    row = new_notification(request, route, now=now, owner=owner, templates=runtime.config.templates)
    key = key_row(scope, idempotency_key, digest, now, notification_id=row["id"])
    due = _due(row, now)
    events = runtime.outbox.accepted([row])
    if request.dedup_key is not None and route.dedup is not None and route.name is not None:
        window = Window(scope, route.name, request.dedup_key, route.dedup.window, route.dedup.mode)
        store = runtime.dedup.accept(row, window, key=key, events=events, announce=due)
        try:
            stored, deduplicated = await store
        except DuplicateKey:
            replay = await _replay(runtime, scope, idempotency_key or "", digest)
            if replay is None:
                raise
            return replay, Admission.REPLAYED
        if deduplicated:
            return stored, Admission.DEDUPLICATED
    else:
        winner = await _unless_raced(
            runtime.intake.add_many([row], keys=[key] if key else (), announce=due, events=events),
            lambda: _replay(runtime, scope, idempotency_key or "", digest),
        )
        if winner is not None:
            return winner, Admission.REPLAYED
    runtime.emitted(events)
    await _release_full_digests(runtime, [row], now)
    metrics.series(metrics.notifications_received, metrics.route_label(route.name)).inc()
    # DEBUG, not INFO: one line per request was a large share of the API's CPU per accept
    # (bench/results/levers.md, "log line at DEBUG"), and every notification shows at INFO
    # anyway in the worker's line for each attempt.
    logger.debug(
        "accepted notification %s route=%s",
        row["id"],
        route.name,
        extra={"notification_id": str(row["id"]), "route": route.name},
    )
    if due:
        runtime.wake_worker()
    return row, Admission.STORED


async def accept_keyed(
    runtime: Runtime,
    items: Sequence[Keyed],
    *,
    owner: str | None = None,
    fresh: bool = False,
) -> list[Stored | HeraldError]:
    """Accept requests that each carry their own idempotency key, in one transaction: what
    ``accept`` does for each (the same checks, the same rows, the same key rule), with one
    read of the keys already used and one write for all the new ones.

    Each outcome, in the items' order, is the notification stored (``replayed`` when its key
    was used already, with this body or, since the rules that made it changed, another one:
    either way the key's notification exists), or why the request is refused. When another
    process stores one of the keys first, the items are accepted one by one with ``accept``,
    which answers the race as a POST does.

    ``fresh``: the keys are most likely unused (stream entries read for the first time), so
    the items are stored without reading the keys first, and only if one of them turns out
    taken are they accepted again with the read. That read was most of a batch's time on a
    table PostgreSQL had not analysed yet (bench/results/levers.md, "ingest_stream").
    """
    scope = owner or ""
    now = utcnow()
    used = {} if fresh else await _used_keys(runtime, scope, [item.key for item in items])
    outcomes: list[Stored | HeraldError] = []
    rows: list[StoredNotification] = []
    keys: list[Row] = []
    taken: dict[str, uuid.UUID] = {}
    for item in items:
        known = used.get(item.key) or taken.get(item.key)
        if known is not None:
            outcomes.append(Stored(known, replayed=True))
            continue
        try:
            _one_at_a_time(item.request, ("body",))
            row = new_notification(
                item.request,
                admit(runtime, item.request),
                now=now,
                owner=owner,
                templates=runtime.config.templates,
            )
        except HeraldError as exc:
            outcomes.append(exc)
            continue
        key = key_row(scope, item.key, item.digest, now, notification_id=row["id"])
        assert key is not None  # every item has a key
        rows.append(row)
        keys.append(key)
        taken[item.key] = row["id"]
        outcomes.append(Stored(row["id"], replayed=False))
    if not rows:
        return outcomes
    due = any(_due(row, now) for row in rows)
    events = runtime.outbox.accepted(rows)
    try:
        await runtime.intake.add_many(rows, keys=keys, announce=due, events=events)
    except DuplicateKey:
        if fresh:
            return await accept_keyed(runtime, items, owner=owner)
        return [await _accept_one(runtime, item, owner) for item in items]
    for row in rows:
        metrics.series(metrics.notifications_received, metrics.route_label(row["route"])).inc()
    runtime.emitted(events)
    await _release_full_digests(runtime, rows, now)
    if due:
        runtime.wake_worker()
    return outcomes


async def _accept_one(runtime: Runtime, item: Keyed, owner: str | None) -> Stored | HeraldError:
    try:
        stored, admission = await accept(
            runtime, item.request, idempotency_key=item.key, digest=item.digest, owner=owner
        )
    except IdempotencyMismatch as exc:
        # The key's notification was made from another body (the rules changed since): it
        # exists all the same. A key a batch used has none: refused.
        record = await _key_record(runtime, owner or "", item.key)
        if record is None or record.notification_id is None:
            return exc
        return Stored(record.notification_id, replayed=True)
    except HeraldError as exc:
        return exc
    return Stored(stored["id"], admission is Admission.REPLAYED)


async def _used_keys(runtime: Runtime, scope: str, keys: Sequence[str]) -> dict[str, uuid.UUID]:
    """Of ``keys``, those used already, with their notification (a batch's key has none)."""
    async with runtime.sessions() as session:
        records = await IdempotencyRepository(session).get_many(scope, keys)
    return {r.key: r.notification_id for r in records if r.notification_id is not None}


async def _key_record(runtime: Runtime, scope: str, key: str) -> IdempotencyKey | None:
    async with runtime.sessions() as session:
        return await IdempotencyRepository(session).get(scope, key)


async def _unless_raced(
    store: Coroutine[Any, Any, None], replay: Callable[[], Awaitable[T | None]]
) -> T | None:
    """Run ``store``: ``None`` once it stored. When another request with the same key committed
    first (``DuplicateKey``: nothing of ours was stored), the answer ``replay`` gives for it."""
    try:
        await store
    except DuplicateKey:
        answer = await replay()
        if answer is None:  # the key or its notification is gone already: nothing to answer
            raise
        return answer
    return None


async def _replay(runtime: Runtime, scope: str, key: str, digest: str) -> StoredNotification | None:
    async with runtime.sessions() as session:
        record = await _used_key(session, scope, key, digest, batch=False)
        if record is None or record.notification_id is None:
            return None
        # None when the notification was removed: the key means nothing now.
        return await NotificationRepository(session).get(record.notification_id)


async def _batch_replay(runtime: Runtime, scope: str, key: str, digest: str) -> Json | None:
    """The batch's first answer as it was: the same ids and the same per-item errors, not the
    notifications' current state (a batch answer holds no state, only what became of each item)."""
    async with runtime.sessions() as session:
        record = await _used_key(session, scope, key, digest, batch=True)
    return None if record is None else record.response


async def _used_key(
    session: AsyncSession, scope: str, key: str, digest: str, *, batch: bool
) -> IdempotencyKey | None:
    """The key's record, if it was used; ``IdempotencyMismatch`` if it was used for another
    body, or on the other endpoint (a single POST's key is not a batch's, nor the reverse)."""
    record = await IdempotencyRepository(session).get(scope, key)
    if record is None:
        return None
    if record.request_hash != digest or (record.response is not None) != batch:
        raise IdempotencyMismatch()
    return record


async def get(
    session: AsyncSession, notification_id: uuid.UUID, *, owner: str | None = None
) -> StoredNotification:
    notification = await NotificationRepository(session).get(notification_id, owner=owner)
    if notification is None:
        if await was_purged(await session.connection(), notification_id, owner):
            raise NotificationPurged(notification_id)
        raise NotificationNotFound(notification_id)
    return notification


async def wait_final(
    runtime: Runtime,
    notification_id: uuid.UUID,
    seconds: float,
    *,
    owner: str | None = None,
    key: str | None = None,
) -> tuple[StoredNotification, WaitEnd]:
    """The notification once it is final (``WaitEnd.FINAL``), else as it stands when
    ``seconds`` have passed (``TIMEOUT``), or at once when this process holds as many waiting
    requests as it may, or API key ``key`` does (``BUSY``). ``NotificationNotFound`` as ``get``.

    It does not poll: it reads the state once after registering its waiter (a change committed
    before then is seen), once each time it is woken (app/delivery/waiters.py), and once more
    if its time runs out. Each read has a session of its own, so no connection is held while
    it waits. A server shutting down ends the wait at once, as if its time had run out.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    with runtime.waiters.watch(notification_id, key) as woken:
        current = await _read(runtime, notification_id, owner)
        while current["status"] not in FINAL_STATUSES:
            if woken is None:
                return _waited(current, WaitEnd.BUSY)
            try:
                async with asyncio.timeout_at(deadline):
                    await woken.wait()
            except TimeoutError:
                return _waited(await _read(runtime, notification_id, owner), WaitEnd.TIMEOUT)
            woken.clear()
            current = await _read(runtime, notification_id, owner)
            if runtime.waiters.closing:
                return _waited(current, WaitEnd.TIMEOUT)
    return _waited(current, WaitEnd.FINAL)


async def _read(
    runtime: Runtime, notification_id: uuid.UUID, owner: str | None
) -> StoredNotification:
    async with runtime.sessions() as session:
        return await get(session, notification_id, owner=owner)


def _waited(notification: StoredNotification, end: WaitEnd) -> tuple[StoredNotification, WaitEnd]:
    if notification["status"] in FINAL_STATUSES:
        end = WaitEnd.FINAL  # it became final as the time ran out
    metrics.waits.labels(end).inc()
    return notification, end


async def list_page(
    session: AsyncSession, filters: ListFilter, *, limit: int, before: uuid.UUID | None = None
) -> tuple[Sequence[StoredNotification], uuid.UUID | None]:
    """Up to ``limit`` notifications, newest first, older than ``before`` (a page's cursor);
    and the cursor of the next page, ``None`` when this one is the last."""
    rows = await NotificationRepository(session).list(filters, limit=limit + 1, before_id=before)
    page = rows[:limit]
    return page, page[-1]["id"] if len(rows) > limit else None


async def count_by_status(
    session: AsyncSession, filters: ListFilter, *, limit: int
) -> dict[str, int]:
    """Per status, how many of the newest ``limit`` notifications matching ``filters`` (its
    ``status`` aside) have it."""
    return await NotificationRepository(session).count_by_status(filters, limit=limit)


BULK_LIMIT = 1000
"""The most notifications one bulk retry or cancel acts on; the rest wait for another call."""


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action did: how many it changed, how many changed under it first (a worker
    or another operator got there: skipped), and whether more matched than ``limit``."""

    done: int
    skipped: int
    truncated: bool


async def retry_matching(runtime: Runtime, filters: ListFilter, *, limit: int) -> BulkResult:
    """``retry`` every failed, expired or partial notification ``filters`` match (its
    ``status``, when given, must be one of those: else none matches), up to ``limit``."""
    return await _each_matching(runtime, filters, RETRYABLE, limit, retry)


async def cancel_matching(runtime: Runtime, filters: ListFilter, *, limit: int) -> BulkResult:
    """``cancel`` every pending notification ``filters`` match, up to ``limit``."""

    async def cancelled(
        runtime: Runtime, session: AsyncSession, notification_id: uuid.UUID, *, owner: str | None
    ) -> StoredNotification:
        done = await cancel(runtime, session, notification_id, owner=owner)
        runtime.announce_final(notification_id)
        return done

    return await _each_matching(runtime, filters, CANCELLABLE, limit, cancelled)


async def _each_matching(
    runtime: Runtime,
    filters: ListFilter,
    statuses: tuple[NotificationStatus, ...],
    limit: int,
    act: Callable[..., Awaitable[StoredNotification]],
) -> BulkResult:
    """``act`` on each notification of ``statuses`` that ``filters`` match, oldest first, each
    in a transaction of its own (a long bulk action holds no lock on the others)."""
    wanted = [s for s in statuses if filters.status is None or filters.status == s]
    found: list[uuid.UUID] = []
    async with runtime.sessions() as session:
        repository = NotificationRepository(session)
        for status in wanted:
            rows = await repository.list(
                replace(filters, status=status), limit=limit + 1 - len(found), before_id=None
            )
            found.extend(row["id"] for row in rows)
            if len(found) > limit:
                break
    truncated = len(found) > limit
    done = skipped = 0
    for notification_id in sorted(found[:limit]):
        async with runtime.sessions() as session:
            try:
                await act(runtime, session, notification_id, owner=filters.owner)
            except (InvalidTransition, NotificationNotFound):
                skipped += 1
            else:
                done += 1
    return BulkResult(done, skipped, truncated)


async def attempts(
    session: AsyncSession, notification_id: uuid.UUID, *, owner: str | None = None
) -> Sequence[ShownAttempt]:
    """A notification's attempts, oldest first, each with the receipt it shows (the
    furthest its provider reported); ``NotificationNotFound`` as ``get``."""
    await get(session, notification_id, owner=owner)
    stored = await NotificationRepository(session).attempts(notification_id)
    receipts = await ReceiptStore(session).of_attempts([attempt["id"] for attempt in stored])
    return [
        ShownAttempt(attempt, best_receipt(receipts.get(attempt["id"], ()))) for attempt in stored
    ]


async def cancel(
    runtime: Runtime,
    session: AsyncSession,
    notification_id: uuid.UUID,
    *,
    owner: str | None = None,
) -> StoredNotification:
    """Cancel a pending notification; its ``notification.cancelled`` is written in the same
    transaction."""
    current = await get(session, notification_id, owner=owner)
    if current["status"] not in CANCELLABLE:
        raise InvalidTransition("cancel", current["status"], CANCELLABLE)
    now = utcnow()
    hops = settle(_hops(current), NotificationStatus.CANCELLED)
    events = runtime.outbox.cancelled(current, hops, now)
    updated = await _transition(
        session,
        current,
        CANCELLABLE,
        "cancel",
        {
            "status": NotificationStatus.CANCELLED,
            "next_attempt_at": None,
            "hops": [hop.as_dict() for hop in hops],
            "updated_at": now,
        },
        events,
    )
    runtime.emitted(events)
    metrics.notifications_finished.labels(
        metrics.route_label(updated["route"]), NotificationStatus.CANCELLED
    ).inc()
    return updated


async def retry(
    runtime: Runtime,
    session: AsyncSession,
    notification_id: uuid.UUID,
    *,
    owner: str | None = None,
    from_hop: int | None = None,
) -> StoredNotification:
    """Re-queue a failed, expired or partial notification for a new set of rounds.

    Hops that delivered stay delivered (a partial broadcast is not sent twice); every other hop
    is tried again, permanent ones included, since an operator asked for it. With ``from_hop``
    (an index into the chain), the hops before it keep their state and are not tried again:
    the new rounds start at that hop. An expiry that has passed is moved to now plus the
    route's ttl (or cleared when the route has none).
    """
    current = await get(session, notification_id, owner=owner)
    if current["status"] not in RETRYABLE:
        raise InvalidTransition("retry", current["status"], RETRYABLE)
    chain = _hops(current)
    if from_hop is not None and not 0 <= from_hop < len(chain):
        raise Unprocessable(
            f"from_hop is {from_hop}, but the chain has {len(chain)} hops (0 to {len(chain) - 1})",
            errors=[{"loc": ["query", "from_hop"], "msg": f"at most {len(chain) - 1}"}],
        )
    now = utcnow()
    start = from_hop or 0
    hops = [
        hop
        if hop.state == HopState.DELIVERED or index < start
        else replace(hop, state=HopState.PENDING)
        for index, hop in enumerate(chain)
    ]
    values: dict[str, Any] = {
        "status": NotificationStatus.PENDING,
        "next_attempt_at": now,
        "round_base": current["round"],
        "trigger": AttemptTrigger.MANUAL,
        "hops": [hop.as_dict() for hop in hops],
        "updated_at": now,
    }
    if current["expires_at"] is not None and current["expires_at"] <= now:
        route = runtime.config.routes.get(current["route"]) if current["route"] else None
        ttl = route.ttl if route is not None else None
        values["expires_at"] = now + timedelta(seconds=ttl) if ttl else None
    await NotificationRepository(session).announce_due()
    updated = await _transition(session, current, RETRYABLE, "retry", values)
    runtime.wake_worker()
    return updated


ACK_SETTLE = 10.0
"""How long an acknowledgement of a notification a worker is sending waits for that round to
be saved before it answers (the acknowledgement is recorded at once; a worker that claims the
notification later finishes it)."""
ACK_POLL = 0.05
ACK_TRIES = 100
"""How many times an acknowledgement that lost a race (a claim, a save) reads the notification
again before it gives up."""


async def acknowledge(
    runtime: Runtime,
    notification_id: uuid.UUID,
    *,
    by: str,
    via: AckVia,
    owner: str | None = None,
) -> AckResult:
    """Acknowledge a notification: the one entry point for every way of doing it in a
    transaction of its own (the API, a signed link, ntfy's action; Telegram's button and
    ``/ack`` run ``acknowledge_step`` in the transaction that stores the update).

    ``by`` names who (an API key, an email address, a Telegram user); ``owner``, when given,
    limits it to that API key's notifications (others are ``not_found``). A ``pending`` or
    ``delivered`` notification becomes ``acknowledged`` at once, in one conditional UPDATE
    with its ``notification.acknowledged`` event, and a held hop's timer goes with it (the
    notification is no longer due). Two acknowledgements at once: one wins, the other answers
    ``already_acknowledged`` naming the winner. A notification a worker is sending right now
    (``delivering``) has the acknowledgement recorded at once, then becomes ``acknowledged``
    when that round is saved (or when a worker next claims it: ``Worker.deliver``); this waits
    up to ``ACK_SETTLE`` for that.
    """
    ours = acknowledgement(by, via)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + ACK_SETTLE
    recorded = False
    for _ in range(ACK_TRIES):
        async with runtime.sessions() as session:
            step = await acknowledge_step(
                runtime, session, notification_id, ours=ours, recorded=recorded, owner=owner
            )
            await session.commit()
        recorded = step.recorded
        if step.result is not None:
            return acknowledged(runtime, step)
        if recorded and step.current is not None:
            if loop.time() >= give_up:
                answer = AckResult(AckOutcome.ACKNOWLEDGED, step.current)
                return acknowledged(runtime, AckStep(answer, via))
            await asyncio.sleep(ACK_POLL)
    raise RuntimeError(f"acknowledging {notification_id} kept losing races")


def acknowledgement(by: str, via: AckVia) -> dict[str, Any]:
    """The columns an acknowledgement by ``by`` through ``via`` sets, now."""
    return {
        "acknowledged_at": utcnow(),
        "acknowledged_by": by[:ACK_BY_LIMIT],
        "acknowledged_via": via,
    }


@dataclass(frozen=True, slots=True)
class AckStep:
    """One try of an acknowledgement (``acknowledge_step``)."""

    result: AckResult | None
    """The answer, or ``None``: try again (a race lost, or a round being sent)."""
    via: AckVia
    recorded: bool = False
    """The acknowledgement is on the row of a notification a worker is sending."""
    current: StoredNotification | None = None
    events: OutboxRows | None = None
    finished_pending: bool = False
    """A ``pending`` notification became ``acknowledged`` (counted as finished)."""


async def acknowledge_step(
    runtime: Runtime,
    session: AsyncSession,
    notification_id: uuid.UUID,
    *,
    ours: dict[str, Any],
    recorded: bool = False,
    owner: str | None = None,
) -> AckStep:
    """One try at acknowledging in ``session``, which the caller commits (then
    ``acknowledged``). ``recorded``: an earlier try recorded it on a ``delivering`` row."""
    via = ours["acknowledged_via"]
    repository = NotificationRepository(session)
    current = await repository.get(notification_id, owner=owner)
    if current is None:
        return AckStep(AckResult(AckOutcome.NOT_FOUND), via)
    status = current["status"]
    if current["acknowledged_at"] is not None and not recorded:
        return AckStep(AckResult(AckOutcome.ALREADY_ACKNOWLEDGED, current), via)
    if recorded and status == NotificationStatus.ACKNOWLEDGED:
        return AckStep(AckResult(AckOutcome.ACKNOWLEDGED, current), via)  # a worker finished it
    if status not in ACKABLE:
        return AckStep(AckResult(AckOutcome.NOT_ACKABLE, current), via)
    if status == NotificationStatus.DELIVERING:
        recorded = (
            recorded
            or await repository.transition(
                notification_id,
                from_statuses=(NotificationStatus.DELIVERING,),
                values=ours,
                unacknowledged=True,
            )
            is not None
        )
        return AckStep(None, via, recorded=recorded, current=current if recorded else None)
    now = ours["acknowledged_at"]
    hops = settle(_hops(current), NotificationStatus.ACKNOWLEDGED)
    data = acknowledgement_data(now, ours["acknowledged_by"], via)
    events = runtime.outbox.acknowledged(current, hops, data, now)
    updated = await repository.transition(
        notification_id,
        from_statuses=(NotificationStatus.PENDING, NotificationStatus.DELIVERED),
        values={
            **ours,
            "status": NotificationStatus.ACKNOWLEDGED,
            "next_attempt_at": None,
            "hops": [hop.as_dict() for hop in hops],
            "updated_at": now,
        },
        unacknowledged=not recorded,
        unchanged_since=current["updated_at"],
    )
    if updated is None:  # claimed, saved or acknowledged meanwhile: read it again
        return AckStep(None, via, recorded=recorded)
    await write_events(session, events)
    return AckStep(
        AckResult(AckOutcome.ACKNOWLEDGED, updated),
        via,
        events=events,
        finished_pending=status == NotificationStatus.PENDING,
    )


def acknowledged(runtime: Runtime, step: AckStep) -> AckResult:
    """After the transaction of an answered ``acknowledge_step`` committed: its events sent,
    its waiters told, counted; its answer."""
    assert step.result is not None
    if step.events is not None:
        runtime.emitted(step.events)
        notification = step.result.notification
        assert notification is not None
        if step.finished_pending:
            metrics.notifications_finished.labels(
                metrics.route_label(notification["route"]), NotificationStatus.ACKNOWLEDGED
            ).inc()
        runtime.announce_final(notification["id"])
    metrics.acks.labels(step.via, step.result.outcome).inc()
    return step.result


def _hops(notification: StoredNotification) -> list[Hop]:
    return [Hop.from_dict(hop) for hop in notification["hops"]]


async def _transition(
    session: AsyncSession,
    current: StoredNotification,
    allowed: tuple[str, ...],
    action: str,
    values: dict[str, Any],
    events: OutboxRows | None = None,
) -> StoredNotification:
    """Change ``current`` if it is still in an ``allowed`` status, with the outbox's rows of
    the ``events`` the change causes, and commit."""
    updated = await NotificationRepository(session).transition(
        current["id"], from_statuses=allowed, values=values
    )
    if updated is None:
        # A worker claimed it between our read and our update.
        await session.rollback()
        latest = await get(session, current["id"])
        raise InvalidTransition(action, latest["status"], allowed)
    await write_events(session, events)
    await session.commit()
    return updated


# --- readiness and metrics ------------------------------------------------------------------


async def not_ready(runtime: Runtime) -> str | None:
    """Why this process cannot serve (its database unreachable or not migrated); ``None`` when
    it can."""
    try:
        revision = await current_revision(runtime.engine)
    except (DBAPIError, OSError) as exc:
        return f"database unreachable: {brief(exc)}"
    expected = head_revision()
    if revision != expected:
        return (
            f"database at migration {revision or 'none'}, expected {expected}: run herald migrate"
        )
    return None


async def queue_state(runtime: Runtime) -> tuple[dict[str, int], datetime | None] | None:
    """How many notifications there are of each status, and the earliest time a pending one is
    due; ``None`` when the database cannot be read."""
    try:
        async with runtime.sessions() as session:
            repository = NotificationRepository(session)
            return await repository.queue_depth(), await repository.oldest_due()
    except (DBAPIError, OSError):
        return None
