"""``/console``: the operator console, server-rendered HTML (README, "Console").

Every page reads through ``app.service`` and the store as the API does, with the same rules:
a key sees its own notifications unless it has the ``admin`` scope (another owner's is 404),
cancel and retry need ``admin``, acknowledging needs ``send`` on the owner's key or ``admin``.
Each page works without JavaScript; ``console.js`` only refreshes parts of it every 2 s from
the ``…/live`` fragments, which are rendered by the same templates.

Templates escape everything they show (Jinja's autoescape); nothing here marks text as safe.
"""

from __future__ import annotations

import functools
import json
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app import service
from app.api.channels import list_channels, list_routes
from app.api.deps import owner_filter, runtime_of
from app.api.notifications import acknowledged_or_raise, attempt_out
from app.api.schemas import AttemptOut, NotificationCreate
from app.console.sessions import (
    SESSION_COOKIE,
    VISIT_COOKIE,
    Sessions,
    clear_cookie,
    set_cookie,
)
from app.domain import (
    ACKABLE,
    CANCELLABLE,
    RETRYABLE,
    AckVia,
    AttemptOutcome,
    ListFilter,
    NotificationStatus,
    Severity,
    StoredNotification,
)
from app.errors import HeraldError, NotificationNotFound
from app.events.store import EventFilter, EventLog
from app.runtime import Runtime
from app.security.auth import Principal
from app.security.redaction import MASK, redact
from app.store import stats

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
PAGE_SIZE = 50
TEXT_LIMIT = 64
"""Longest route, channel or owner name a filter takes (names are at most 64 characters)."""
SEARCH_LIMIT = 200
COUNT_LIMIT = 10_000
"""The counts by status cover the newest this many notifications of the filter."""
FORM_LIMIT = 256 * 1024
WINDOW = timedelta(hours=24)
HOURS = 24
FAILURES_SHOWN = 3
NOTICES = {
    "cancelled": "Cancelled.",
    "retried": "Queued again for delivery.",
    "acknowledged": "Acknowledged.",
    "sent": "Accepted: this is the test notification.",
}


@functools.cache
def templates() -> jinja2.Environment:
    """The console's templates, loaded at its first page: a process whose console is off (or
    never opened) does not import Jinja2 at all."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["pretty"] = lambda value: json.dumps(
        value, indent=2, ensure_ascii=False, sort_keys=True, default=str
    )
    return environment


router = APIRouter(prefix="/console", include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add the console's pages and its static files (CSS, one script) to ``app``."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")


def sessions_of(request: Request) -> Sessions:
    return runtime_of(request).console


@dataclass
class Viewer:
    """Who is looking, and what the page may offer them."""

    runtime: Runtime = field(repr=False)
    principal: Principal | None
    auth_off: bool
    csrf: str
    new_visit: str | None = None
    """A ``VISIT_COOKIE`` value to set with the answer (a browser's first page, auth off)."""

    @property
    def name(self) -> str | None:
        return self.principal.name if self.principal else None

    @property
    def owner(self) -> str | None:
        """Whose notifications this viewer sees; ``None``: everyone's."""
        return owner_filter(self.principal)

    @property
    def admin(self) -> bool:
        return self.principal is None or self.principal.allows("admin")

    def may_ack(self, notification: StoredNotification) -> bool:
        """As ``POST …/ack``: the ``send`` scope, on the owner's key unless admin."""
        if self.principal is None or self.admin:
            return True
        return self.principal.allows("send") and notification["owner"] == self.principal.name


class Refusal(Exception):
    """Answer with ``response`` instead of the page."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _enabled(request: Request) -> Runtime:
    runtime = runtime_of(request)
    if not runtime.config.server.console:
        raise Refusal(Response("Not Found", status_code=404, media_type="text/plain"))
    return runtime


def viewer_of(request: Request) -> Viewer:
    """The viewer of a console page; a redirect to the sign-in page without a session."""
    runtime = _enabled(request)
    sessions = sessions_of(request)
    if not runtime.api_keys.enabled:
        visit = request.cookies.get(VISIT_COOKIE)
        new = None
        if not visit:
            visit = new = secrets.token_urlsafe(32)
        return Viewer(runtime, None, True, sessions.csrf_token(visit), new)
    token = request.cookies.get(SESSION_COOKIE)
    session = sessions.find(token)
    if session is None or token is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = "/console/sign-in?" + urlencode({"next": target})
        raise Refusal(RedirectResponse(location, status_code=303))
    return Viewer(runtime, session.principal, False, sessions.csrf_token(token))


async def form_of(request: Request, viewer: Viewer | None = None) -> dict[str, str]:
    """A posted form's fields (the first value of each); 403 without a valid CSRF token."""
    raw = await request.body()
    if len(raw) > FORM_LIMIT:
        raise Refusal(_plain("Form too large.", 413))
    try:
        fields = dict(reversed(parse_qsl(raw.decode("utf-8"), keep_blank_values=True)))
    except UnicodeDecodeError:
        raise Refusal(_plain("The form is not UTF-8.", 422)) from None
    sessions = sessions_of(request)
    basis = (
        request.cookies.get(SESSION_COOKIE)
        if viewer is not None and not viewer.auth_off
        else request.cookies.get(VISIT_COOKIE)
    )
    if not sessions.csrf_valid(basis, fields.get("csrf")):
        raise Refusal(_plain("Forbidden: the form's CSRF token is missing or wrong.", 403))
    return fields


def _plain(text: str, status: int) -> Response:
    return Response(text, status_code=status, media_type="text/plain; charset=utf-8")


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    html = (
        templates()
        .get_template(template)
        .render(viewer=viewer, path=request.url.path, nav=NAV, **context)
    )
    response = HTMLResponse(html, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if viewer is not None and viewer.new_visit:
        set_cookie(request, response, VISIT_COOKIE, viewer.new_visit)
    return response


CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No inline script runs, even if some text got through unescaped."""

NAV = (
    ("/console", "Activity"),
    ("/console/channels", "Channels"),
    ("/console/routes", "Routes"),
    ("/console/send", "Send a test"),
)


def _refusals(handler: Any) -> Any:
    """Turn a ``Refusal`` raised by a view into its response."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            response: Response = await handler(*args, **kwargs)
        except Refusal as refusal:
            return refusal.response
        return response

    return wrapped


# --- sign-in --------------------------------------------------------------------------------


def _next_of(value: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if value and value.startswith("/console") and "//" not in value and "\\" not in value:
        return value
    return "/console"


@router.get("/sign-in")
@_refusals
async def sign_in_page(request: Request) -> Response:
    runtime = _enabled(request)
    if not runtime.api_keys.enabled:
        return RedirectResponse("/console", status_code=303)
    return _sign_in_form(request, _next_of(request.query_params.get("next")))


def _sign_in_form(
    request: Request, next_path: str, message: str | None = None, status_code: int = 200
) -> Response:
    sessions = sessions_of(request)
    visit = request.cookies.get(VISIT_COOKIE)
    new = None
    if not visit:
        visit = new = secrets.token_urlsafe(32)
    response = render(
        request,
        "sign_in.html",
        None,
        status_code,
        csrf=sessions.csrf_token(visit),
        next_path=next_path,
        message=message,
    )
    if new:
        set_cookie(request, response, VISIT_COOKIE, new)
    return response


@router.post("/sign-in")
@_refusals
async def sign_in(request: Request) -> Response:
    runtime = _enabled(request)
    if not runtime.api_keys.enabled:
        return RedirectResponse("/console", status_code=303)
    fields = await form_of(request)
    next_path = _next_of(fields.get("next"))
    sessions = sessions_of(request)
    address = request.client.host if request.client else "unknown"
    wait = sessions.sign_in_wait(address)
    if wait is not None:
        response = _sign_in_form(
            request, next_path, "Too many sign-in attempts. Wait a minute and try again.", 429
        )
        response.headers["Retry-After"] = str(max(1, int(wait) + 1))
        return response
    key = fields.get("api_key", "")
    principal = runtime.api_keys.authenticate(key) if key else None
    if principal is None or not principal.allows("read"):
        return _sign_in_form(
            request, next_path, "Sign-in failed: that key cannot open the console.", 401
        )
    token = sessions.open(principal)
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(request, response, SESSION_COOKIE, token)
    return response


@router.post("/sign-out")
@_refusals
async def sign_out(request: Request) -> Response:
    viewer = viewer_of(request)
    await form_of(request, viewer)
    sessions_of(request).close(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse(
        "/console" if viewer.auth_off else "/console/sign-in", status_code=303
    )
    clear_cookie(request, response, SESSION_COOKIE)
    return response


# --- activity -------------------------------------------------------------------------------


@dataclass
class Filters:
    """The activity page's filters as given (``query``) and as the store reads them."""

    query: dict[str, str]
    filters: ListFilter
    cursor: uuid.UUID | None
    errors: list[str]

    def link(self, **changes: str | None) -> str:
        merged = {**self.query, **changes}
        kept = {k: v for k, v in merged.items() if v}
        return "/console" + (f"?{urlencode(kept)}" if kept else "")


FILTER_FIELDS = ("status", "route", "channel", "severity", "owner", "after", "before", "q")


def filters_of(source: Mapping[str, str], viewer: Viewer) -> Filters:
    """The filters in a query string or a bulk form; bad values are dropped and reported."""
    query = {name: source.get(name, "").strip() for name in FILTER_FIELDS}
    errors: list[str] = []

    def named(name: str) -> str | None:
        value = query[name]
        if not value:
            return None
        if len(value) > TEXT_LIMIT or "\x00" in value:
            errors.append(f"{name}: at most {TEXT_LIMIT} characters")
            query[name] = ""
            return None
        return value

    def member(name: str, kind: Any) -> Any:
        value = query[name]
        if not value:
            return None
        try:
            return kind(value)
        except ValueError:
            errors.append(f"{name}: unknown value")
            query[name] = ""
            return None

    def moment(name: str) -> datetime | None:
        value = query[name]
        if not value:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            errors.append(f"{name}: use a date and time such as 2026-01-31T13:45")
            query[name] = ""
            return None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

    search = query["q"]
    if len(search) > SEARCH_LIMIT or "\x00" in search:
        errors.append(f"q: at most {SEARCH_LIMIT} characters")
        search = query["q"] = ""
    owner = named("owner")
    if viewer.owner is not None:
        owner = viewer.owner  # a non-admin key sees its own, whatever the filter says
        query["owner"] = ""
    cursor = None
    raw_cursor = source.get("cursor", "")
    if raw_cursor:
        try:
            cursor = uuid.UUID(raw_cursor)
        except ValueError:
            errors.append("cursor: not a cursor of this list")
    filters = ListFilter(
        status=member("status", NotificationStatus),
        route=named("route"),
        channel=named("channel"),
        severity=member("severity", Severity),
        owner=owner,
        created_after=moment("after"),
        created_before=moment("before"),
        subject_contains=search or None,
    )
    return Filters(query, filters, cursor, errors)


async def _activity(viewer: Viewer, chosen: Filters) -> dict[str, Any]:
    async with viewer.runtime.sessions() as session:
        page, next_id = await service.list_page(
            session, chosen.filters, limit=PAGE_SIZE, before=chosen.cursor
        )
        counts = await service.count_by_status(session, chosen.filters, limit=COUNT_LIMIT)
    return {
        "items": page,
        "next_link": chosen.link(cursor=str(next_id)) if next_id else None,
        "counts": [(status, counts.get(status, 0)) for status in NotificationStatus],
        "total": sum(counts.values()),
        "capped": sum(counts.values()) >= COUNT_LIMIT,
        "chosen": chosen,
    }


@router.get("")
@_refusals
async def activity(request: Request) -> Response:
    viewer = viewer_of(request)
    chosen = filters_of(request.query_params, viewer)
    config = viewer.runtime.config
    return render(
        request,
        "activity.html",
        viewer,
        422 if chosen.errors else 200,
        statuses=list(NotificationStatus),
        severities=list(Severity),
        routes=sorted(config.routes),
        channels=sorted(config.channels),
        owners=sorted({key.name for key in config.auth.api_keys}),
        live="/console/live?" + urlencode({k: v for k, v in chosen.query.items() if v}),
        notice=_notice(request),
        **await _activity(viewer, chosen),
    )


@router.get("/live")
@_refusals
async def activity_live(request: Request) -> Response:
    """The activity page's rows and counts, for ``console.js`` to swap in."""
    viewer = viewer_of(request)
    chosen = filters_of(request.query_params, viewer)
    shown = await _activity(viewer, chosen)
    rows = templates().get_template("_rows.html").render(viewer=viewer, **shown)
    counts = templates().get_template("_counts.html").render(viewer=viewer, **shown)
    return JSONResponse({"rows": rows, "counts": counts}, headers={"Cache-Control": "no-store"})


def _notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("done", ""))


# --- one notification -----------------------------------------------------------------------


def masked_recipient(recipient: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The recipient's addresses as shown: a phone number's middle digits and a webhook URL's
    path, query and credentials are masked (a URL often carries a token)."""
    shown: list[tuple[str, str]] = []
    for name, value in recipient.items():
        if name == "quiet_hours" or value is None:
            continue
        if name == "phone" and isinstance(value, str) and len(value) > 6:
            text = value[:3] + "•" * (len(value) - 5) + value[-2:]
        elif name == "webhook_url" and isinstance(value, str):
            scheme, _, rest = redact(value).partition("://")
            host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
            text = f"{scheme}://{host}/{MASK}" if rest[len(host) :].strip("/") else value
        elif isinstance(value, list):
            text = ", ".join(str(item) for item in value)
        else:
            text = str(value)
        shown.append((name, text))
    return shown


EVENTS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class SentEvent:
    """One event of the notification, with where it stands per receiver."""

    type: str
    at: datetime
    deliveries: list[tuple[str, str, int]]
    """``(subscription, status, attempts)`` per receiver."""


async def _events(
    session: AsyncSession, viewer: Viewer, notification_id: uuid.UUID
) -> list[SentEvent]:
    """The notification's latest events (as ``GET /v1/events?notification_id=`` lists them),
    oldest first."""
    log = EventLog(session)
    records = await log.list(
        EventFilter(notification_id=notification_id, owner=viewer.owner),
        limit=EVENTS_SHOWN,
        before_id=None,
    )
    deliveries = await log.deliveries_of([record.id for record in records])
    return [
        SentEvent(
            record.type,
            record.created_at,
            [(d.subscription, d.status, d.attempts) for d in deliveries.get(record.id, [])],
        )
        for record in reversed(records)
    ]


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    attempts: list[AttemptOut]


async def _notification(viewer: Viewer, notification_id: uuid.UUID) -> dict[str, Any]:
    async with viewer.runtime.sessions() as session:
        notification = await service.get(session, notification_id, owner=viewer.owner)
        shown = await service.attempts(session, notification_id, owner=viewer.owner)
        events = await _events(session, viewer, notification_id)
    attempts = [attempt_out(item) for item in shown]
    rounds: dict[int, list[AttemptOut]] = {}
    for attempt in attempts:
        rounds.setdefault(attempt.round, []).append(attempt)
    status = notification["status"]
    return {
        "n": notification,
        "rounds": [Round(number, items) for number, items in rounds.items()],
        "attempt_total": len(attempts),
        "events": events,
        "recipient": masked_recipient(notification["recipient"]),
        "can_cancel": viewer.admin and status in CANCELLABLE,
        "can_retry": viewer.admin and status in RETRYABLE,
        "can_ack": viewer.may_ack(notification) and status in ACKABLE,
        "final": status not in (NotificationStatus.PENDING, NotificationStatus.DELIVERING),
    }


def _hop_of(raw: str) -> int | None:
    """A replay's first hop, as the form gives it ("" or absent: every hop)."""
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 3:
        raise Refusal(_plain("Unprocessable: from_hop is a hop's number.", 422))
    return int(raw)


def _id_of(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Refusal(_plain("Not Found: no such notification.", 404)) from None


async def _shown_or_404(
    request: Request, viewer: Viewer, notification_id: uuid.UUID
) -> dict[str, Any]:
    try:
        return await _notification(viewer, notification_id)
    except NotificationNotFound:
        raise Refusal(
            render(request, "missing.html", viewer, 404, notification_id=notification_id)
        ) from None


@router.get("/notifications/{raw_id}")
@_refusals
async def notification_page(request: Request, raw_id: str) -> Response:
    viewer = viewer_of(request)
    notification_id = _id_of(raw_id)
    shown = await _shown_or_404(request, viewer, notification_id)
    return render(
        request,
        "notification.html",
        viewer,
        notice=_notice(request),
        error=None,
        live=f"/console/notifications/{notification_id}/live",
        **shown,
    )


@router.get("/notifications/{raw_id}/live")
@_refusals
async def notification_live(request: Request, raw_id: str) -> Response:
    viewer = viewer_of(request)
    shown = await _shown_or_404(request, viewer, _id_of(raw_id))
    html = templates().get_template("_timeline.html").render(viewer=viewer, **shown)
    return JSONResponse({"timeline": html}, headers={"Cache-Control": "no-store"})


@router.post("/notifications/{raw_id}/{action}")
@_refusals
async def notification_action(request: Request, raw_id: str, action: str) -> Response:
    viewer = viewer_of(request)
    notification_id = _id_of(raw_id)
    fields = await form_of(request, viewer)
    runtime = viewer.runtime
    if action not in ("cancel", "retry", "ack"):
        return _plain("Not Found: no such action.", 404)
    shown = await _shown_or_404(request, viewer, notification_id)
    allowed = viewer.may_ack(shown["n"]) if action == "ack" else viewer.admin
    if not allowed:
        return _plain(f"Forbidden: {action} needs the admin scope.", 403)
    try:
        if action == "ack":
            result = await service.acknowledge(
                runtime,
                notification_id,
                by=viewer.name or "console",
                via=AckVia.API,
                owner=viewer.owner,
            )
            acknowledged_or_raise(notification_id, result)
            done = "acknowledged"
        else:
            async with runtime.sessions() as session:
                if action == "cancel":
                    await service.cancel(runtime, session, notification_id, owner=viewer.owner)
                    runtime.announce_final(notification_id)
                    done = "cancelled"
                else:
                    await service.retry(
                        runtime,
                        session,
                        notification_id,
                        owner=viewer.owner,
                        from_hop=_hop_of(fields.get("from_hop", "")),
                    )
                    done = "retried"
    except HeraldError as exc:
        shown = await _shown_or_404(request, viewer, notification_id)
        return render(
            request,
            "notification.html",
            viewer,
            exc.status,
            notice=None,
            error=exc.detail,
            live=f"/console/notifications/{notification_id}/live",
            **shown,
        )
    return RedirectResponse(
        f"/console/notifications/{notification_id}?done={done}", status_code=303
    )


# --- channels and routes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    delivered: int
    failed: int
    skipped: int
    label: str


SPARK_WIDTH = 6
SPARK_HEIGHT = 28


def sparkline(by_hour: Mapping[int, Mapping[AttemptOutcome, int]], now: datetime) -> list[Bar]:
    """One bar per hour of the last ``HOURS``, oldest first, heights scaled to the busiest."""
    current = int(now.timestamp()) // stats.HOUR
    hours = range(current - HOURS + 1, current + 1)
    counts = [by_hour.get(hour, {}) for hour in hours]
    top = max((sum(c.values()) for c in counts), default=0) or 1
    bars = []
    for index, (hour, count) in enumerate(zip(hours, counts, strict=True)):
        delivered = count.get(AttemptOutcome.DELIVERED, 0)
        failed = count.get(AttemptOutcome.FAILED, 0)
        skipped = sum(count.values()) - delivered - failed
        at = datetime.fromtimestamp(hour * stats.HOUR, UTC).strftime("%H:00")
        bars.append(
            Bar(
                x=index * SPARK_WIDTH,
                delivered=round(delivered * SPARK_HEIGHT / top),
                failed=round(failed * SPARK_HEIGHT / top),
                skipped=round(skipped * SPARK_HEIGHT / top),
                label=f"{at} UTC: {delivered} delivered, {failed} failed, {skipped} other",
            )
        )
    return bars


@router.get("/channels")
@_refusals
async def channels_page(request: Request) -> Response:
    viewer = viewer_of(request)
    runtime = viewer.runtime
    now = datetime.now(UTC)
    async with runtime.sessions() as session:
        by_hour = await stats.attempts_by_hour(session, now - WINDOW)
        failures = await stats.recent_failures(session, now - WINDOW, per_channel=FAILURES_SHOWN)
    listed = await list_channels(runtime)
    rows = []
    for channel in listed.items:
        hours = by_hour.get(channel.name, {})
        totals: dict[AttemptOutcome, int] = {}
        for count in hours.values():
            for outcome, n in count.items():
                totals[outcome] = totals.get(outcome, 0) + n
        rows.append(
            {
                "c": channel,
                "rate_limit": getattr(runtime.channels[channel.name].config, "rate_limit", None),
                "bars": sparkline(hours, now),
                "totals": totals,
                "failures": failures.get(channel.name, []),
            }
        )
    return render(
        request,
        "channels.html",
        viewer,
        rows=rows,
        spark_width=SPARK_WIDTH * HOURS,
        spark_height=SPARK_HEIGHT,
        bar_width=SPARK_WIDTH - 1,
        outcomes=list(AttemptOutcome),
    )


@router.get("/routes")
@_refusals
async def routes_page(request: Request) -> Response:
    viewer = viewer_of(request)
    runtime = viewer.runtime
    async with runtime.sessions() as session:
        by_status = await stats.routes_by_status(session, datetime.now(UTC) - WINDOW)
    rows = []
    for route in (await list_routes(runtime)).items:
        counts = by_status.get(route.name, {})
        total = sum(counts.values())
        delivered = sum(counts.get(s, 0) for s in DELIVERED)
        failed = sum(counts.get(s, 0) for s in RETRYABLE)
        rows.append(
            {
                "r": route,
                "total": total,
                "delivered": delivered,
                "failed": failed,
                "delivered_share": _share(delivered, total),
                "failed_share": _share(failed, total),
            }
        )
    return render(request, "routes.html", viewer, rows=rows)


DELIVERED = (NotificationStatus.DELIVERED, NotificationStatus.ACKNOWLEDGED)


def _share(part: int, total: int) -> str:
    return f"{100 * part / total:.0f}%" if total else "—"


# --- send a test, bulk actions ---------------------------------------------------------------


def _send_form(
    request: Request,
    viewer: Viewer,
    values: Mapping[str, str],
    errors: Sequence[str] = (),
    status_code: int = 200,
) -> Response:
    config = viewer.runtime.config
    return render(
        request,
        "send.html",
        viewer,
        status_code,
        routes=sorted(config.routes),
        severities=list(Severity),
        values=values,
        errors=errors,
    )


SEND_DEFAULTS = {"subject": "Test from the Herald console", "text": "It works.", "severity": "info"}
RECIPIENT_FIELDS = ("email", "phone", "telegram_chat_id", "webhook_url")


@router.get("/send")
@_refusals
async def send_page(request: Request) -> Response:
    viewer = viewer_of(request)
    if not viewer.admin:
        return _plain("Forbidden: sending a test needs the admin scope.", 403)
    return _send_form(request, viewer, SEND_DEFAULTS)


@router.post("/send")
@_refusals
async def send_test(request: Request) -> Response:
    viewer = viewer_of(request)
    fields = await form_of(request, viewer)
    if not viewer.admin:
        return _plain("Forbidden: sending a test needs the admin scope.", 403)
    recipient = {name: fields[name] for name in RECIPIENT_FIELDS if fields.get(name)}
    body: dict[str, Any] = {
        "route": fields.get("route") or None,
        "subject": fields.get("subject") or None,
        "text": fields.get("text") or None,
        "severity": fields.get("severity") or "info",
        "source": "console",
        "recipient": recipient,
    }
    try:
        request_body = NotificationCreate.model_validate(body)
        stored, _ = await service.accept(
            viewer.runtime, request_body, idempotency_key=None, owner=viewer.name
        )
    except ValidationError as exc:
        errors = [
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()
        ]
        return _send_form(request, viewer, fields, errors, 422)
    except HeraldError as exc:
        return _send_form(request, viewer, fields, [exc.detail], exc.status)
    return RedirectResponse(f"/console/notifications/{stored['id']}?done=sent", status_code=303)


@router.post("/bulk/{action}")
@_refusals
async def bulk(request: Request, action: str) -> Response:
    viewer = viewer_of(request)
    fields = await form_of(request, viewer)
    if action not in ("retry", "cancel"):
        return _plain("Not Found: no such action.", 404)
    if not viewer.admin:
        return _plain(f"Forbidden: bulk {action} needs the admin scope.", 403)
    chosen = filters_of(fields, viewer)
    if chosen.errors:
        return _plain("Unprocessable: " + "; ".join(chosen.errors), 422)
    act = service.retry_matching if action == "retry" else service.cancel_matching
    result = await act(viewer.runtime, chosen.filters, limit=service.BULK_LIMIT)
    return render(
        request,
        "bulk.html",
        viewer,
        action=action,
        result=result,
        back=chosen.link(),
    )
