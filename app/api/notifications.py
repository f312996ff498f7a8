"""``/v1/notifications``: accept, read, list, cancel and retry notifications."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse

from app import service
from app.api.deps import RuntimeDep, SessionDep
from app.api.problems import error_responses
from app.api.schemas import (
    AttemptList,
    AttemptOut,
    ErrorInfo,
    NotificationCreate,
    NotificationDetail,
    NotificationOut,
    NotificationPage,
    Status,
)
from app.errors import Unprocessable
from app.store.models import Attempt, Notification
from app.store.repositories import ListFilter, NotificationRepository

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same key and same body within 24 h return the original notification.",
    ),
]


def notification_fields(notification: Notification) -> dict[str, Any]:
    return {
        "id": notification.id,
        "status": notification.status,
        "route": notification.route,
        "strategy": notification.strategy,
        "channels": notification.channels,
        "recipient": notification.recipient,
        "subject": notification.subject,
        "severity": notification.severity,
        "source": notification.source,
        "metadata": notification.metadata_,
        "round": notification.round,
        "attempt_count": notification.attempt_count,
        "delivered_via": notification.delivered_via,
        "delivered_at": notification.delivered_at,
        "next_attempt_at": notification.next_attempt_at,
        "last_error": notification.last_error,
        "hops": notification.hops,
        "send_at": notification.send_at,
        "expires_at": notification.expires_at,
        "created_at": notification.created_at,
        "updated_at": notification.updated_at,
    }


def detail_of(notification: Notification) -> NotificationDetail:
    return NotificationDetail.model_validate(
        notification_fields(notification) | {"text": notification.text, "html": notification.html}
    )


def attempt_of(attempt: Attempt) -> AttemptOut:
    error = (
        ErrorInfo.model_validate(
            {
                "class": attempt.error_class,
                "code": attempt.error_code,
                "message": attempt.error_message,
            }
        )
        if attempt.error_class
        else None
    )
    return AttemptOut(
        id=attempt.id,
        notification_id=attempt.notification_id,
        channel=attempt.channel,
        channel_type=attempt.channel_type,
        round=attempt.round,
        hop=attempt.hop,
        trigger=attempt.trigger,
        outcome=attempt.outcome,
        error=error,
        provider_status=attempt.provider_status,
        provider_message_id=attempt.provider_message_id,
        response_excerpt=attempt.response_excerpt,
        started_at=attempt.started_at,
        duration_ms=attempt.duration_ms,
    )


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
        },
        **error_responses(413, 422, 503),
    },
)
async def create_notification(
    body: NotificationCreate,
    runtime: RuntimeDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    notification, replayed = await service.accept(
        runtime, session, body, idempotency_key=idempotency_key
    )
    headers = {"Location": f"/v1/notifications/{notification.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        detail_of(notification).model_dump(mode="json"),
        status_code=200 if replayed else 202,
        headers=headers,
    )


@router.get(
    "",
    operation_id="list_notifications",
    response_model=NotificationPage,
    summary="List notifications, newest first",
    responses=error_responses(422, 503),
)
async def list_notifications(
    session: SessionDep,
    status: Status | None = None,
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
    before_id = None
    if cursor is not None:
        try:
            before_id = uuid.UUID(cursor)
        except ValueError:
            raise Unprocessable(
                "cursor is not one this API gave out",
                errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
            ) from None
    filters = ListFilter(
        status=status,
        route=route,
        channel=channel,
        created_after=_aware(created_after),
        created_before=_aware(created_before),
    )
    rows = await NotificationRepository(session).list(filters, limit=limit + 1, before_id=before_id)
    page = rows[:limit]
    return NotificationPage(
        items=[NotificationOut.model_validate(notification_fields(n)) for n in page],
        next_cursor=str(page[-1].id) if len(rows) > limit else None,
    )


@router.get(
    "/{notification_id}",
    operation_id="get_notification",
    response_model=NotificationDetail,
    summary="A notification's status, hops and last error",
    responses=error_responses(404, 422, 503),
)
async def get_notification(notification_id: uuid.UUID, session: SessionDep) -> NotificationDetail:
    return detail_of(await service.get(session, notification_id))


@router.get(
    "/{notification_id}/attempts",
    operation_id="list_attempts",
    response_model=AttemptList,
    summary="Every attempt made for a notification, oldest first",
    responses=error_responses(404, 422, 503),
)
async def list_attempts(notification_id: uuid.UUID, session: SessionDep) -> AttemptList:
    await service.get(session, notification_id)
    attempts = await NotificationRepository(session).attempts(notification_id)
    return AttemptList(items=[attempt_of(a) for a in attempts])


@router.post(
    "/{notification_id}/cancel",
    operation_id="cancel_notification",
    response_model=NotificationDetail,
    summary="Cancel a pending notification",
    responses=error_responses(404, 409, 422, 503),
)
async def cancel_notification(
    notification_id: uuid.UUID, session: SessionDep
) -> NotificationDetail:
    return detail_of(await service.cancel(session, notification_id))


@router.post(
    "/{notification_id}/retry",
    operation_id="retry_notification",
    response_model=NotificationDetail,
    summary="Re-queue a failed, expired or partial notification",
    responses=error_responses(404, 409, 422, 503),
)
async def retry_notification(
    notification_id: uuid.UUID, runtime: RuntimeDep, session: SessionDep
) -> NotificationDetail:
    return detail_of(await service.retry(runtime, session, notification_id))


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
