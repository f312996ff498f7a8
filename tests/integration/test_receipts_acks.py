"""Receipts, confirmation, acknowledgements and escalation (issue 16) through a whole Herald.

The provider fakes are local HTTP servers answering as Twilio's, Meta's and Telegram's APIs do;
the callbacks are signed here exactly as the providers document it (Twilio: base64 HMAC-SHA1 of
the URL and the sorted form parameters, keyed with the auth token; Meta: ``sha256=`` and the hex
HMAC-SHA256 of the raw body, keyed with the app secret), independently of Herald's own code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from app.metrics import REGISTRY
from tests.integration.test_twilio_channel import FROM, MESSAGE_SID, PATH, SID, TOKEN, created
from tests.integration.test_whatsapp_channel import PATH as WA_PATH
from tests.integration.test_whatsapp_channel import PHONE_NUMBER_ID, WAMID, sent
from tests.integration.test_whatsapp_channel import TOKEN as WA_TOKEN
from tests.support.harness import Harness, herald
from tests.support.http_server import HttpServer, serve_http
from tests.support.smtp_server import HOST, Handler

PUBLIC = "http://herald.test"
"""The harness client's base URL: Herald's public URL as the providers reach it."""
APP_SECRET = "meta-app-secret-3b9f1e77c2"
VERIFY_TOKEN = "verify-me-5a1c"
LINK_SECRET = "link-secret-0123456789abcdef0123456789"
TG_TOKEN = "123456:telegram-secret-token"
PHONE = "+14155550100"
SECOND = "wamid.SECONDMESSAGEHBgLMTQxNTU1NTAxMDAVAgARGBI"


def twilio_signed(url: str, form: dict[str, str]) -> dict[str, str]:
    """Headers of a status callback as Twilio signs it."""
    data = url + "".join(key + form[key] for key in sorted(form))
    digest = hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    return {
        "x-twilio-signature": base64.b64encode(digest).decode(),
        "content-type": "application/x-www-form-urlencoded",
    }


def meta_signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


def status_callback(status: str, error_code: str | None = None) -> dict[str, str]:
    form = {
        "AccountSid": SID,
        "ApiVersion": "2010-04-01",
        "From": FROM,
        "MessageSid": MESSAGE_SID,
        "MessageStatus": status,
        "SmsSid": MESSAGE_SID,
        "SmsStatus": status,
        "To": PHONE,
    }
    if error_code is not None:
        form["ErrorCode"] = error_code
    return form


def statuses_body(
    status: str, *, at: int | None = None, code: int | None = None, wamid: str = WAMID
) -> bytes:
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(at if at is not None else int(time.time())),
        "recipient_id": PHONE.removeprefix("+"),
    }
    if code is not None:
        item["errors"] = [{"code": code, "title": "Message undeliverable"}]
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": PHONE_NUMBER_ID},
                            "statuses": [item],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload).encode()


@pytest.fixture
async def twilio() -> AsyncIterator[HttpServer]:
    async with serve_http() as server:
        server.default = (201, {}, created())
        yield server


def sms(api_base: str) -> dict[str, Any]:
    return {
        "type": "twilio",
        "account_sid": SID,
        "auth_token": TOKEN,
        "from_number": FROM,
        "api_base": api_base,
    }


def email(port: int) -> dict[str, Any]:
    return {"type": "smtp", "host": HOST, "port": port, "from": "alerts@herald.test"}


def counted(channel: str, result: str) -> float:
    """``herald_receipts_total`` of this process so far (tests compare before and after)."""
    value = REGISTRY.get_sample_value(
        "herald_receipts_total", {"channel": channel, "result": result}
    )
    return value or 0.0


async def state(h: Harness, notification_id: str) -> tuple[str, list[str]]:
    body = await h.get(notification_id)
    return body["status"], [hop["state"] for hop in body["hops"]]


# --- Twilio: receipts and confirmation ---------------------------------------------------------


async def test_twilio_undelivered_receipt_falls_through_to_email(
    db_url: str, twilio: HttpServer, plain_server: int, handler: Handler
) -> None:
    config = {
        "server": {"public_url": PUBLIC},
        "channels": {"sms": sms(twilio.base_url), "email": email(plain_server)},
        "routes": {"pager": {"channels": ["sms", "email"], "confirm": {"within": "2m"}}},
    }
    async with herald(db_url, config) as h:
        created_ = await h.send(
            route="pager", recipient={"phone": PHONE, "email": "ops@example.test"}, text="down"
        )
        nid = created_["id"]
        await h.run_worker()
        assert await state(h, nid) == ("pending", ["awaiting_confirmation", "pending"])
        [request] = twilio.requests_to(PATH)
        callback = f"{PUBLIC}/v1/inbound/twilio/sms"
        assert parse_qs(request.body.decode())["StatusCallback"] == [callback]
        assert handler.received == []

        refused, duplicate = counted("sms", "refused"), counted("sms", "duplicate")
        # A forged signature is refused, and changes nothing.
        form = status_callback("undelivered", "21610")
        forged = {**twilio_signed(callback, form), "x-twilio-signature": "AAAA"}
        answer = await h.client.post(
            "/v1/inbound/twilio/sms", content=urlencode(form), headers=forged
        )
        assert answer.status_code == 403
        assert "21610" not in answer.text and MESSAGE_SID not in answer.text
        unsigned = {"content-type": "application/x-www-form-urlencoded"}
        answer = await h.client.post(
            "/v1/inbound/twilio/sms", content=urlencode(form), headers=unsigned
        )
        assert answer.status_code == 401
        assert await state(h, nid) == ("pending", ["awaiting_confirmation", "pending"])

        answer = await h.client.post(
            "/v1/inbound/twilio/sms", content=urlencode(form), headers=twilio_signed(callback, form)
        )
        assert answer.status_code == 200, answer.text
        await h.run_worker()  # due at once: the receipt settled the hold
        body = await h.get(nid)
        assert body["status"] == "delivered" and body["delivered_via"] == "email"
        assert [hop["state"] for hop in body["hops"]] == ["failed", "delivered"]
        [mail] = handler.received
        assert mail.rcpt_tos == ["ops@example.test"]
        first, second = await h.attempts(nid)
        assert (first["channel"], first["outcome"]) == ("sms", "failed")
        assert first["error"]["code"] == "receipt_failed"
        assert "21610" in first["error"]["message"]
        assert first["receipt"]["status"] == "undelivered"
        assert first["receipt"]["code"] == "21610"
        assert (second["channel"], second["outcome"], second["receipt"]) == (
            "email",
            "delivered",
            None,
        )

        # The provider retrying the same callback changes nothing more.
        again = await h.client.post(
            "/v1/inbound/twilio/sms", content=urlencode(form), headers=twilio_signed(callback, form)
        )
        assert again.status_code == 200
        assert counted("sms", "refused") - refused == 2
        assert counted("sms", "duplicate") - duplicate == 1


async def test_no_receipt_within_the_window_is_a_receipt_timeout(
    db_url: str, twilio: HttpServer
) -> None:
    config = {
        "server": {"public_url": PUBLIC},
        "channels": {"sms": sms(twilio.base_url), "console": {"type": "log"}},
        "routes": {"pager": {"channels": ["sms", "console"], "confirm": {"within": "2s"}}},
    }
    async with herald(db_url, config) as h:
        nid = (await h.send(route="pager", recipient={"phone": PHONE}, text="x"))["id"]
        await h.run_worker()
        assert await state(h, nid) == ("pending", ["awaiting_confirmation", "pending"])
        assert await h.run_worker() == 0  # not due before its window ends
        h.clock.advance(2.1)
        await h.run_worker()
        assert await state(h, nid) == ("delivered", ["failed", "delivered"])
        first, _ = await h.attempts(nid)
        assert first["error"]["code"] == "receipt_timeout"


async def test_a_delivered_receipt_confirms_and_an_unknown_id_is_kept(
    db_url: str, twilio: HttpServer
) -> None:
    config = {
        "server": {"public_url": PUBLIC},
        "channels": {"sms": sms(twilio.base_url), "console": {"type": "log"}},
        "routes": {"pager": {"channels": ["sms", "console"], "confirm": {"within": "2m"}}},
    }
    callback = f"{PUBLIC}/v1/inbound/twilio/sms"
    async with herald(db_url, config) as h:
        # The receipt comes before the send is saved (here: before it is even made).
        unmatched = counted("sms", "unmatched")
        form = status_callback("delivered")
        answer = await h.client.post(
            "/v1/inbound/twilio/sms", content=urlencode(form), headers=twilio_signed(callback, form)
        )
        assert answer.status_code == 200
        assert counted("sms", "unmatched") - unmatched == 1
        nid = (await h.send(route="pager", recipient={"phone": PHONE}, text="x"))["id"]
        await h.run_worker()  # the save matches the early receipt: due again at once
        await h.run_worker()
        body = await h.get(nid)
        assert (body["status"], body["delivered_via"]) == ("delivered", "sms")
        [attempt] = await h.attempts(nid)
        assert attempt["outcome"] == "delivered"
        assert attempt["receipt"]["status"] == "delivered"


# --- WhatsApp ----------------------------------------------------------------------------------


def whatsapp(api_base: str) -> dict[str, Any]:
    return {
        "type": "whatsapp",
        "access_token": WA_TOKEN,
        "phone_number_id": PHONE_NUMBER_ID,
        "api_base": api_base,
        "app_secret": APP_SECRET,
        "verify_token": VERIFY_TOKEN,
    }


async def test_whatsapp_handshake_failed_status_and_read(db_url: str) -> None:
    async with serve_http() as meta:
        meta.default = (200, {}, sent())
        config = {
            "server": {"public_url": PUBLIC},
            "channels": {"wa": whatsapp(meta.base_url), "console": {"type": "log"}},
            "routes": {
                "confirmed": {"channels": ["wa", "console"], "confirm": {"within": "5m"}},
                "plain": {"channels": ["wa", "console"]},
            },
        }
        async with herald(db_url, config) as h:
            hub = {"hub.mode": "subscribe", "hub.challenge": "1158201444"}
            ok = await h.client.get(
                "/v1/inbound/whatsapp/wa", params={**hub, "hub.verify_token": VERIFY_TOKEN}
            )
            assert (ok.status_code, ok.text) == (200, "1158201444")
            wrong = await h.client.get(
                "/v1/inbound/whatsapp/wa", params={**hub, "hub.verify_token": "guess"}
            )
            assert wrong.status_code == 403 and "1158201444" not in wrong.text

            nid = (await h.send(route="confirmed", recipient={"phone": PHONE}, text="x"))["id"]
            await h.run_worker()
            assert meta.requests_to(WA_PATH)
            failed = statuses_body("failed", code=131026)
            bad = await h.client.post(
                "/v1/inbound/whatsapp/wa",
                content=failed,
                headers={**meta_signed(failed), "x-hub-signature-256": "sha256=00"},
            )
            assert bad.status_code == 403
            stale = statuses_body("failed", at=int(time.time()) - 30 * 86400)
            old = await h.client.post(
                "/v1/inbound/whatsapp/wa", content=stale, headers=meta_signed(stale)
            )
            assert old.status_code == 403
            assert await state(h, nid) == ("pending", ["awaiting_confirmation", "pending"])
            answer = await h.client.post(
                "/v1/inbound/whatsapp/wa", content=failed, headers=meta_signed(failed)
            )
            assert answer.status_code == 200
            await h.run_worker()
            assert await state(h, nid) == ("delivered", ["failed", "delivered"])
            first, _ = await h.attempts(nid)
            assert first["receipt"]["status"] == "failed"
            assert first["receipt"]["code"] == "131026"

        # Without confirm, a read receipt is recorded on the delivered attempt.
        meta.default = (200, {}, sent(SECOND))
        async with herald(db_url, config) as h:
            nid = (await h.send(route="plain", recipient={"phone": PHONE}, text="y"))["id"]
            await h.run_worker()
            assert (await h.get(nid))["status"] == "delivered"
            for status in ("delivered", "read", "sent"):  # out of order, as Meta warns
                payload = statuses_body(status, wamid=SECOND)
                answer = await h.client.post(
                    "/v1/inbound/whatsapp/wa", content=payload, headers=meta_signed(payload)
                )
                assert answer.status_code == 200
            [attempt] = await h.attempts(nid)
            assert attempt["outcome"] == "delivered"
            assert attempt["receipt"]["status"] == "read"


# --- escalation and acknowledgements -----------------------------------------------------------


def telegram_ok() -> tuple[int, dict[str, str], dict[str, Any]]:
    return (200, {}, {"ok": True, "result": {"message_id": 42, "chat": {"id": -100}}})


def escalation(tg_base: str, sms_base: str) -> dict[str, Any]:
    return {
        "channels": {
            "tg": {
                "type": "telegram",
                "token": TG_TOKEN,
                "api_base": tg_base,
                "default_chat_id": "-100",
            },
            "sms": sms(sms_base),
        },
        "routes": {
            "oncall": {
                "strategy": "escalate",
                "channels": [{"channel": "tg", "ack_within": "2s"}, "sms"],
            }
        },
    }


async def test_escalation_without_an_ack_pages_by_sms_after_ack_within(
    db_url: str, twilio: HttpServer
) -> None:
    async with serve_http() as tg:
        tg.default = telegram_ok()
        async with herald(db_url, escalation(tg.base_url, twilio.base_url)) as h:
            nid = (await h.send(route="oncall", recipient={"phone": PHONE}, text="db down"))["id"]
            await h.run_worker()
            [message] = tg.received
            keyboard = message.json()["reply_markup"]["inline_keyboard"]
            assert keyboard == [[{"text": "Acknowledge", "callback_data": f"ack:{nid}"}]]
            assert await state(h, nid) == ("pending", ["awaiting_ack", "pending"])
            body = await h.get(nid)
            assert body["next_attempt_at"] is not None
            h.clock.advance(1.5)
            assert await h.run_worker() == 0
            assert twilio.requests_to(PATH) == []
            h.clock.advance(0.6)
            await h.run_worker()
            assert len(twilio.requests_to(PATH)) == 1
            assert await state(h, nid) == ("delivered", ["unacknowledged", "delivered"])


async def test_an_api_ack_stops_the_escalation(db_url: str, twilio: HttpServer) -> None:
    async with serve_http() as tg:
        tg.default = telegram_ok()
        async with herald(db_url, escalation(tg.base_url, twilio.base_url)) as h:
            nid = (await h.send(route="oncall", recipient={"phone": PHONE}, text="db down"))["id"]
            await h.run_worker()
            first, second = await asyncio.gather(
                h.client.post(f"/v1/notifications/{nid}/ack", json={"by": "alice"}),
                h.client.post(f"/v1/notifications/{nid}/ack", json={"by": "bob"}),
            )
            answers = sorted([first, second], key=lambda r: r.status_code)
            assert [r.status_code for r in answers] == [200, 409]
            winner = answers[0].json()["acknowledgement"]["by"]
            assert answers[1].json()["type"] == "urn:herald:problem:already-acknowledged"
            assert winner in answers[1].json()["detail"]
            h.clock.advance(5)
            assert await h.run_worker() == 0
            assert twilio.requests_to(PATH) == []
            body = await h.get(nid)
            assert body["status"] == "acknowledged"
            assert body["hops"][0]["state"] == "delivered"
            assert body["acknowledgement"]["via"] == "api"
            assert body["acknowledgement"]["by"] == winner
            assert body["next_attempt_at"] is None


async def test_an_email_link_acknowledges_by_post_only(
    db_url: str, twilio: HttpServer, plain_server: int, handler: Handler
) -> None:
    config = {
        "server": {"public_url": PUBLIC, "secret": LINK_SECRET},
        "channels": {"email": email(plain_server), "sms": sms(twilio.base_url)},
        "routes": {
            "oncall": {
                "strategy": "escalate",
                "channels": [{"channel": "email", "ack_within": "2s"}, "sms"],
            }
        },
    }
    async with herald(db_url, config) as h:
        recipient = {"email": "ops@example.test", "phone": PHONE}
        nid = (await h.send(route="oncall", recipient=recipient, subject="Disk", text="93%"))["id"]
        await h.run_worker()
        [mail] = handler.received
        text = mail.message.get_body(("plain",)).get_content()
        url = re.search(r"Acknowledge: (\S+)", text)
        assert url is not None and url.group(1).startswith(f"{PUBLIC}/v1/ack?")
        parts = urlsplit(url.group(1))
        link = f"{parts.path}?{parts.query}"

        page = await h.client.get(link)  # what a link scanner does
        assert page.status_code == 200 and 'method="post"' in page.text
        assert (await h.get(nid))["status"] == "pending"

        forged = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        assert (await h.client.post(forged)).status_code == 403
        assert (await h.get(nid))["status"] == "pending"

        done = await h.client.post(link)
        assert done.status_code == 200 and "Acknowledged" in done.text
        body = await h.get(nid)
        assert body["status"] == "acknowledged"
        assert body["acknowledgement"]["via"] == "email"
        assert body["acknowledgement"]["by"] == "ops@example.test"
        again = await h.client.post(link)
        assert "Already acknowledged" in again.text
        h.clock.advance(5)
        assert await h.run_worker() == 0
        assert twilio.requests_to(PATH) == []
