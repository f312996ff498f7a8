"""Every error the API answers, as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.api.schemas import Problem
from app.errors import HeraldError, problem_type
from app.store.db import brief, unavailable_reason

logger = logging.getLogger("herald.api")

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict: the notification's status does not allow it"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation", "Validation failed"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = problem_document(status, detail, slug=slug, title=title, errors=errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_document(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    default_slug, default_title = _TITLES.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": problem_type(slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_of(exc: HeraldError) -> dict[str, Any]:
    """The problem document of an error, for a response that carries several."""
    return problem_document(
        exc.status, exc.detail, slug=exc.slug, title=exc.title, errors=exc.errors
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


def validation_errors(raw: Any) -> list[dict[str, Any]]:
    errors = []
    for error in raw:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        errors.append({"loc": _loc(error.get("loc", ())), "msg": message})
    return errors


async def _herald_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HeraldError)
    if exc.status >= 500:
        logger.error("%s: %s", type(exc).__name__, exc.detail)
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers or None,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return problem_response(422, f"invalid request: {summary}{more}", errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == "Not Found":
        detail = "no such path"
    elif exc.status_code == 405:
        detail = "method not allowed on this path"
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(exc.status_code, detail, headers=headers)


_PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path; Starlette names only the first route's."""

    def served(method: str) -> bool:
        probe = {**request.scope, "method": method}
        return any(route.matches(probe)[0] is Match.FULL for route in request.app.routes)

    return ", ".join(method for method in _PROBED_METHODS if served(method))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    detail = unavailable_reason(exc)
    if detail is None:
        return await _unexpected(request, exc)
    logger.warning("database unavailable: %s", brief(exc))
    return problem_response(503, detail, headers={"Retry-After": "1"})


def unexpected(exc: Exception) -> JSONResponse:
    """Log an error nothing else handled (once, with its traceback) and answer 500."""
    logger.exception("unhandled error", exc_info=exc)
    return problem_response(500, "an unexpected error occurred; it has been logged")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    return unexpected(exc)


Handler = Callable[[Request, Exception], Awaitable[Response]]

HANDLERS: dict[type[Exception], Handler] = {
    HeraldError: _herald_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    **dict.fromkeys((DBAPIError, ConnectionError, TimeoutError, socket.gaierror), _database_error),
    Exception: _unexpected,
}
"""How the API answers each error: the app's exception handlers (``install``), and those of the
fast road ``Edge`` serves in front of the app (``answer``)."""


def install(app: FastAPI) -> None:
    for error, handler in HANDLERS.items():
        app.add_exception_handler(error, handler)


async def answer(request: Request, exc: Exception) -> Response:
    """The answer to ``exc`` as the app's exception handlers give it (Starlette's
    ``ExceptionMiddleware``: the handler of the nearest class in its MRO), for a request served
    outside the app; ``exc`` itself is raised again when only ``Exception``'s handler would
    take it, as there: that one is the outermost layer's, and ``Edge`` answers it (or counts a
    client that hung up)."""
    for error in type(exc).__mro__:
        if error is Exception:
            break
        handler = HANDLERS.get(error)
        if handler is not None:
            return await handler(request, exc)
    raise exc


_RESPONSE_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": 'The challenge: Bearer realm="herald".',
            "schema": {"type": "string"},
        }
    },
    403: {
        "WWW-Authenticate": {
            "description": "When a scope is missing: "
            'Bearer realm="herald", error="insufficient_scope", scope="<scope>".',
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Whole seconds to wait before the API key may call again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems an operation may answer."""
    descriptions = {status: title for status, (_, title) in _TITLES.items()}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "model": Problem,
            "description": descriptions.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in _RESPONSE_HEADERS:
            response["headers"] = _RESPONSE_HEADERS[status]
        responses[status] = response
    return responses


AUTH_ERRORS = error_responses(401, 403, 429)
"""What any operation behind an API key may answer: no or unknown key, missing scope, over
the key's rate limit."""
