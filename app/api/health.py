"""``/healthz``, ``/readyz`` and ``/metrics``.

Health checks are always open. ``/metrics`` is open unless ``auth.metrics_key`` is set; then it
needs that key (``Authorization: Bearer <metrics_key>``) or an API key with the admin scope.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DBAPIError

from app import metrics
from app.api.deps import MetricsAccess, RuntimeDep
from app.api.problems import error_responses, problem_response
from app.api.schemas import Health
from app.store.db import brief
from app.store.migrate import current_revision, head_revision
from app.store.repositories import NotificationRepository

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    operation_id="healthz",
    response_model=Health,
    summary="Liveness: the process answers",
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Health,
    summary="Readiness: the database is reachable and migrated",
    responses=error_responses(503),
)
async def readyz(runtime: RuntimeDep) -> Response:
    try:
        revision = await current_revision(runtime.engine)
    except (DBAPIError, OSError) as exc:
        return problem_response(503, f"not ready: database unreachable: {brief(exc)}")
    expected = head_revision()
    if revision != expected:
        return problem_response(
            503,
            f"not ready: database at migration {revision or 'none'}, expected {expected}: "
            "run herald migrate",
        )
    return JSONResponse(Health(status="ok").model_dump())


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    description="Open unless auth.metrics_key is set; then it needs that key as a bearer "
    "token, or an API key with the admin scope.",
    response_class=Response,
    dependencies=[MetricsAccess],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(401, 403, 429),
    },
    # Also open (an empty requirement): the key is needed only when metrics_key is set.
    openapi_extra={"security": [{}]},
)
async def prometheus_metrics(runtime: RuntimeDep) -> Response:
    await refresh_queue_gauges(runtime)
    return Response(metrics.api_exposition(), media_type=CONTENT_TYPE_LATEST)


async def refresh_queue_gauges(runtime: RuntimeDep) -> None:
    """Queue depth and oldest due age are read from the database at scrape time."""
    try:
        async with runtime.sessions() as session:
            repository = NotificationRepository(session)
            depth = await repository.queue_depth()
            oldest_due = await repository.oldest_due()
    except (DBAPIError, OSError):
        return  # the scrape still answers with what the process knows
    for status in metrics.STATUSES:
        metrics.queue_depth.labels(status).set(depth.get(status, 0))
    now = datetime.now(UTC)
    age = (now - oldest_due).total_seconds() if oldest_due and oldest_due <= now else 0.0
    metrics.queue_oldest_due_age.set(age)
