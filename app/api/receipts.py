"""``/v1/inbound/…``: what providers send back (receipts), verified by each provider's own
signature, never by an API key.

Anything unsigned is refused with 401, anything forged or stale with 403, before the body is
used; the refusal never echoes the body, its log line holds none of it, and it is counted
(``herald_receipts_total{result="refused"}``). A verified callback is answered 200 whatever it
says (a provider retries anything else): an unknown message id is kept and counted
``unmatched``. The endpoint of a channel that takes no receipts (``server.public_url`` unset;
for WhatsApp, no ``app_secret``) is 404. Not in the OpenAPI document: providers call these,
not API clients (README, "Receipts, acknowledgements and escalation").
"""

from __future__ import annotations

import hmac
import logging
from typing import TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from app import metrics
from app.api.body import parse_json
from app.api.deps import RuntimeDep
from app.channels.base import ChannelType
from app.channels.twilio import TwilioChannel
from app.channels.whatsapp import WhatsAppChannel
from app.delivery.orchestrator import utcnow
from app.errors import BadSignature, NotFound, Unprocessable, Unsigned
from app.inbound import twilio, whatsapp
from app.runtime import Runtime

logger = logging.getLogger("herald.inbound")

router = APIRouter(prefix="/v1/inbound", include_in_schema=False)

C = TypeVar("C", bound=ChannelType)

CHALLENGE_LIMIT = 256
"""The longest ``hub.challenge`` echoed back."""


def _channel(runtime: Runtime, name: str, kind: type[C]) -> C:
    channel = runtime.channels.get(name)
    if not isinstance(channel, kind) or not channel.sends_receipts:
        raise NotFound(f"no {kind.type_name} channel {name!r} takes receipts here")
    return channel


def _refuse(channel: str, provider: str, error: Unsigned | BadSignature) -> None:
    metrics.receipts.labels(channel, "refused").inc()
    logger.warning("refused a %s callback for channel %s: %s", provider, channel, error.detail)
    raise error


def _signature(request: Request, channel: str, provider: str, header: str) -> str:
    """The callback's signature header; refused (401) when it has none."""
    given = request.headers.get(header)
    if not given:
        _refuse(channel, provider, Unsigned(f"no {header} header"))
    return given or ""


@router.post("/twilio/{channel}")
async def twilio_status(channel: str, request: Request, runtime: RuntimeDep) -> Response:
    sms = _channel(runtime, channel, TwilioChannel)
    given = _signature(request, channel, "twilio", twilio.SIGNATURE_HEADER)
    raw = await request.body()
    try:
        params = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        params = []
    url = sms.status_callback or ""
    token = sms.config.auth_token.get_secret_value()
    if not twilio.signed(token, url, params, given):
        _refuse(channel, "twilio", BadSignature("the signature does not match the request"))
    found = twilio.receipt(channel, params, utcnow())
    if found is None:
        metrics.receipts.labels(channel, "ignored").inc()
    else:
        await runtime.receipts.record(channel, [found])
    return Response(status_code=200)


@router.get("/whatsapp/{channel}")
async def whatsapp_verification(channel: str, request: Request, runtime: RuntimeDep) -> Response:
    """Meta's verification handshake: answer the challenge if the token is ours."""
    wa = _channel(runtime, channel, WhatsAppChannel)
    query = request.query_params
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge", "")
    expected = wa.config.verify_token.get_secret_value() if wa.config.verify_token else ""
    if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(
        expected.encode(), token.encode("utf-8", "replace")
    ):
        _refuse(channel, "whatsapp", BadSignature("wrong hub.mode or hub.verify_token"))
    if not challenge or len(challenge) > CHALLENGE_LIMIT:
        raise Unprocessable(
            "hub.challenge is missing or too long",
            errors=[{"loc": ["query", "hub.challenge"], "msg": "1-256 characters"}],
        )
    return PlainTextResponse(challenge)


@router.post("/whatsapp/{channel}")
async def whatsapp_statuses(channel: str, request: Request, runtime: RuntimeDep) -> Response:
    wa = _channel(runtime, channel, WhatsAppChannel)
    given = _signature(request, channel, "whatsapp", whatsapp.SIGNATURE_HEADER)
    raw = await request.body()
    secret = wa.config.app_secret.get_secret_value() if wa.config.app_secret else ""
    if not whatsapp.signed(secret, raw, given):
        _refuse(channel, "whatsapp", BadSignature("the signature does not match the body"))
    payload = parse_json(raw)
    now = utcnow()
    receipts = []
    stale = ignored = 0
    for status in whatsapp.statuses(payload):
        found = whatsapp.receipt(channel, status, now)
        if found == "stale":
            stale += 1
        elif isinstance(found, str):
            ignored += 1
        else:
            receipts.append(found)
    if ignored:
        metrics.receipts.labels(channel, "ignored").inc(ignored)
    if stale and not receipts:
        metrics.receipts.labels(channel, "refused").inc(stale - 1)
        _refuse(channel, "whatsapp", BadSignature("every status is older than a week: a replay"))
    if stale:
        metrics.receipts.labels(channel, "refused").inc(stale)
    if receipts:
        await runtime.receipts.record(channel, receipts)
    return Response(status_code=200)
