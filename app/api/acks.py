"""``/v1/ack``: the signed acknowledgement links of emails and ntfy's action button.

``GET`` shows a page with the notification's subject and a button; only the ``POST`` the button
sends acknowledges, so a link scanner that follows every link in a mail acknowledges nothing.
ntfy's action POSTs directly. The link's signature is the credential (``app.security.links``):
no API key. A forged, altered or expired link is refused (403), and so is every link while
``server.public_url`` or ``server.secret`` is unset (404). Answers are small HTML pages for a
person; not in the OpenAPI document.
"""

from __future__ import annotations

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app import metrics, service
from app.api.deps import RuntimeDep
from app.channels.ntfy import NtfyChannel
from app.domain import AckOutcome, AckVia, StoredNotification
from app.errors import NotificationNotFound
from app.runtime import Runtime
from app.security.links import ACK_PATH, LinkClaim

logger = logging.getLogger("herald.inbound")

router = APIRouter(prefix=ACK_PATH, include_in_schema=False)

Part = Annotated[str, Query(max_length=200)]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 3em auto; padding: 0 1em">
<h1>{title}</h1>
{body}
</body></html>
"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=html.escape(title), body=body), status_code=status)


def _claim(runtime: Runtime, n: str, c: str, e: str, s: str) -> LinkClaim | HTMLResponse:
    links = runtime.ack_links
    if links is None:
        return page("Not found", "<p>Acknowledgement links are not enabled here.</p>", 404)
    claim = links.verify(n, c, e, s)
    if claim is None:
        metrics.acks.labels(_via(runtime, c), "refused").inc()
        logger.warning("refused an acknowledgement link: forged, altered or expired")
        return page("Link not valid", "<p>This link is not valid, or it has expired.</p>", 403)
    return claim


def _via(runtime: Runtime, channel: str) -> AckVia:
    return AckVia.NTFY if isinstance(runtime.channels.get(channel), NtfyChannel) else AckVia.EMAIL


@router.get("")
async def ack_page(
    request: Request, runtime: RuntimeDep, n: Part = "", c: Part = "", e: Part = "", s: Part = ""
) -> HTMLResponse:
    """The page a link opens: what it is about, and a button that acknowledges."""
    claim = _claim(runtime, n, c, e, s)
    if isinstance(claim, HTMLResponse):
        return claim
    async with runtime.sessions() as session:
        try:
            notification = await service.get(session, claim.notification_id)
        except NotificationNotFound:
            return page("Not found", "<p>This notification no longer exists.</p>", 404)
    subject = html.escape(notification["subject"] or notification["text"] or "a notification")
    if notification["acknowledged_at"] is not None:
        return page("Already acknowledged", _acknowledged(notification))
    action = html.escape(str(request.url), quote=True)
    return page(
        "Acknowledge?",
        f"<p><strong>{subject}</strong></p>"
        f'<form method="post" action="{action}">'
        '<button type="submit" style="font-size: 1.2em">Acknowledge</button></form>',
    )


@router.post("")
async def ack_by_link(
    runtime: RuntimeDep, n: Part = "", c: Part = "", e: Part = "", s: Part = ""
) -> HTMLResponse:
    """Acknowledge: the page's button, or ntfy's action."""
    claim = _claim(runtime, n, c, e, s)
    if isinstance(claim, HTMLResponse):
        return claim
    via = _via(runtime, claim.channel)
    by = await _who(runtime, claim, via)
    result = await service.acknowledge(runtime, claim.notification_id, by=by, via=via)
    notification = result.notification
    if result.outcome is AckOutcome.NOT_FOUND or notification is None:
        return page("Not found", "<p>This notification no longer exists.</p>", 404)
    if result.outcome is AckOutcome.ACKNOWLEDGED:
        return page("Acknowledged", "<p>Thank you: nobody else will be alerted for this.</p>")
    if result.outcome is AckOutcome.ALREADY_ACKNOWLEDGED:
        return page("Already acknowledged", _acknowledged(notification))
    status = html.escape(notification["status"])
    return page(
        "Too late", f"<p>This notification is {status}: it can no longer be acknowledged.</p>"
    )


async def _who(runtime: Runtime, claim: LinkClaim, via: AckVia) -> str:
    """Who a link acknowledges for: the ntfy topic, or the address the email went to."""
    channel = runtime.channels.get(claim.channel)
    if isinstance(channel, NtfyChannel):
        return f"ntfy:{channel.config.topic}"
    async with runtime.sessions() as session:
        try:
            notification = await service.get(session, claim.notification_id)
        except NotificationNotFound:
            return claim.channel
    email = notification["recipient"].get("email")
    return email if isinstance(email, str) and email else claim.channel


def _acknowledged(notification: StoredNotification) -> str:
    by = html.escape(notification["acknowledged_by"] or "someone")
    at = notification["acknowledged_at"]
    when = html.escape(at.isoformat(timespec="seconds")) if at else ""
    return f"<p>{by} acknowledged it at {when}.</p>"
