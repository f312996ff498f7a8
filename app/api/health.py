"""``/healthz``, ``/readyz`` and ``/metrics``.

Health checks are always open. ``/metrics`` is open unless ``auth.metrics_key`` is set; then it
needs that key (``Authorization: Bearer <metrics_key>``) or an API key with the admin scope.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics, service
from app.api.deps import MetricsAccess, RuntimeDep
from app.api.problems import error_responses, problem_response
from app.api.schemas import Health

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
    reason = await service.not_ready(runtime)
    if reason is not None:
        return problem_response(503, f"not ready: {reason}")
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
    state = await service.queue_state(runtime)
    if state is None:
        return  # the scrape still answers with what the process knows
    depth, oldest_due = state
    for status in metrics.STATUSES:
        metrics.queue_depth.labels(status).set(depth.get(status, 0))
    now = datetime.now(UTC)
    age = (now - oldest_due).total_seconds() if oldest_due and oldest_due <= now else 0.0
    metrics.queue_oldest_due_age.set(age)
