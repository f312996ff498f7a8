"""``/v1/integrations``: receivers of other systems' webhooks, turned into notifications."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app import metrics, service
from app.api.body import JSONBodyRoute
from app.api.deps import SendScope, SendScopeInPath, runtime_of
from app.api.problems import AUTH_ERRORS, error_responses
from app.api.schemas import AlertmanagerNotification, AlertmanagerResult
from app.domain import IngestOutcome
from app.errors import HeraldError, UnknownName, Unprocessable
from app.ingest import alertmanager
from app.ingest.alertmanager import AlertmanagerWebhook
from app.security.auth import Principal

router = APIRouter(prefix="/v1/integrations", tags=["integrations"], route_class=JSONBodyRoute)

ALERTMANAGER_DESCRIPTION = (
    "Alertmanager's webhook payload (version 4) becomes one notification per alert group, or "
    "one per alert (ingest.alertmanager.per in herald.yaml): subject and text from the labels "
    "and annotations, severity from the severity label, route from the herald_route label or "
    "ingest.alertmanager.route. The group key, status and alerts' fingerprints and start times "
    "make the idempotency key, so a group sent again unchanged is answered with its existing "
    "notification. Resolved groups are notified too unless ingest.alertmanager.resolved is "
    "false. A payload of another version or missing a field: 422 naming it."
)


@router.post(
    "/alertmanager",
    operation_id="receive_alertmanager",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AlertmanagerResult,
    summary="Receive Alertmanager's webhook (API key as bearer token)",
    description=ALERTMANAGER_DESCRIPTION,
    responses=error_responses(413, 415, 422, 503) | AUTH_ERRORS,
)
async def receive_alertmanager(
    body: AlertmanagerWebhook, principal: SendScope, request: Request
) -> AlertmanagerResult:
    return await _receive(request, body, principal)


@router.post(
    "/alertmanager/{api_key}",
    operation_id="receive_alertmanager_with_key_in_path",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AlertmanagerResult,
    summary="Receive Alertmanager's webhook (API key in the URL)",
    description=ALERTMANAGER_DESCRIPTION
    + " For setups that cannot set an Authorization header: the key is part of the URL, so "
    "keep that URL as secret as the key.",
    responses=error_responses(413, 415, 422, 503) | AUTH_ERRORS,
)
async def receive_alertmanager_with_key_in_path(
    body: AlertmanagerWebhook, principal: SendScopeInPath, request: Request
) -> AlertmanagerResult:
    return await _receive(request, body, principal)


async def _receive(
    request: Request, body: AlertmanagerWebhook, principal: Principal | None
) -> AlertmanagerResult:
    runtime = runtime_of(request)
    plan = alertmanager.plan(body, runtime.config.ingest.alertmanager)
    for planned in plan.notifications:  # refuse before storing any
        try:
            service.admit(runtime, planned.keyed.request)
        except UnknownName as exc:
            if planned.route_from == ["body"]:
                raise
            errors = [{"loc": planned.route_from, "msg": e["msg"]} for e in exc.errors or []]
            raise Unprocessable(f"{exc.detail} (from the alerts' label)", errors=errors) from None
    results = await service.accept_keyed(
        runtime,
        [planned.keyed for planned in plan.notifications],
        owner=principal.name if principal else None,
    )
    answer = []
    for planned, result in zip(plan.notifications, results, strict=True):
        if isinstance(result, HeraldError):
            raise result
        outcome = IngestOutcome.REPLAYED if result.replayed else IngestOutcome.ACCEPTED
        metrics.alertmanager_notifications.labels(planned.status, outcome).inc()
        answer.append(
            AlertmanagerNotification(
                id=result.id,
                location=f"/v1/notifications/{result.id}",
                status=planned.status,
                alerts=planned.alerts,
                replayed=result.replayed,
            )
        )
    for skipped in plan.skipped:
        metrics.alertmanager_notifications.labels(skipped, IngestOutcome.SKIPPED).inc()
    return AlertmanagerResult(notifications=answer, skipped=len(plan.skipped))
