"""``/v1/notifications``: accept, read, list, cancel and retry notifications."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.types import Message, Receive, Scope, Send

from app import service
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
from app.api.problems import AUTH_ERRORS, error_responses, problem_of, validation_errors
from app.api.schemas import (
    AttemptList,
    AttemptOut,
    BatchItemResult,
    BatchResult,
    NotificationBatch,
    NotificationCreate,
    NotificationDetail,
    NotificationOut,
    NotificationPage,
)
from app.domain import ListFilter, NotificationStatus, StoredNotification
from app.errors import HeraldError, Unprocessable
from app.security.auth import Principal

router = APIRouter(prefix="/v1/notifications", tags=["notifications"], route_class=JSONBodyRoute)

IDEMPOTENCY_KEY_LIMIT = 255

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
            "description": "Replay of an earlier request with the same Idempotency-Key.",
            "headers": REPLAYED_HEADER,
        },
        **error_responses(413, 415, 422, 503),
        **AUTH_ERRORS,
    },
)
async def create_notification(
    body: NotificationCreate,
    principal: SendScope,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """It belongs to the calling API key, which also scopes its Idempotency-Key."""
    return await _accept(request, body, principal, idempotency_key)


async def _accept(
    request: Request,
    body: NotificationCreate,
    principal: Principal | None,
    idempotency_key: str | None,
) -> Response:
    stored, replayed = await service.accept(
        runtime_of(request),
        body,
        idempotency_key=idempotency_key,
        digest=body_hash(body.model_dump(mode="json")) if idempotency_key else "",
        owner=principal.name if principal else None,
    )
    detail = detail_of(stored)
    headers = {"Location": location_of(detail.id)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        detail.model_dump_json(),
        status_code=200 if replayed else 202,
        headers=headers,
        media_type="application/json",
    )


FAST_ROAD_PARAMETERS: dict[str, tuple[Any, Any]] = {
    "body": (NotificationCreate, inspect.Parameter.empty),
    "principal": (SendScope, inspect.Parameter.empty),
    "request": (Request, inspect.Parameter.empty),
    "idempotency_key": (IdempotencyKeyHeader, None),
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

    FastAPI's routing, dependency solving and response handling were a large share of the API's
    CPU per accept (bench/results/levers.md, "`FastAccept`: plain Starlette route"). This plain
    Starlette route sits in front of ``create_notification`` and serves a request only when it
    is one FastAPI would accept: a JSON body (``application/json``) that ``NotificationCreate``
    validates and an ``Idempotency-Key`` of at most 255 characters. It checks them in FastAPI's
    order (the body is parsed before the caller is authorized, and validated after), and
    anything else is handed, body and all, to ``create_notification``'s FastAPI route, which
    answers exactly as it always did. The work itself is ``_accept``, shared by both roads.

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
        self.authorize = Authorizer("send")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # as FastAPI sets it: the path template for metrics
        request = Request(scope, receive)
        raw = await request.body()
        body = _valid_body(request, raw)
        if body is not None:
            principal = await self.authorize(request)
            key = request.headers.get("idempotency-key")
            if key is None or len(key) <= IDEMPOTENCY_KEY_LIMIT:
                response = await _accept(request, body, principal, key)
                await response(scope, receive, send)
                return
        await self.route.handle(scope, _body_first(raw, receive), send)


def _valid_body(request: Request, raw: bytes) -> NotificationCreate | None:
    try:
        return NotificationCreate.model_validate(
            read_json(request.headers.get("content-type"), raw)
        )
    except (HeraldError, ValidationError):  # the FastAPI route reads it again, and answers
        return None


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
    status: NotificationStatus | None = None,
    route: Annotated[str | None, Query(max_length=64)] = None,
    channel: Annotated[
        str | None, Query(max_length=64, description="Notifications whose chain has it.")
    ] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=64, description="next_cursor of a page.")
    ] = None,
) -> NotificationPage:
    """Only the caller's own notifications, unless its key has the admin scope."""
    before_id = None
    if cursor is not None:
        try:
            before_id = uuid.UUID(cursor)
        except ValueError:
            raise Unprocessable(
                "cursor is not one this API gave out",
                errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
            ) from None
    for name, value in (("route", route), ("channel", channel)):
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise Unprocessable(
                f"{name} must not contain NUL characters",
                errors=[{"loc": ["query", name], "msg": "must not contain NUL characters"}],
            )
    filters = ListFilter(
        status=status,
        route=route,
        channel=channel,
        created_after=_aware(created_after, "created_after"),
        created_before=_aware(created_before, "created_before"),
        owner=owner_filter(principal),
    )
    page, next_id = await service.list_page(session, filters, limit=limit, before=before_id)
    return NotificationPage(
        items=[NotificationOut.model_validate(notification) for notification in page],
        next_cursor=str(next_id) if next_id is not None else None,
    )


@router.get(
    "/{notification_id}",
    operation_id="get_notification",
    response_model=NotificationDetail,
    summary="A notification's status, hops and last error",
    responses=error_responses(404, 422, 503) | AUTH_ERRORS,
)
async def get_notification(
    notification_id: uuid.UUID, principal: ReadScope, session: SessionDep
) -> NotificationDetail:
    """Another API key's notification is 404 unless the caller's key has the admin scope."""
    return detail_of(await service.get(session, notification_id, owner=owner_filter(principal)))


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
    return AttemptList(items=[AttemptOut.model_validate(attempt) for attempt in attempts])


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
    return detail_of(await service.cancel(runtime, session, notification_id, owner=owner))


@router.post(
    "/{notification_id}/retry",
    operation_id="retry_notification",
    response_model=NotificationDetail,
    summary="Re-queue a failed, expired or partial notification",
    responses=error_responses(404, 409, 422, 503) | AUTH_ERRORS,
)
async def retry_notification(
    notification_id: uuid.UUID, principal: AdminScope, runtime: RuntimeDep, session: SessionDep
) -> NotificationDetail:
    owner = owner_filter(principal)
    return detail_of(await service.retry(runtime, session, notification_id, owner=owner))


def _aware(value: datetime | None, name: str) -> datetime | None:
    """The time in UTC (a time without a zone is read as UTC); 422 past year 9999 in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Unprocessable(
            f"{name} is out of range",
            errors=[{"loc": ["query", name], "msg": "out of range in UTC"}],
        ) from None
