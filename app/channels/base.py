"""What every channel type shares: the message it sends, the result it returns, its config.

A channel never returns a bare bool. ``send`` answers a ``DeliveryResult`` that is either a
delivery or a failure carrying an error class (``ErrorClass``) and a stable code. Exceptions
escaping ``send`` are a bug in the adapter; the orchestrator still records them as ``transient``
so a broken adapter cannot lose a notification.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator

from app.channels.addresses import checked_e164, email_problem
from app.channels.outbound import Outbound
from app.channels.text import Unit, html_to_text, prefix
from app.clock import SYSTEM_CLOCK, Clock
from app.domain import ErrorClass as ErrorClass  # re-exported for channel plugins
from app.durations import Duration as Duration  # re-exported for channel plugins' settings
from app.quiet import QuietHours
from app.ratelimit import RateLimit, parse_rate
from app.security.links import AckLinks
from app.security.redaction import redact

EXCERPT_LIMIT = 2048


@dataclass(frozen=True, slots=True)
class DeliveryError:
    cls: ErrorClass
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The outcome of one try of one channel."""

    error: DeliveryError | None = None
    provider_status: int | None = None
    provider_message_id: str | None = None
    response_excerpt: str | None = None
    """What the provider answered, whole: redacted and cut by ``redact_result``."""
    retry_after: float | None = None
    """Seconds the provider asked us to wait (``rate_limited`` only)."""

    @property
    def delivered(self) -> bool:
        return self.error is None

    @classmethod
    def ok(
        cls,
        *,
        provider_status: int | None = None,
        provider_message_id: str | None = None,
        response_excerpt: str | None = None,
    ) -> DeliveryResult:
        return cls(
            provider_status=provider_status,
            provider_message_id=provider_message_id,
            response_excerpt=response_excerpt,
        )

    @classmethod
    def failed(
        cls,
        error_class: ErrorClass,
        code: str,
        message: str,
        *,
        provider_status: int | None = None,
        response_excerpt: str | None = None,
        retry_after: float | None = None,
    ) -> DeliveryResult:
        return cls(
            error=DeliveryError(error_class, code, message),
            provider_status=provider_status,
            response_excerpt=response_excerpt,
            retry_after=retry_after,
        )

    @classmethod
    def skipped(cls, code: str, message: str) -> DeliveryResult:
        return cls.failed(ErrorClass.SKIPPED, code, message)


def redact_result(result: DeliveryResult, secrets: Sequence[str]) -> DeliveryResult:
    """``result`` as it may be stored, logged or shown: ``secrets`` masked in its error message
    and its excerpt, then the excerpt cut to ``EXCERPT_LIMIT`` bytes (masking first, so no cut
    leaves a piece of a secret). Channels return what the provider said; the orchestrator calls
    this once per attempt, the only place a result is redacted."""
    if result.error is not None:
        error = replace(result.error, message=redact(result.error.message, secrets))
        result = replace(result, error=error)
    if result.response_excerpt is not None:
        text = redact(result.response_excerpt, secrets)
        result = replace(result, response_excerpt=prefix(text, EXCERPT_LIMIT, Unit.UTF8))
    return result


def check_http_url(value: str) -> None:
    """Refuse what is not an http(s) URL that the HTTP client can parse."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError("the port must be 1-65535")
    try:
        httpx.URL(value).host  # noqa: B018  (decoding the host checks its IDNA labels)
    except (httpx.InvalidURL, UnicodeError) as exc:  # UnicodeError: a bad IDNA label (xn--)
        raise ValueError(f"not a valid URL: {exc}") from None


def _http_url(value: str) -> str:
    check_http_url(value)
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
"""An http(s) URL the HTTP client can parse (``check_http_url``), as a field's type."""

URL_LIMIT = 2048
"""The longest URL a request may name (``recipient.webhook_url``, ``callback_url``)."""


def origin(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL (the port always given), or ``None`` if it has
    none. Only the origin: no credentials, path or query, so it may be shown and logged."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    # The host as sent on the wire (ASCII, IDNA-encoded): decoding it can fail on a bad label.
    raw_host = parsed.raw_host.decode("ascii", errors="replace")
    if parsed.scheme not in ("http", "https") or not raw_host:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = f"[{raw_host}]" if ":" in raw_host else raw_host
    return f"{parsed.scheme}://{host}:{port}"


def check_http_setting(value: str, field: str) -> str:
    """``value`` stripped, when it is an http(s) URL with a host; errors never echo it."""
    value = value.strip()
    if not value:
        raise ValueError(f"{field} is empty (is its environment variable set?)")
    if not value.startswith(("http://", "https://")):
        # Never echo the value: for a webhook URL it is the credential.
        raise ValueError(f"{field} must start with http:// or https://")
    try:
        host = httpx.URL(value).host
    except (httpx.InvalidURL, UnicodeError):
        raise ValueError(f"{field} is not a valid URL") from None
    if not host:
        raise ValueError(f"{field} has no host")
    return value


def api_base_setting(value: str) -> str:
    """An ``api_base`` setting as ``check_http_setting`` accepts it, without a trailing slash."""
    return check_http_setting(value, "api_base").rstrip("/")


def stripped_setting(value: str, refusal: str, pattern: re.Pattern[str] | None = None) -> str:
    """``value`` without the whitespace around it; ``ValueError(refusal)`` when nothing is left
    or, given a ``pattern``, when what is left does not match it whole."""
    value = value.strip()
    if not value or (pattern is not None and not pattern.fullmatch(value)):
        raise ValueError(refusal)
    return value


def distinct_setting(values: list[str], what: str) -> list[str]:
    """``values`` when none is listed twice; ``ValueError`` naming the repeats."""
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{what} listed more than once: {', '.join(repeated)}")
    return values


def check_secret_set(value: SecretStr, field: str) -> SecretStr:
    """Refuse a secret that is empty or blank, as an unset environment variable leaves it."""
    if not value.get_secret_value().strip():
        raise ValueError(f"{field} is empty (is its environment variable set?)")
    return value


EMAIL_LIST_LIMIT = 50
"""At most this many addresses in a ``recipient.email`` list."""


class Recipient(BaseModel):
    """Where one notification goes, per channel type. Every address is optional."""

    # Validation is the submit check (app.channels.addresses). A stored recipient is read back
    # with ``stored``, unchecked: a row accepted before a check existed must still be shown and
    # delivered (a channel then finds no usable address), never fail the read.
    model_config = ConfigDict(extra="forbid", frozen=True)

    # One plain union, bounded in ``_email``: constraints inside its members would report a
    # bad address once per member (``email.str``, ``email.list``) instead of at ``email``.
    email: str | list[str] | None = Field(
        default=None,
        description="An addr-spec, local@domain: no display name, spaces or CR/LF; or a list "
        f"of 1 to {EMAIL_LIST_LIMIT} of them, all in one email.",
        examples=["ops@example.com"],
    )
    phone: str | None = Field(
        default=None,
        max_length=32,
        description="E.164: '+', then 8 to 15 digits, the country code first. Spaces, hyphens, "
        "dots and parentheses between them are dropped.",
        examples=["+14155550100"],
    )
    telegram_chat_id: str | None = Field(default=None, max_length=64)
    webhook_url: HttpUrl | None = Field(default=None, max_length=URL_LIMIT)
    quiet_hours: QuietHours | None = Field(
        default=None,
        description="This recipient's quiet hours: replace the route's for this notification.",
    )

    @classmethod
    def stored(cls, value: Mapping[str, Any]) -> Recipient:
        """A recipient as it was stored, without the submit checks (its quiet hours, checked
        at submit, read back as the model)."""
        fields = {k: v for k, v in value.items() if k in cls.model_fields}
        if isinstance(fields.get("quiet_hours"), Mapping):
            fields["quiet_hours"] = QuietHours.model_validate(fields["quiet_hours"])
        return cls.model_construct(**fields)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= EMAIL_LIST_LIMIT:
            raise ValueError(f"a list of 1 to {EMAIL_LIST_LIMIT} addresses")
        for address in [] if value is None else [value] if isinstance(value, str) else value:
            problem = email_problem(address)
            if problem is not None:
                raise ValueError(f"not a valid email address: {problem}")
        return value

    def emails(self) -> list[str]:
        """The email addresses, as a list (empty when there is none)."""
        if self.email is None:
            return []
        return [self.email] if isinstance(self.email, str) else list(self.email)

    @field_validator("phone")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        return None if value is None else checked_e164(value, "not a valid")


NO_OVERRIDES: Mapping[str, Mapping[str, Any]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Message:
    """Everything a channel may need to deliver one notification."""

    id: uuid.UUID
    route: str | None
    recipient: Recipient
    subject: str | None
    text: str | None
    html: str | None
    severity: str
    source: str | None
    metadata: Mapping[str, Any]
    created_at: datetime
    acks: bool = False
    """The route waits for an acknowledgement (``strategy: escalate``): a channel that can
    offers a way to give one (Telegram's button, ntfy's action, the email's link)."""
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: NO_OVERRIDES)
    """Its template's rendered overrides per channel type (``app.templates``)."""

    def for_type(self, type_name: str) -> Message:
        """The message as a channel of ``type_name`` sends it: its template's override for
        that type in place of the subject, text and html it gives (the rest as they are).
        What else an override holds (Slack ``blocks``, a WhatsApp template) its channel type
        reads from ``overrides``."""
        override = self.overrides.get(type_name)
        if not override:
            return self
        return replace(
            self,
            subject=override.get("subject", self.subject),
            text=override.get("text", self.text),
            html=override.get("html", self.html),
        )

    def plain_text(self) -> str:
        """The text body, or the HTML with its tags stripped when only HTML was given."""
        if self.text is not None:
            return self.text
        return html_to_text(self.html or "")


class CircuitConfig(BaseModel):
    """When a channel's circuit opens, and for how long."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(default=5, ge=0)
    """Consecutive transient failures that open the circuit; 0 turns the breaker off."""
    cooldown: Duration = 30.0
    """How long the circuit stays open before one trial delivery is let through."""


class ChannelConfig(BaseModel):
    """Settings every channel accepts. Each type subclasses this with its own fields."""

    # Validation errors never echo the input: it may be a secret.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    type: str
    enabled: bool = True
    timeout: Duration = 10.0
    rate_limit: RateLimit | None = None
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("timeout must be greater than zero")
        return value

    @property
    def rate(self) -> tuple[int, float] | None:
        """``(tokens, per_seconds)`` parsed from ``rate_limit``."""
        return parse_rate(self.rate_limit)

    def secrets(self) -> list[str]:
        """Every secret string in these settings (nested ones too), for redaction."""
        found: list[str] = []

        def collect(value: object) -> None:
            if isinstance(value, SecretStr):
                if value.get_secret_value():
                    found.append(value.get_secret_value())
            elif isinstance(value, dict):
                for item in value.values():
                    collect(item)
            elif isinstance(value, list | tuple):
                for item in value:
                    collect(item)

        for name in type(self).model_fields:
            collect(getattr(self, name))
        return found


@dataclass(slots=True)
class ChannelContext:
    """Process-wide resources a channel may use; built once in the app's lifespan."""

    http: Outbound
    clock: Clock = SYSTEM_CLOCK
    """What a channel that waits (on a provider's ``retry_after``) reads and sleeps on."""
    public_url: str | None = None
    """Herald's base URL as providers reach it (``server.public_url``): a channel whose
    provider sends receipts asks for them there. ``None``: receipts are off."""
    links: AckLinks | None = None
    """Signs acknowledgement links (``server.public_url`` and ``server.secret`` set)."""


class ChannelType:
    """Base of every channel adapter.

    Subclasses set ``type_name`` and ``config_model`` and implement ``send``. They are built once
    per configured channel and shared by every delivery in the process.
    """

    type_name: ClassVar[str]
    config_model: ClassVar[type[ChannelConfig]]

    def __init__(self, name: str, config: ChannelConfig, context: ChannelContext) -> None:
        self.name = name
        self.config = config
        self.context = context

    @property
    def recipient_addressed(self) -> bool:
        """Whether the host it sends to comes from the recipient, not from the settings: such a
        channel keeps a circuit per destination (``destination``), never one for the channel."""
        return False

    def destination(self, message: Message) -> str | None:
        """The origin (``scheme://host:port``) ``message`` goes to, for a recipient-addressed
        channel; ``None`` when the settings fix it or the recipient gives none."""
        return None

    @property
    def sends_receipts(self) -> bool:
        """Whether the provider reports later what became of a message (a receipt) and Herald
        takes it: a route's ``confirm`` then holds this channel's deliveries open."""
        return False

    async def send(self, message: Message) -> DeliveryResult:
        """Deliver ``message``; what the provider said goes into the result unredacted."""
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Every string this channel's results, reasons and logs must never show; the orchestrator
        masks them (``redact_result``). The config's secret settings, by default; a channel that
        derives other credentials from them adds those."""
        return self.config.secrets()

    def readiness(self) -> str | None:
        """Why this channel cannot deliver at all, or ``None`` when it is ready."""
        return None

    async def aclose(self) -> None:
        """Release what the channel holds; most hold nothing of their own."""
