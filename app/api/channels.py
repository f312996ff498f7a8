"""``/v1/channels`` and ``/v1/routes``: what the config defines, secrets masked."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import RuntimeDep, require
from app.api.problems import AUTH_ERRORS, error_responses
from app.api.schemas import (
    OPEN_DESTINATIONS_SHOWN,
    ChannelList,
    ChannelOut,
    Circuit,
    ConfirmOut,
    DedupOut,
    DigestOut,
    MuteOut,
    RetryOut,
    RouteList,
    RouteOut,
)
from app.delivery.orchestrator import Link, utcnow
from app.domain import DEFAULT_ROUTE, ChannelHealth, CircuitState
from app.durations import format_duration
from app.retention import PURGEABLE, RetentionPeriods
from app.security.redaction import redact
from app.store.inbound import InboundLog

router = APIRouter(
    prefix="/v1",
    tags=["configuration"],
    dependencies=[require("read")],
    responses=AUTH_ERRORS,
)


def masked(value: Any) -> Any:
    """Settings as shown: secret fields are already ``**********``; URL credentials go too."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def _health(reason: str | None, circuit: Circuit) -> ChannelHealth:
    if reason is not None or circuit.state is CircuitState.OPEN:
        return ChannelHealth.UNHEALTHY
    if circuit.state is CircuitState.HALF_OPEN or circuit.consecutive_failures:
        return ChannelHealth.DEGRADED
    return ChannelHealth.HEALTHY


def _circuit(link: Link) -> Circuit:
    breaker = link.circuit
    not_closed = link.destinations.not_closed() if link.destinations is not None else []
    return Circuit(
        state=breaker.state if breaker else CircuitState.CLOSED,
        consecutive_failures=breaker.consecutive_failures if breaker else 0,
        reason=breaker.reason if breaker else None,
        retry_in_seconds=round(breaker.retry_in(), 3) if breaker else 0.0,
        per_destination=link.destinations is not None,
        open_destinations=not_closed[:OPEN_DESTINATIONS_SHOWN],
        open_destination_count=len(not_closed),
    )


@router.get(
    "/channels",
    operation_id="list_channels",
    response_model=ChannelList,
    summary="Configured channels with their readiness",
    responses=error_responses(503),
)
async def list_channels(runtime: RuntimeDep) -> ChannelList:
    items = []
    for name, channel in runtime.channels.items():
        config = channel.config
        reason = channel.readiness()
        if reason is None and not config.enabled:
            reason = "disabled in the config"
        settings = masked(
            config.model_dump(mode="json", by_alias=True, exclude={"type", "enabled"})
        )
        circuit = _circuit(runtime.links[name])
        items.append(
            ChannelOut(
                name=name,
                type=config.type,
                enabled=config.enabled,
                ready=reason is None,
                reason=reason,
                health=_health(reason, circuit),
                circuit=circuit,
                settings=settings,
            )
        )
    return ChannelList(items=items)


@router.get(
    "/routes",
    operation_id="list_routes",
    response_model=RouteList,
    summary="Configured routes",
    responses=error_responses(503),
)
async def list_routes(runtime: RuntimeDep) -> RouteList:
    async with runtime.sessions() as session:
        mutes = await InboundLog(session).mutes(utcnow())
    defaults = runtime.config.retention.periods
    return RouteList(
        items=[
            RouteOut(
                name=name,
                channels=route.names,
                ack_within=[
                    None
                    if isinstance(item, str) or item.ack_within is None
                    else format_duration(item.ack_within)
                    for item in route.channels
                ],
                confirm=None
                if route.confirm is None
                else ConfirmOut(within=format_duration(route.confirm.within), on=route.confirm.on),
                strategy=route.strategy,
                retry=RetryOut(
                    schedule=[format_duration(delay) for delay in route.retry.schedule],
                    jitter=route.retry.jitter,
                ),
                ttl=format_duration(route.ttl) if route.ttl is not None else None,
                dedup=None
                if route.dedup is None
                else DedupOut(window=format_duration(route.dedup.window), mode=route.dedup.mode),
                digest=None
                if route.digest is None
                else DigestOut(
                    window=format_duration(route.digest.window),
                    max_items=route.digest.max_items,
                ),
                default=name == DEFAULT_ROUTE,
                quiet_hours=route.quiet_hours,
                retention=_retention(route.retention, defaults),
                mutes=[
                    MuteOut(channel_type=mute.channel_type, until=mute.until, by=mute.by)
                    for mute in mutes
                    if mute.route == name
                ],
            )
            for name, route in runtime.config.routes.items()
        ]
    )


def _retention(own: RetentionPeriods | None, defaults: RetentionPeriods) -> dict[str, str | None]:
    """A route's retention period per final status, as shown."""
    periods = own.over(defaults) if own is not None else defaults
    return {
        status: None if (period := periods.period(status)) is None else format_duration(period)
        for status in PURGEABLE
    }
