"""``/v1/notifications``: accept, read, list, cancel and retry notifications."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import to_json
from starlette._utils import get_route_path
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import service
from app.api import problems
from app.api.body import JSONBodyRoute, body_hash, read_json
from app.api.deps import (
    AdminScope,
    Authorizer,
    ReadScope,
    RuntimeDep,
    SendScope,
    SessionDep,
    owner_filter,
    runtime_of,
)
from app.api.paging import Cursor, Limit, aware, cursor_id
from app.api.problems import AUTH_ERRORS, error_responses, problem_of, validation_errors
from app.api.schemas import (
    AttemptList,
    AttemptOut,
    BatchItemResult,
    BatchResult,
    BulkRetryResult,
    NotificationBatch,
    NotificationCreate,
    NotificationDetail,
    NotificationOut,
    NotificationPage,
    new_detail_json,
)
from app.domain import (
    ACK_BY_LIMIT,
    ACKABLE,
    WAIT_LIMIT,
    AckOutcome,
    AckResult,
    AckVia,
    Admission,
    ListFilter,
    NotificationStatus,
    StoredNotification,
    WaitEnd,
)
from app.durations import format_duration, parse_duration
from app.errors import (
    AlreadyAcknowledged,
    HeraldError,
    InvalidTransition,
    NotificationNotFound,
    Unprocessable,
)
from app.events.body import receipt_data
from app.security.auth import Principal

router = APIRouter(prefix="/v1/notifications", tags=["notifications"], route_class=JSONBodyRoute)

IDEMPOTENCY_KEY_LIMIT = 255
T = TypeVar("T")

REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "Present, as true, when this answers a replayed Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=IDEMPOTENCY_KEY_LIMIT,
        description="Same key and same body within 24 h return the original notification.",
    ),
]


BatchIdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=IDEMPOTENCY_KEY_LIMIT,
        description=(
            "Same key and same body within 24 h return the first answer again (the same ids "
            "and per-item errors, nothing stored twice), with Idempotent-Replayed: true. Same "
            "key, different body (or a key used by POST /v1/notifications): 422."
        ),
    ),
]


DEDUPLICATED = "Herald-Deduplicated"
DEDUPLICATED_HEADER = {
    DEDUPLICATED: {
        "description": (
            "Present, as true, when the request repeated a dedup_key within its route's "
            "window: nothing new was stored; the body is the key's notification (with the "
            "repeat counted in occurrences, in collapse mode)."
        ),
        "schema": {"type": "string", "enum": ["true"]},
    }
}

WAIT_HEADER = "Herald-Wait"
WAITED_HEADER = {
    WAIT_HEADER: {
        "description": (
            "Present when the request asked to wait and the notification is not final: "
            "timeout, the wait ran out; busy, this server (or the API key) already holds as "
            "many waiting requests as it may, so it answered at once."
        ),
        "schema": {"type": "string", "enum": [WaitEnd.TIMEOUT, WaitEnd.BUSY]},
    }
}


def wait_seconds(value: object) -> float:
    """Seconds of a ``wait``: a duration (``500ms``, ``10s``, a number of seconds), at most
    ``WAIT_LIMIT``; ``ValueError`` otherwise."""
    most = format_duration(WAIT_LIMIT)
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(
            f"invalid wait {value!r}: use a duration such as 500ms or 10s, or a number of "
            f"seconds, at most {most}"
        ) from None
    if seconds > WAIT_LIMIT:
        raise ValueError(f"wait is at most {most}")
    return seconds


WaitSeconds = Annotated[
    float | None,
    BeforeValidator(wait_seconds),
    WithJsonSchema({"type": "string", "examples": ["10s"]}),
]
WaitQuery = Annotated[
    WaitSeconds,
    Query(
        description=(
            "Hold the answer until the notification is final (delivered, failed, partial, "
            "expired or cancelled), for at most this long: a duration such as 500ms or 10s, "
            f"or a number of seconds; at most {format_duration(WAIT_LIMIT)}. The answer is "
            f"the notification as it then stands, with {WAIT_HEADER}: timeout when the wait "
            "ran out first."
        ),
    ),
]
_WAIT = TypeAdapter(WaitSeconds)


def detail_of(notification: StoredNotification) -> NotificationDetail:
    return NotificationDetail.model_validate(notification)


def location_of(notification_id: uuid.UUID) -> str:
    return f"/v1/notifications/{notification_id}"


@router.post(
    "",
    operation_id="create_notification",
    status_code=status.HTTP_202_ACCEPTED,
    response_description="Accepted: stored and queued for delivery.",
    response_model=NotificationDetail,
    summary="Accept a notification for delivery",
    responses={
        200: {
            "model": NotificationDetail,
            "description": "Replay of an earlier request with the same Idempotency-Key, or a "
            "repeat of a dedup_key within its route's window (the key's notification).",
            "headers": REPLAYED_HEADER | DEDUPLICATED_HEADER | WAITED_HEADER,
        },
        202: {"headers": WAITED_HEADER},
        **error_responses(413, 415, 422, 503),
        **AUTH_ERRORS,
    },
)
async def create_notification(
    body: NotificationCreate,
    principal: SendScope,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
    wait: WaitQuery = None,
) -> Response:
    """It belongs to the calling API key, which also scopes its Idempotency-Key."""
    return await _accept(request, body, principal, idempotency_key, wait)


async def _accept(
    request: Request,
    body: NotificationCreate,
    principal: Principal | None,
    idempotency_key: str | None,
    wait: float | None,
) -> Response:
    runtime = runtime_of(request)
    stored, admission = await service.accept(
        runtime,
        body,
        idempotency_key=idempotency_key,
        digest=body_hash(body.model_dump(mode="json")) if idempotency_key else "",
        owner=principal.name if principal else None,
    )
    headers = {"Location": location_of(stored["id"])}
    if admission is Admission.REPLAYED:
        headers["Idempotent-Replayed"] = "true"
    elif admission is Admission.DEDUPLICATED:
        headers[DEDUPLICATED] = "true"
    if wait:
        stored, end = await _held(
            request, service.wait_final(runtime, stored["id"], wait, key=_key(principal))
        )
        if end is not WaitEnd.FINAL:
            headers[WAIT_HEADER] = end
    fresh = admission is Admission.STORED and not wait  # the row just made, not one read back
    return Response(
        new_detail_json(stored) if fresh else detail_of(stored).model_dump_json(),
        status_code=202 if admission is Admission.STORED else 200,
        headers=headers,
        media_type="application/json",
    )


FAST_ROAD_PARAMETERS: dict[str, tuple[Any, Any]] = {
    "body": (NotificationCreate, inspect.Parameter.empty),
    "principal": (SendScope, inspect.Parameter.empty),
    "request": (Request, inspect.Parameter.empty),
    "idempotency_key": (IdempotencyKeyHeader, None),
    "wait": (WaitQuery, None),
}
"""What ``FastAccept`` replicates of ``create_notification``: each parameter's annotation (the
very ``Annotated`` alias, so a changed scope or header limit counts too) and default."""


def check_fast_road(route: APIRoute) -> None:
    """Refuse (``RuntimeError``, at start-up) a route whose endpoint takes what ``FastAccept``
    does not replicate, or no longer takes what it does: the two roads would answer differently.
    """
    name = route.endpoint.__name__
    given = inspect.signature(route.endpoint, eval_str=True).parameters
    for parameter in given.values():
        if FAST_ROAD_PARAMETERS.get(parameter.name) != (parameter.annotation, parameter.default):
            raise RuntimeError(
                f"{name} takes parameter {parameter.name!r} as FastAccept does not: teach "
                "FastAccept (app/api/notifications.py) to do what it does, then add it to "
                "FAST_ROAD_PARAMETERS"
            )
    missing = sorted(FAST_ROAD_PARAMETERS.keys() - given.keys())
    if missing:
        raise RuntimeError(
            f"{name} no longer takes parameter {missing[0]!r}, which FastAccept still acts on"
        )
    if route.dependencies:
        raise RuntimeError(f"{name} has route dependencies, which FastAccept does not run")


class FastAccept:
    """``POST /v1/notifications`` by a shorter road than FastAPI's, for requests that are fine.

    FastAPI's routing, dependency solving and response handling, then the middleware and
    routing the app runs before any route, were a large share of the API's CPU per accept
    (bench/results/levers.md, "`FastAccept`"). ``Edge``, the app's outermost layer of Herald's
    own, hands this road every request it ``serves`` (``POST /v1/notifications``) and the app
    behind it, and the road answers a request only when it is one FastAPI would accept: a JSON
    body (``application/json``) that ``NotificationCreate`` validates, an ``Idempotency-Key``
    of at most 255 characters, and no ``wait`` query parameter or one that ``WaitSeconds``
    validates. It checks them in FastAPI's order (the body is parsed before the caller is
    authorized, and validated after), and anything else goes on to the app, body and all,
    where ``create_notification``'s FastAPI route answers exactly as it always did. The work
    itself is ``_accept``, shared by both roads; an error raised on the way is answered by the
    app's own exception handlers (``problems.answer``).

    Built when the app is (``create_app``), it refuses to start if ``create_notification``
    takes a parameter it does not replicate (``check_fast_road``).
    """

    def __init__(self) -> None:
        self.route = next(
            route
            for route in router.routes
            if isinstance(route, APIRoute) and route.endpoint is create_notification
        )
        check_fast_road(self.route)
        self.path = self.route.path
        self.authorize = Authorizer("send")

    def serves(self, scope: Scope) -> bool:
        """Whether the request is the route's (its path and method, as the app's router
        matches them)."""
        return scope["method"] == "POST" and get_route_path(scope) == self.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        scope["route"] = self.route  # as FastAPI sets it: the path template for metrics
        request = Request(scope, receive)
        try:
            raw = await request.body()
            response = await self._answer(request, raw)
        except Exception as exc:
            response = await problems.answer(request, exc)
        if response is None:
            await app(scope, _body_first(raw, receive), send)
        else:
            await response(scope, receive, send)

    async def _answer(self, request: Request, raw: bytes) -> Response | None:
        """The answer to a request FastAPI would accept; ``None`` for any other."""
        body = _valid_body(request, raw)
        if body is None:
            return None
        principal = await self.authorize(request)
        key = request.headers.get("idempotency-key")
        valid, wait = _valid_wait(request)
        if not valid or (key is not None and len(key) > IDEMPOTENCY_KEY_LIMIT):
            return None
        return await _accept(request, body, principal, key, wait)


def _valid_body(request: Request, raw: bytes) -> NotificationCreate | None:
    try:
        return NotificationCreate.model_validate(
            read_json(request.headers.get("content-type"), raw)
        )
    except (HeraldError, ValidationError):  # the FastAPI route reads it again, and answers
        return None


def _valid_wait(request: Request) -> tuple[bool, float | None]:
    """Whether the request's ``wait`` is one FastAPI would take, and its seconds."""
    if not request.scope["query_string"]:
        return True, None
    raw = request.query_params.get("wait")
    if raw is None:
        return True, None
    try:
        return True, _WAIT.validate_python(raw)
    except ValidationError:  # the FastAPI route reads it again, and answers
        return False, None


def _key(principal: Principal | None) -> str | None:
    """The API key a waiting request counts against."""
    return principal.name if principal else None


async def _held(request: Request, waiting: Coroutine[Any, Any, T]) -> T:
    """What ``waiting`` returns; ``ClientDisconnect`` (counted as status 499) when the client
    hangs up first, which ends the wait and frees its place."""
    wait = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait((wait, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        wait.cancel()  # no-op when it is done
        gone.cancel()
    if wait in done:
        return wait.result()
    with contextlib.suppress(asyncio.CancelledError):
        await wait
    raise ClientDisconnect()


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (the request's body, if any, was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _body_first(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a request whose body was read already: the body, then the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


@router.post(
    "/batch",
    operation_id="create_notifications_batch",
    status_code=207,
    response_model=BatchResult,
    response_description="A result per item: 202 with its id, or its problem.",
    summary="Accept up to 500 notifications in one transaction",
    description=(
        "Every valid item is stored in one transaction; an invalid one is reported in its "
        "place and stored nowhere. An Idempotency-Key covers the whole batch: a retry with the "
        "same key and body answers the first answer again, so a batch whose answer was lost "
        "can be resent whole. Without a key, resend only the failed items."
    ),
    responses={207: {"headers": REPLAYED_HEADER}}
    | error_responses(413, 415, 422, 503)
    | AUTH_ERRORS,
)
async def create_notifications_batch(
    body: NotificationBatch,
    principal: SendScope,
    request: Request,
    idempotency_key: BatchIdempotencyKeyHeader = None,
) -> Response:
    parsed: list[NotificationCreate | HeraldError] = []
    for index, raw in enumerate(body.items):
        try:
            parsed.append(NotificationCreate.model_validate(raw))
        except ValidationError as exc:
            errors = [
                {**e, "loc": ["body", "items", index, *e["loc"]]}
                for e in validation_errors(exc.errors())
            ]
            parsed.append(
                Unprocessable(f"item {index} is invalid: {errors[0]['msg']}", errors=errors)
            )
    answer, replayed = await service.accept_batch(
        runtime_of(request),
        parsed,
        batch_answer,
        owner=principal.name if principal else None,
        idempotency_key=idempotency_key,
        digest=body_hash(body.items) if idempotency_key else "",
    )
    return Response(
        to_json(answer),
        status_code=207,
        headers={"Idempotent-Replayed": "true"} if replayed else None,
        media_type="application/json",
    )


def batch_answer(outcomes: Sequence[service.Outcome]) -> dict[str, Any]:
    """The 207 body, as JSON values: each item's id, or its problem, in the request's order."""
    items = [
        BatchItemResult(index=index, status=outcome.status, error=problem_of(outcome))
        if isinstance(outcome, HeraldError)
        else BatchItemResult(index=index, status=202, id=outcome, location=location_of(outcome))
        for index, outcome in enumerate(outcomes)
    ]
    accepted = sum(1 for item in items if item.status == 202)
    result = BatchResult(accepted=accepted, rejected=len(items) - accepted, items=items)
    return result.model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The list's filters as a request gives them (GET /v1/notifications and the bulk retry)."""

    status: NotificationStatus | None
    route: str | None
    channel: str | None
    created_after: datetime | None
    created_before: datetime | None


def list_query(
    status: NotificationStatus | None = None,
    route: Annotated[str | None, Query(max_length=64)] = None,
    channel: Annotated[
        str | None, Query(max_length=64, description="Notifications whose chain has it.")
    ] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> ListQuery:
    return ListQuery(status, route, channel, created_after, created_before)


ListQueryDep = Annotated[ListQuery, Depends(list_query)]


@router.get(
    "",
    operation_id="list_notifications",
    response_model=NotificationPage,
    summary="List notifications, newest first",
    responses=error_responses(422, 503) | AUTH_ERRORS,
)
async def list_notifications(
    principal: ReadScope,
    session: SessionDep,
    query: ListQueryDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> NotificationPage:
    """Only the caller's own notifications, unless its key has the admin scope."""
    before_id = cursor_id(cursor)
    filters = _filters(principal, query)
    page, next_id = await service.list_page(session, filters, limit=limit, before=before_id)
    return NotificationPage(
        items=[NotificationOut.model_validate(notification) for notification in page],
        next_cursor=str(next_id) if next_id is not None else None,
    )


def _filters(principal: Principal | None, query: ListQuery) -> ListFilter:
    for name, value in (("route", query.route), ("channel", query.channel)):
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise Unprocessable(
                f"{name} must not contain NUL characters",
                errors=[{"loc": ["query", name], "msg": "must not contain NUL characters"}],
            )
    return ListFilter(
        status=query.status,
        route=query.route,
        channel=query.channel,
        created_after=aware(query.created_after, "created_after"),
        created_before=aware(query.created_before, "created_before"),
        owner=owner_filter(principal),
    )


@router.post(
    "/retry",
    operation_id="retry_notifications",
    response_model=BulkRetryResult,
    summary="Re-queue every failed, expired or partial notification a filter matches",
    description=(
        "The list's filters (as GET /v1/notifications takes them) choose the notifications; "
        "each failed, expired or partial one among them (only those of status, when given) "
        "is retried as POST /v1/notifications/{id}/retry does, each in its own transaction, "
        f"at most limit of them (at most {service.BULK_LIMIT}). The answer counts them, and "
        "says when more matched."
    ),
    responses=error_responses(422, 503) | AUTH_ERRORS,
)
async def retry_notifications(
    principal: AdminScope,
    runtime: RuntimeDep,
    query: ListQueryDep,
    limit: Annotated[int, Query(ge=1, le=service.BULK_LIMIT)] = service.BULK_LIMIT,
) -> BulkRetryResult:
    filters = _filters(principal, query)
    result = await service.retry_matching(runtime, filters, limit=limit)
    return BulkRetryResult(retried=result.done, skipped=result.skipped, truncated=result.truncated)


@router.get(
    "/{notification_id}",
    operation_id="get_notification",
    response_model=NotificationDetail,
    summary="A notification's status, hops and last error",
    responses={200: {"headers": WAITED_HEADER}} | error_responses(404, 422, 503) | AUTH_ERRORS,
)
async def get_notification(
    notification_id: uuid.UUID,
    principal: ReadScope,
    session: SessionDep,
    request: Request,
    response: Response,
    wait: WaitQuery = None,
) -> NotificationDetail:
    """Another API key's notification is 404 unless the caller's key has the admin scope."""
    owner = owner_filter(principal)
    if not wait:
        return detail_of(await service.get(session, notification_id, owner=owner))
    stored, end = await _held(
        request,
        service.wait_final(
            runtime_of(request), notification_id, wait, owner=owner, key=_key(principal)
        ),
    )
    if end is not WaitEnd.FINAL:
        response.headers[WAIT_HEADER] = end
    return detail_of(stored)


@router.get(
    "/{notification_id}/attempts",
    operation_id="list_attempts",
    response_model=AttemptList,
    summary="Every attempt made for a notification, oldest first",
    responses=error_responses(404, 422, 503) | AUTH_ERRORS,
)
async def list_attempts(
    notification_id: uuid.UUID, principal: ReadScope, session: SessionDep
) -> AttemptList:
    """Another API key's notification is 404 unless the caller's key has the admin scope."""
    attempts = await service.attempts(session, notification_id, owner=owner_filter(principal))
    return AttemptList(items=[attempt_out(shown) for shown in attempts])


def attempt_out(shown: service.ShownAttempt) -> AttemptOut:
    """An attempt as the attempts resource (and the console's timeline) shows it."""
    receipt = None if shown.receipt is None else receipt_data(shown.receipt)
    return AttemptOut.model_validate({**shown.stored, "receipt": receipt})


@router.post(
    "/{notification_id}/cancel",
    operation_id="cancel_notification",
    response_model=NotificationDetail,
    summary="Cancel a pending notification",
    responses=error_responses(404, 409, 422, 503) | AUTH_ERRORS,
)
async def cancel_notification(
    notification_id: uuid.UUID, principal: AdminScope, runtime: RuntimeDep, session: SessionDep
) -> NotificationDetail:
    owner = owner_filter(principal)
    cancelled = await service.cancel(runtime, session, notification_id, owner=owner)
    runtime.announce_final(notification_id)
    return detail_of(cancelled)


@router.post(
    "/{notification_id}/retry",
    operation_id="retry_notification",
    response_model=NotificationDetail,
    summary="Re-queue a failed, expired or partial notification",
    responses=error_responses(404, 409, 422, 503) | AUTH_ERRORS,
)
async def retry_notification(
    notification_id: uuid.UUID,
    principal: AdminScope,
    runtime: RuntimeDep,
    session: SessionDep,
    from_hop: Annotated[
        int | None,
        Query(
            ge=0,
            description="Start at this hop of the chain (0 is the first): the hops before it "
            "are not tried again. Default: every hop that did not deliver.",
        ),
    ] = None,
) -> NotificationDetail:
    owner = owner_filter(principal)
    return detail_of(
        await service.retry(runtime, session, notification_id, owner=owner, from_hop=from_hop)
    )


class AckRequest(BaseModel):
    """Who acknowledges, if not the calling API key itself."""

    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(
        default=None,
        min_length=1,
        max_length=ACK_BY_LIMIT,
        description="The person acknowledging (say, the user of a chat bot that calls Herald). "
        "Default: the API key's name.",
    )


@router.post(
    "/{notification_id}/ack",
    operation_id="acknowledge_notification",
    response_model=NotificationDetail,
    summary="Acknowledge a notification (stops an escalation)",
    description=(
        "A person says they got it: the notification becomes acknowledged, with who, when "
        "and how, and an escalation sends nothing more. Needs the send scope of the key that "
        "owns it, or admin. Acknowledging one that someone acknowledged first answers 409 "
        "with the problem type urn:herald:problem:already-acknowledged, naming who did; one "
        "that ended otherwise (failed, expired, partial, cancelled) answers 409 conflict."
    ),
    responses=error_responses(404, 409, 422, 503) | AUTH_ERRORS,
)
async def acknowledge_notification(
    notification_id: uuid.UUID,
    principal: SendScope,
    runtime: RuntimeDep,
    body: AckRequest | None = None,
) -> NotificationDetail:
    by = (body.by if body is not None else None) or (principal.name if principal else "api")
    result = await service.acknowledge(
        runtime, notification_id, by=by, via=AckVia.API, owner=owner_filter(principal)
    )
    return detail_of(acknowledged_or_raise(notification_id, result))


def acknowledged_or_raise(notification_id: uuid.UUID, result: AckResult) -> StoredNotification:
    """The notification an acknowledgement acted on; the error that says why it did not."""
    notification = result.notification
    if result.outcome is AckOutcome.NOT_FOUND or notification is None:
        raise NotificationNotFound(notification_id)
    if result.outcome is AckOutcome.ALREADY_ACKNOWLEDGED:
        raise AlreadyAcknowledged(
            notification["acknowledged_by"],
            notification["acknowledged_via"],
            notification["acknowledged_at"],
        )
    if result.outcome is AckOutcome.NOT_ACKABLE:
        raise InvalidTransition("acknowledge", notification["status"], ACKABLE)
    return notification
