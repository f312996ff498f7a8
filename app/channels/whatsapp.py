"""``whatsapp``: free-form text messages through Meta's WhatsApp Cloud API.

One ``POST {api_base}/{api_version}/{phone_number_id}/messages`` with
``Authorization: Bearer <access_token>`` and the JSON body ``{"messaging_product": "whatsapp",
"recipient_type": "individual", "to": "<digits>", "type": "text", "text": {"preview_url": …,
"body": …}}``. Meta answers ``200`` with ``{"messaging_product", "contacts": [{"input",
"wa_id"}], "messages": [{"id": "wamid…"}]}``; ``messages[0].id`` is recorded as the provider
message id. Delivery and read receipts arrive later by webhook: with ``app_secret`` and
``verify_token`` set on the channel and ``server.public_url`` set, Meta's webhook for the app
(its callback URL ``{public_url}/v1/inbound/whatsapp/{channel}``, set in the App Dashboard) is
verified and read by ``app.inbound.whatsapp`` (receipts).

The recipient is ``recipient.phone`` in E.164 (see ``app.channels.phone``), sent as digits
without the ``+``. The body is the subject and the text, at most 4096 characters; a longer body
is cut and ends with ``…`` rather than split, because each part would be a separate message with
its own id and its own chance to fail, and the per-recipient pair rate limit (131056) makes a
burst of parts to one user fail anyway.

Free-form text is only accepted inside the 24-hour customer-service window, i.e. within 24 h of
the user's last message to the business. Outside it Meta refuses with 131047 and only an approved
template can be sent: 131047 is ``permanent`` for the notification, and the route's next channel
takes over. A notification rendered from a Herald template whose ``whatsapp`` override names an
approved template (``name``, ``language``, ``parameters``: ``app.templates``) is sent as that
template message instead, ``{"type": "template", "template": {"name", "language": {"code"},
"components": [{"type": "body", "parameters": [{"type": "text", "text"}, …]}]}}``, which Meta
delivers outside the window too.

Errors come as Graph API errors ``{"error": {"message", "type", "code", "error_subcode",
"error_data": {"details"}, "fbtrace_id"}}`` and are classified by their ``code`` (Meta asks
integrations to rely on the code, not on HTTP statuses or titles), then by HTTP status. The
attempt code is ``whatsapp_<code>``, or ``http_<status>`` for an answer that is not a Graph error:

- ``permanent``: 131026 undeliverable (not a WhatsApp user, outdated app, terms not accepted),
  131047 outside the customer-service window, 131051 unsupported message type, 100 invalid
  parameter, 131021 recipient is the sender, 131030 recipient not on a test number's allowed
  list, 130497 messaging users in the recipient's country is restricted.
- ``config``: 190 access token expired or invalid, 0 / 3 / 10 / 200-299 / 131005 missing
  permission, 368 / 131031 account restricted or locked, 131042 payment problem, 133010 phone
  number not registered, and 100 with ``error_subcode`` 33 (the ``phone_number_id`` does not
  exist or is not reachable with this token: code ``whatsapp_unknown_phone_number_id``).
- ``rate_limited``: 4 app call limit, 80007 account limit, 130429 throughput limit, 131048 spam
  rate limit, 131056 pair rate limit, and HTTP 429; ``Retry-After`` is honoured if present.
- ``transient``: 1 / 2 / 131000 / 131016 unknown error or service unavailable, HTTP 5xx.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx
from pydantic import SecretStr, field_validator, model_validator

from app.channels.base import (
    ChannelConfig,
    ChannelType,
    DeliveryResult,
    ErrorClass,
    Message,
    api_base_setting,
    check_secret_set,
    stripped_setting,
)
from app.channels.http_errors import (
    answer_failure,
    classify_status,
    failure_from_response,
    json_int,
    json_object,
    post_and_classify,
)
from app.channels.phone import number_and_body, recipient_number

BODY_LIMIT = 4096
"""Meta's limit on ``text.body`` (characters); longer bodies are cut with an ellipsis."""

DEFAULT_API_VERSION = "v26.0"
"""The newest Graph API version (released 2026-07-29); each version lives about two years."""

_API_VERSION = re.compile(r"v[0-9]+\.[0-9]+")
_NUMERIC_ID = re.compile(r"[0-9]+")


class WhatsAppConfig(ChannelConfig):
    type: Literal["whatsapp"]
    access_token: SecretStr
    """A system-user access token with the whatsapp_business_messaging permission."""
    phone_number_id: str
    """The numeric ID of the sending business number (WhatsApp Manager), not the number."""
    api_version: str = DEFAULT_API_VERSION
    """Graph API version in the URL path, ``v<major>.<minor>``."""
    preview_url: bool = False
    """Ask WhatsApp to render a link preview for the first URL in the text."""
    api_base: str = "https://graph.facebook.com"
    app_secret: SecretStr | None = None
    """The Meta app's secret: webhooks (receipts) are signed with it (``X-Hub-Signature-256``)."""
    verify_token: SecretStr | None = None
    """The token Meta's webhook verification handshake (``hub.verify_token``) must present."""

    @model_validator(mode="after")
    def _webhook_pair(self) -> WhatsAppConfig:
        if (self.app_secret is None) != (self.verify_token is None):
            raise ValueError("app_secret and verify_token go together (the webhook needs both)")
        for secret, name in ((self.app_secret, "app_secret"), (self.verify_token, "verify_token")):
            if secret is not None:
                check_secret_set(secret, name)
        return self

    @field_validator("access_token")
    @classmethod
    def _token_set(cls, value: SecretStr) -> SecretStr:
        return check_secret_set(value, "access_token")

    @field_validator("phone_number_id")
    @classmethod
    def _numeric_id(cls, value: str) -> str:
        return stripped_setting(
            value,
            "phone_number_id must be the numeric phone number ID from WhatsApp Manager "
            "(not the phone number itself)",
            _NUMERIC_ID,
        )

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        return stripped_setting(value, "api_version must look like v26.0", _API_VERSION)

    @field_validator("api_base")
    @classmethod
    def _valid_api_base(cls, value: str) -> str:
        return api_base_setting(value)


_P, _C, _R, _T = (
    ErrorClass.PERMANENT,
    ErrorClass.CONFIG,
    ErrorClass.RATE_LIMITED,
    ErrorClass.TRANSIENT,
)

_CODES: dict[int, tuple[ErrorClass, str]] = {
    131026: (_P, "message undeliverable to this recipient"),
    131047: (
        _P,
        "more than 24 hours since the recipient last wrote: free-form text is only allowed "
        "inside the customer-service window",
    ),
    131051: (_P, "unsupported message type"),
    100: (_P, "invalid parameter"),
    131021: (_P, "the recipient is the sending number"),
    131030: (_P, "the recipient is not on the test number's allowed list"),
    130497: (_P, "the account may not message users in the recipient's country"),
    190: (_C, "access token expired or invalid"),
    0: (_C, "authentication failed: check access_token"),
    3: (_C, "the app lacks a capability or permission"),
    10: (_C, "permission denied: check the token's permissions"),
    131005: (_C, "permission denied: check the token's permissions"),
    368: (_C, "the business account is blocked for policy violations"),
    131031: (_C, "the business account is locked"),
    131042: (_C, "business payment problem"),
    133010: (_C, "the business phone number is not registered"),
    4: (_R, "the app reached its API call rate limit"),
    80007: (_R, "the WhatsApp Business Account reached its rate limit"),
    130429: (_R, "the number's message throughput limit was reached"),
    131048: (_R, "spam rate limit: too many recent messages were blocked or flagged"),
    131056: (_R, "too many messages to this recipient in a short time (pair rate limit)"),
    1: (_T, "unknown error"),
    2: (_T, "service temporarily unavailable"),
    131000: (_T, "unknown error"),
    131016: (_T, "service temporarily unavailable"),
}
_CODES.update({code: (_C, "permission not granted or removed") for code in range(200, 300)})

UNKNOWN_OBJECT_SUBCODE = 33
"""Graph's subcode for "object does not exist or does not support this operation"."""


def graph_error(response: httpx.Response) -> dict[str, Any] | None:
    """The ``error`` object of a Graph API error body, if the answer is one."""
    error = (json_object(response) or {}).get("error")
    if not isinstance(error, dict) or json_int(error.get("code")) is None:
        return None
    return error


def failure(response: httpx.Response) -> DeliveryResult:
    """The failed result for a non-2xx answer from the Cloud API."""
    error = graph_error(response)
    if error is None:
        return failure_from_response(response)
    code: int = error["code"]
    status = response.status_code
    subcode = error.get("error_subcode")
    if code == 100 and subcode == UNKNOWN_OBJECT_SUBCODE:
        error_class, hint = ErrorClass.CONFIG, "unknown phone_number_id (or no access to it)"
        error_code = "whatsapp_unknown_phone_number_id"
    else:
        error_class, hint = _CODES.get(code, (classify_status(status) or ErrorClass.PERMANENT, ""))
        error_code = f"whatsapp_{code}"
    message = f"WhatsApp error {code} (HTTP {status})"
    text = error.get("message")
    if isinstance(text, str) and text:
        message += f": {text}"
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    if isinstance(details, str) and details:
        message += f" - {details}"
    if hint:
        message += f" [{hint}]"
    return answer_failure(response, error_class, error_code, message)


def message_id(response: httpx.Response) -> str | None:
    """``messages[0].id`` of a send answer."""
    messages = (json_object(response) or {}).get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        found = messages[0].get("id")
        return found if isinstance(found, str) else None
    return None


def approved_template(message: Message) -> dict[str, Any] | None:
    """The ``template`` object of a template message, when the notification's template has a
    ``whatsapp`` override naming an approved template: ``{"name", "language": {"code"},
    "components": [{"type": "body", "parameters": [{"type": "text", "text"}, …]}]}``."""
    override = message.overrides.get(WhatsAppChannel.type_name) or {}
    name, language = override.get("name"), override.get("language")
    if not isinstance(name, str) or not isinstance(language, str):
        return None
    approved: dict[str, Any] = {"name": name, "language": {"code": language}}
    parameters = override.get("parameters") or []
    if parameters:
        approved["components"] = [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": str(text)} for text in parameters],
            }
        ]
    return approved


INBOUND_PATH = "/v1/inbound/whatsapp/{channel}"
"""Where Meta's webhook for a channel's app is pointed (the App Dashboard's callback URL)."""


class WhatsAppChannel(ChannelType):
    type_name = "whatsapp"
    config_model = WhatsAppConfig
    config: WhatsAppConfig

    @property
    def sends_receipts(self) -> bool:
        return self.context.public_url is not None and self.config.app_secret is not None

    @property
    def messages_url(self) -> str:
        cfg = self.config
        return f"{cfg.api_base}/{cfg.api_version}/{cfg.phone_number_id}/messages"

    async def send(self, message: Message) -> DeliveryResult:
        cfg = self.config
        approved = approved_template(message)
        if approved is not None:
            to = recipient_number(message)
            if isinstance(to, DeliveryResult):
                return to
            content: dict[str, Any] = {"type": "template", "template": approved}
        else:
            prepared = number_and_body(message, BODY_LIMIT)
            if isinstance(prepared, DeliveryResult):
                return prepared
            to, body = prepared
            content = {"type": "text", "text": {"preview_url": cfg.preview_url, "body": body}}
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.removeprefix("+"),
            **content,
        }
        return await post_and_classify(
            self.context.http,
            self.messages_url,
            failure=failure,
            message_id=message_id,
            json=payload,
            headers={"authorization": f"Bearer {cfg.access_token.get_secret_value()}"},
            timeout=cfg.timeout,
        )
