"""``create_app()``: the FastAPI application, with the delivery loop in its lifespan."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from app import __version__
from app.api import (
    acks,
    channels,
    events,
    health,
    inbound,
    integrations,
    notifications,
    problems,
    receipts,
    templates,
)
from app.api.deps import security_of, security_schemes
from app.api.middleware import Edge
from app.api.problems import PROBLEM_JSON
from app.channels.registry import ChannelRegistry, default_registry
from app.config import HeraldConfig, Settings
from app.console import views as console
from app.ingest.consumer import Ingest
from app.loops import run_loops
from app.runtime import Runtime, open_runtime, settle_heap

logger = logging.getLogger("herald")

DESCRIPTION = (
    "Herald accepts notifications over HTTP, stores them, and delivers each through an ordered "
    "chain of channels (Telegram, then email, then SMS…), stopping at the first success. Every "
    "try is an attempt you can read back, so you see the path each message took and why each "
    "hop failed. Errors are RFC 9457 problem documents (application/problem+json)."
)
INTERNAL_ERROR = {
    "description": "Internal server error",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def openapi_spec(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, with errors documented only as ``application/problem+json``."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            webhooks=app.webhooks.routes,
            tags=app.openapi_tags,
        )
        security = {
            (route.path_format, method.lower()): security_of(route.dependant)
            for route in iter_route_contexts(app.routes)
            if isinstance(route.original_route, APIRoute)
            for method in route.methods or ()
        }
        for path, operations in spec.get("paths", {}).items():
            for method, operation in operations.items():
                ours = security.get((path, method))
                if ours and "security" in operation:  # openapi_extra's come after ours
                    operation["security"] = ours + operation["security"]
                elif ours:
                    _insert_before(
                        operation, ("parameters", "requestBody", "responses"), "security", ours
                    )
                operation["responses"].setdefault("500", copy.deepcopy(INTERNAL_ERROR))
                for parameter in operation.get("parameters", []):
                    parameter["schema"] = _not_null(parameter["schema"])
                for status, response in operation["responses"].items():
                    content = response.get("content", {})
                    if status[0] in "45" and PROBLEM_JSON in content:
                        content.pop("application/json", None)
        if any(security.values()):
            spec["components"]["securitySchemes"] = security_schemes()
        for operations in spec.get("webhooks", {}).values():
            for operation in operations.values():
                # Declared as the answer (events.webhook_router): it is the request's body.
                body = {"required": True, "content": operation["responses"].pop("200")["content"]}
                _insert_before(operation, ("responses",), "requestBody", body)
                operation["responses"] = events.RECEIVED
        app.openapi_schema = spec
    return app.openapi_schema


def _insert_before(
    mapping: dict[str, Any], successors: tuple[str, ...], key: str, value: Any
) -> None:
    """Set ``mapping[key]`` ahead of the first of ``successors`` (FastAPI's key order)."""
    items = list(mapping.items())
    at = next((i for i, (k, _) in enumerate(items) if k in successors), len(items))
    items.insert(at, (key, value))
    mapping.clear()
    mapping.update(items)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query or header value is absent or a string, never null: drop FastAPI's null branch."""
    branches = schema.get("anyOf")
    if not branches:
        return schema
    kept = [branch for branch in branches if branch.get("type") != "null"]
    if len(kept) != 1:
        return schema
    return {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept[0]}


def create_app(
    settings: Settings | None = None,
    config: HeraldConfig | None = None,
    registry: ChannelRegistry | None = None,
    *,
    runtime: Runtime | None = None,
    run_worker: bool = True,
    run_ingest: bool = True,
) -> FastAPI:
    """The application. With ``runtime`` given (tests, embedding) the caller owns it.

    ``run_ingest``: consume the configured Redis Streams too, unless ``ingest.serve`` is off.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        if settings is None or config is None:
            raise RuntimeError("create_app needs settings and config to serve")
        async with open_runtime(settings, config, registry or default_registry()) as opened:
            app.state.runtime = opened
            settle_heap()
            stop = asyncio.Event()
            tasks = (
                [asyncio.create_task(run_loops(opened, stop), name="herald-loops")]
                if run_worker
                else []
            )
            if run_ingest and opened.config.ingest.streams and opened.config.ingest.serve:
                tasks.append(asyncio.create_task(Ingest(opened).run(stop), name="herald-ingest"))
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(*tasks)

    app = FastAPI(
        # FastAPI's OpenTelemetry bridge acts only when an OpenTelemetry SDK is configured in
        # the process, which Herald never does (it exports Prometheus metrics and JSON logs);
        # asking whether one is, on every request, cost CPU on every accept
        # (bench/results/levers.md, "OpenTelemetry bridge off").
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="Herald",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "notifications", "description": "Send notifications and follow them."},
            {"name": "events", "description": "What happened, as sent to subscriptions."},
            {
                "name": "integrations",
                "description": "Receivers of other systems' webhooks (Alertmanager).",
            },
            {"name": "inbound", "description": "What chats sent Herald' bots."},
            {"name": "configuration", "description": "Channels and routes from herald.yaml."},
            {"name": "templates", "description": "Message templates from herald.yaml."},
            {"name": "health", "description": "Liveness, readiness and metrics."},
        ],
    )
    if runtime is not None:
        app.state.runtime = runtime
    app.openapi = lambda: openapi_spec(app)  # type: ignore[method-assign]
    problems.install(app)
    app.include_router(notifications.router)
    app.include_router(events.router)
    app.include_router(integrations.router)
    app.include_router(inbound.router)
    app.include_router(channels.router)
    app.include_router(health.router)
    app.include_router(receipts.router)
    app.include_router(acks.router)
    app.include_router(templates.router)
    app.webhooks.include_router(events.webhook_router)
    console.install(app)
    # In front of the whole app: what the fast road does not answer goes on to the FastAPI
    # route (which also documents the operation).
    app.add_middleware(Edge, road=notifications.FastAccept())
    return app
