"""Request dependencies as ``Annotated`` aliases.

Every dependency here is ``async``: FastAPI runs plain ``def`` dependencies in a thread pool,
which costs more than the work they do.

Authorization: every operation under ``/v1`` takes one of ``SendScope``, ``ReadScope`` or
``AdminScope``. Each authenticates the request once (``authenticate``: 401 without a known
key, 429 over the key's rate), then checks the scope (403) and gives the route the
``Principal``, or ``None`` when no keys are configured and auth is off.

A key is read from ``Authorization: Bearer <key>`` or, for clients that can only set a plain
header, ``X-API-Key: <key>``; when both are sent, the bearer token wins. When auth is off, both
headers are ignored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Scope
from app.errors import MissingScope, TooManyRequests, Unauthorized
from app.runtime import Runtime
from app.security.auth import ApiKeys, Principal


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    """A session for one request. Writes commit in ``app.service``; reads need no commit."""
    async with runtime.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


_KEY_HELP = "An API key from auth.api_keys in herald.yaml."
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer", description=_KEY_HELP)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description=_KEY_HELP + " Read only when there is no Authorization header.",
)


async def presented_key(request: Request) -> str | None:
    """The key the request carries, if any: the bearer token, else ``X-API-Key``."""
    bearer = await bearer_scheme(request)
    if bearer is not None:
        return bearer.credentials
    return await api_key_scheme(request) or None


MISSING_KEY = "an API key is required: send Authorization: Bearer <key> (or X-API-Key: <key>)"
UNKNOWN_KEY = "the API key is not valid"
_AUTHENTICATED = "herald_principal"


async def authenticate(request: Request) -> Principal | None:
    """Who is calling (``None`` when auth is off); counts the request against the key's rate.

    Runs once per request even if an operation asks for several scopes.
    """
    if _AUTHENTICATED in request.scope:
        done: Principal | None = request.scope[_AUTHENTICATED]
        return done
    keys = runtime_of(request).api_keys
    principal = _principal(keys, await presented_key(request)) if keys.enabled else None
    request.scope[_AUTHENTICATED] = principal
    return principal


def _principal(keys: ApiKeys, key: str | None) -> Principal:
    """The holder of ``key``, counted against its rate; 401 for none or an unknown one, 429
    over the rate."""
    if key is None:
        raise Unauthorized(MISSING_KEY)
    principal = keys.authenticate(key)
    if principal is None:
        raise Unauthorized(UNKNOWN_KEY, invalid=True)
    over = keys.admit(principal)
    if over is not None:
        raise TooManyRequests(principal.name, *over)
    return principal


async def send_scope_in_path(
    request: Request,
    api_key: Annotated[
        str,
        Path(
            max_length=512,
            description="An API key with the send scope, for senders that cannot set a "
            "header. Ignored when auth is off.",
        ),
    ],
) -> Principal | None:
    """``SendScope`` for an operation whose URL carries the key (``…/{api_key}``)."""
    keys = runtime_of(request).api_keys
    if not keys.enabled:
        return None
    principal = _principal(keys, api_key)
    if not principal.allows("send"):
        raise MissingScope(principal.name, "send")
    return principal


SendScopeInPath = Annotated[Principal | None, Depends(send_scope_in_path)]
"""``SendScope`` with the key in the URL path rather than a header."""


class Authorizer:
    """The dependency of an operation that needs ``scope``: the caller if it holds it.

    One dependency, not a tree of them (reading the headers, the key ring, authenticating):
    FastAPI's per-dependency cost was a large share of the API's CPU on POST /v1/notifications
    (bench/results/levers.md, "one `Authorizer` dependency"). The
    operation's OpenAPI ``security`` requirement and the schemes come from ``security_of``.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> Principal | None:
        principal = await authenticate(request)
        if principal is not None and not principal.allows(self.scope):
            raise MissingScope(principal.name, self.scope)
        return principal


SCHEMES = (bearer_scheme, api_key_scheme)


def security_of(dependant: Dependant) -> list[dict[str, list[str]]]:
    """The OpenAPI ``security`` of an operation: either scheme, with the scope it needs."""
    for sub in dependant.dependencies:
        if isinstance(sub.call, Authorizer):
            return [{scheme.scheme_name: [sub.call.scope]} for scheme in SCHEMES]
        if sub.call is metrics_access:
            return [{scheme.scheme_name: []} for scheme in SCHEMES]
        found = security_of(sub)
        if found:
            return found
    return []


def security_schemes() -> dict[str, Any]:
    """``components.securitySchemes`` for ``security_of``'s names."""
    return {
        scheme.scheme_name: scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for scheme in SCHEMES
    }


def require(scope: Scope) -> Any:
    """A dependency that admits callers holding ``scope`` (``admin`` holds them all).

    The scope also shows in the operation's OpenAPI ``security`` requirement.
    """
    return Depends(Authorizer(scope))


SendScope = Annotated[Principal | None, require("send")]
"""Create notifications (and, later, batches)."""
ReadScope = Annotated[Principal | None, require("read")]
"""Read notifications, attempts, channels and routes."""
AdminScope = Annotated[Principal | None, require("admin")]
"""Cancel and retry, and every other operation on every tenant's notifications."""


def owner_filter(principal: Principal | None) -> str | None:
    """Whose notifications the caller may see and act on; ``None``: everyone's."""
    return principal.owner_filter if principal is not None else None


async def metrics_access(request: Request) -> None:
    """``/metrics`` is open unless ``auth.metrics_key`` is set; then it needs that key, or an
    API key with the ``admin`` scope (which counts against that key's rate)."""
    keys = runtime_of(request).api_keys
    if not keys.metrics_protected:
        return
    key = await presented_key(request)
    if key is None:
        raise Unauthorized("reading metrics needs the metrics key: Authorization: Bearer <key>")
    is_metrics_key = keys.is_metrics_key(key)
    principal = keys.authenticate(key)  # always both comparisons: no early exit on a match
    if is_metrics_key:
        return
    if principal is None:
        raise Unauthorized(UNKNOWN_KEY, invalid=True)
    if not principal.allows("admin"):
        raise MissingScope(principal.name, "admin", action="reading metrics with an API key")
    over = keys.admit(principal)
    if over is not None:
        raise TooManyRequests(principal.name, *over)


MetricsAccess = Depends(metrics_access)
