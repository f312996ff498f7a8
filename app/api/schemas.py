"""Request and response bodies of the HTTP API, as ``openapi.yaml`` publishes them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.channels.base import URL_LIMIT, HttpUrl, Recipient
from app.config import event_glob_problem
from app.domain import (
    DEDUP_KEY_LIMIT,
    DEFAULT_CALLBACK_EVENTS,
    NOTIFICATION_EVENTS,
    AckVia,
    AlertStatus,
    AttemptOutcome,
    AttemptTrigger,
    ChannelHealth,
    CircuitState,
    ConfirmOn,
    DedupMode,
    ErrorClass,
    HopState,
    NotificationStatus,
    ReceiptStatus,
    Severity,
    Strategy,
)
from app.nesting import NESTING_LIMIT, TOO_DEEP, nested_deeper, shown
from app.quiet import QuietHours


class Output(BaseModel):
    """A response body: fields that always appear are required, nullable or not."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

BODY_LIMIT = 64 * 1024
METADATA_LIMIT = 16 * 1024
DATA_LIMIT = 64 * 1024


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8"))


CALLBACK_EVENTS_LIMIT = 16
_DEFAULT_CALLBACK_EVENTS = ", ".join(str(event_type) for event_type in DEFAULT_CALLBACK_EVENTS)


def _callback_event_glob(value: str) -> str:
    problem = event_glob_problem(value, NOTIFICATION_EVENTS)
    if problem is not None:
        raise ValueError(problem)
    return value


CallbackEventGlob = Annotated[str, Field(max_length=64), AfterValidator(_callback_event_glob)]
"""A glob over the event types of one notification (``channel.*`` events are no one's)."""


def _template_data(value: dict[str, Any]) -> dict[str, Any]:
    if nested_deeper(value):
        raise ValueError(TOO_DEEP)
    if _utf8_len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) > DATA_LIMIT:
        raise ValueError(f"at most {DATA_LIMIT} bytes when serialized as JSON")
    return value


TemplateData = Annotated[dict[str, Any], AfterValidator(_template_data)]
"""A template's variables, bounded as ``metadata`` is, with more room."""


class NotificationCreate(BaseModel):
    """A notification to accept. ``route`` or ``channels``, not both; neither: the default route."""

    # "at least one of text and html" and "not both route and channels" are checked but not
    # expressed in the schema: anyOf/not on the object turns generated clients' models into
    # awkward unions.
    model_config = ConfigDict(extra="forbid")

    route: str | None = Field(default=None, max_length=64, pattern=NAME, examples=["default"])
    channels: list[Annotated[str, Field(pattern=NAME)]] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="An inline ordered chain of configured channel names, tried as a fallback.",
    )
    recipient: Recipient = Field(default_factory=Recipient)
    subject: str | None = Field(default=None, max_length=998)
    # maxLength in the schema bounds characters; the validator bounds UTF-8 bytes.
    text: str | None = Field(
        default=None,
        description="Plain-text body, at most 64 KiB UTF-8.",
        json_schema_extra={"maxLength": BODY_LIMIT},
    )
    html: str | None = Field(
        default=None,
        description="HTML body, at most 64 KiB UTF-8.",
        json_schema_extra={"maxLength": BODY_LIMIT},
    )
    severity: Severity = Severity.INFO
    source: str | None = Field(default=None, max_length=255)
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Free-form JSON object, at most 16 KiB serialized and {NESTING_LIMIT} "
        "levels of objects and arrays deep (the object itself is the first).",
    )
    send_at: AwareDatetime | None = Field(
        default=None, description="Deliver no sooner than this time."
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="Give up (status expired) if not delivered by then; must be in the future. "
        "Without it, the route's ttl sets it, counted from send_at when given, else from "
        "acceptance.",
    )
    callback_url: HttpUrl | None = Field(
        default=None,
        max_length=URL_LIMIT,
        description="Where this notification's own events are POSTed, signed with the "
        "server's events.callback_secret (Standard Webhooks), retried and recorded like a "
        "subscription's. The outbound guard applies as to recipient.webhook_url.",
    )
    callback_events: list[CallbackEventGlob] | None = Field(
        default=None,
        min_length=1,
        max_length=CALLBACK_EVENTS_LIMIT,
        description="Globs over the notification's event types (notification.*, "
        f"attempt.failed) the callback_url receives; default: {_DEFAULT_CALLBACK_EVENTS}.",
        examples=[["notification.*"]],
    )
    template: str | None = Field(
        default=None,
        max_length=64,
        pattern=NAME,
        description="A configured template (GET /v1/templates) that makes the subject, text, "
        "html and per-channel-type overrides from data; with it, leave subject, text and html "
        "out. An unknown template, a variable missing from data, or a render the sandbox "
        "refuses or that exceeds its limits: 422.",
        examples=["disk-alert"],
    )
    data: TemplateData | None = Field(
        default=None,
        description=f"The template's variables: a JSON object, at most {DATA_LIMIT // 1024} "
        f"KiB serialized and {NESTING_LIMIT} levels deep. Only with template; not stored "
        "(what it rendered is).",
        examples=[{"host": "db-1", "percent": 93}],
    )
    dedup_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=DEDUP_KEY_LIMIT,
        description="What this notification is about, for the route's dedup window: a repeat "
        "of the key by the same API key within the window is dropped (the answer is 200 with "
        "the key's notification and Herald-Deduplicated: true) or collapsed into the pending "
        "one (its occurrences count up, its subject and bodies become the latest's). Unlike "
        "the Idempotency-Key, the bodies may differ. Only for a route with dedup (else 422).",
        examples=["disk-full:db-1"],
    )

    @field_validator("*", mode="before")
    @classmethod
    def _not_too_deep(cls, value: Any) -> Any:
        if isinstance(value, dict | list) and nested_deeper(value):
            raise ValueError(TOO_DEEP)
        return value

    @field_validator("text", "html")
    @classmethod
    def _body_size(cls, value: str | None) -> str | None:
        if value is not None and _utf8_len(value) > BODY_LIMIT:
            raise ValueError(f"at most {BODY_LIMIT} bytes of UTF-8")
        return value

    @field_validator("subject", "text", "html", "source", "dedup_key")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise ValueError("must not contain NUL (U+0000) characters")
        return value

    @field_validator("send_at", "expires_at")
    @classmethod
    def _utc_in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError("out of range once converted to UTC") from None
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _utf8_len(json.dumps(value, separators=(",", ":"), ensure_ascii=False)) > METADATA_LIMIT:
            raise ValueError(f"at most {METADATA_LIMIT} bytes when serialized as JSON")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NotificationCreate:
        if self.route is not None and self.channels is not None:
            raise ValueError("give route or channels, not both")
        if self.template is not None:
            given = [f for f in ("subject", "text", "html") if getattr(self, f) is not None]
            if given:
                raise ValueError(
                    f"give template or {' and '.join(given)}, not both: the template makes "
                    "the subject, text and html"
                )
        elif self.data is not None:
            raise ValueError("data needs a template")
        elif self.text is None and self.html is None:
            raise ValueError("give at least one of text and html, or a template")
        if self.send_at and self.expires_at and self.expires_at <= self.send_at:
            raise ValueError("expires_at must be later than send_at")
        if self.callback_events is not None and self.callback_url is None:
            raise ValueError("callback_events needs a callback_url")
        return self


BATCH_LIMIT = 500


class NotificationBatch(BaseModel):
    """Up to 500 notifications accepted in one transaction."""

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=BATCH_LIMIT,
        description="Each item is a NotificationCreate body, validated on its own.",
        json_schema_extra={"items": {"$ref": "#/components/schemas/NotificationCreate"}},
    )


class ErrorInfo(Output):
    """Why an attempt failed: class, stable code, short message."""

    model_config = ConfigDict(populate_by_name=True)

    class_: ErrorClass = Field(alias="class")
    code: str
    message: str


class LastError(ErrorInfo):
    channel: str


class Hop(Output):
    channel: str
    state: HopState
    attempts: int
    last_error: LastError | None = None


class Acknowledgement(Output):
    """Who acknowledged a notification, when and how."""

    at: datetime
    by: str = Field(
        description="The API key (or the name it gave), the email address, the "
        "ntfy topic or the Telegram user that acknowledged it."
    )
    via: AckVia


class NotificationOut(Output):
    """A notification as lists show it (no bodies)."""

    id: uuid.UUID
    status: NotificationStatus
    route: str | None = Field(description="The route, or null for an inline chain.")
    strategy: Strategy
    channels: list[str]
    recipient: Recipient
    subject: str | None
    severity: Severity
    source: str | None
    metadata: dict[str, Any] = Field(
        validation_alias=AliasChoices("metadata_", "metadata"),
        description="As given. Metadata nested deeper than the limit of "
        f"{NESTING_LIMIT} levels (only a notification stored before there was a limit can "
        f'hold it) shows as {{"herald:omitted": "nested deeper than {NESTING_LIMIT} levels"}}.',
    )
    """Read from the model's ``metadata_`` (``metadata`` is SQLAlchemy's on a model) or from
    a row's ``metadata``."""
    round: int
    attempt_count: int
    delivered_via: str | list[str] | None = Field(
        description="The channel that delivered (fallback), or the list of them (all)."
    )
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    last_error: LastError | None
    hops: list[Hop]
    send_at: datetime | None
    expires_at: datetime | None
    callback_url: str | None = Field(description="Where its own events are POSTed, if anywhere.")
    callback_events: list[str] | None = Field(
        description="The globs over event types its callback_url receives."
    )
    acknowledgement: Acknowledgement | None = Field(
        description="Who acknowledged it, when and how (status acknowledged)."
    )
    template: str | None = Field(description="The template it was rendered from, if any.")
    dedup_key: str | None = Field(description="The request's dedup_key, if it gave one.")
    occurrences: int = Field(
        description="How many requests it stands for: 1, plus each repeat of its dedup_key "
        "collapsed into it (delivered marked (\N{MULTIPLICATION SIGN}N))."
    )
    created_at: datetime
    updated_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _acknowledgement_of_columns(cls, value: Any) -> Any:
        """A stored notification keeps its acknowledgement in three columns."""
        if isinstance(value, Mapping) and "acknowledgement" not in value:
            at = value.get("acknowledged_at")
            acknowledgement = None
            if at is not None:
                acknowledgement = {
                    "at": at,
                    "by": value.get("acknowledged_by") or "",
                    "via": value.get("acknowledged_via"),
                }
            return {**value, "acknowledgement": acknowledgement}
        return value

    @field_validator("recipient", mode="before")
    @classmethod
    def _stored_recipient(cls, value: Any) -> Any:
        return Recipient.stored(value) if isinstance(value, dict) else value

    @field_validator("metadata")
    @classmethod
    def _shown_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = shown(value)
        return result


class NotificationDetail(NotificationOut):
    """A notification with its bodies."""

    text: str | None
    html: str | None
    rendered: dict[str, dict[str, Any]] | None = Field(
        description="The template's per-channel-type overrides as rendered: what a channel "
        "of that type (an attempt's channel_type) was sent in place of subject, text and "
        "html. Null without a template."
    )


_RECIPIENT_NULLS: dict[str, None] = dict.fromkeys(Recipient.model_fields)
_NEW_DETAIL_FIELDS = tuple(NotificationDetail.model_fields)


def new_detail_json(row: Mapping[str, Any]) -> bytes:
    """``NotificationDetail.model_validate(row).model_dump_json()`` of a row ``new_notification``
    has just made, the 202 body, without the model: its values are serialized as they are.

    Validating the row again and dumping the model was about a tenth of an accept's CPU
    (bench/results/levers.md, "202 body"). A new row already holds what the model would show:
    its recipient's addresses as given (plain strings), fresh hops, no error, no
    acknowledgement, metadata within the nesting limit (checked at submit); orjson writes
    numbers, strings and timestamps as pydantic does (a test pins the two to the same bytes).
    A recipient with anything else (an email list, a URL, quiet hours) goes through the model.
    """
    recipient = row["recipient"]
    if all(type(value) is str for value in recipient.values()):
        shown = {name: row.get(name) for name in _NEW_DETAIL_FIELDS}
        shown["recipient"] = _RECIPIENT_NULLS | recipient
        shown["acknowledgement"] = None
        return orjson.dumps(shown, option=orjson.OPT_UTC_Z)
    return NotificationDetail.model_validate(row).model_dump_json().encode()


class NotificationPage(Output):
    items: list[NotificationOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page.")


class BulkRetryResult(Output):
    """What ``POST /v1/notifications/retry`` did."""

    retried: int = Field(description="Notifications queued again.")
    skipped: int = Field(
        description="Matched, but changed before their retry (a worker or another caller got "
        "there first)."
    )
    truncated: bool = Field(
        description="More matched than the call's limit: call again for the rest."
    )


class ReceiptOut(Output):
    status: ReceiptStatus
    at: datetime = Field(description="When the provider says it happened.")
    code: str | None = Field(description="The provider's error code, if it gave one.")


class AttemptOut(Output):
    id: uuid.UUID
    notification_id: uuid.UUID
    channel: str
    channel_type: str
    round: int
    hop: int = Field(description="Index of the channel in the notification's chain.")
    trigger: AttemptTrigger
    outcome: AttemptOutcome
    error: ErrorInfo | None
    provider_status: int | None
    provider_message_id: str | None
    response_excerpt: str | None
    started_at: datetime
    duration_ms: int
    digest_id: uuid.UUID | None = Field(
        description="The digest send this attempt was part of: the same id on the attempt of "
        "every notification the digest listed (and in the message's herald:digest metadata)."
    )
    receipt: ReceiptOut | None = Field(
        default=None,
        description="What the provider said later about the message (Twilio's status "
        "callback, WhatsApp's statuses): the furthest status it reached, the latest of those.",
    )

    @model_validator(mode="before")
    @classmethod
    def _error_of_columns(cls, value: Any) -> Any:
        """A stored attempt (``StoredAttempt``) keeps its error in three columns; the API shows
        them as one object."""
        if isinstance(value, Mapping) and "error" not in value:
            error = None
            if value["error_class"] is not None:
                error = {
                    "class": value["error_class"],
                    "code": value["error_code"],
                    "message": value["error_message"],
                }
            return {**value, "error": error}
        return value


class AttemptList(Output):
    items: list[AttemptOut]


OPEN_DESTINATIONS_SHOWN = 20


class Circuit(Output):
    """This process's circuit breaker for the channel."""

    state: CircuitState
    consecutive_failures: int
    reason: str | None = Field(description="Why the circuit opened, while it is not closed.")
    retry_in_seconds: float = Field(description="Time left before a trial delivery (open only).")
    per_destination: bool = Field(
        description="The recipient names the host (a webhook without url): each destination "
        "has its own circuit, so one failing endpoint never stops the channel for the others; "
        "the fields above then describe no destination and stay closed."
    )
    open_destinations: list[str] = Field(
        description="Destinations (scheme://host:port) whose own circuit is open or half-open, "
        f"most recent first, at most {OPEN_DESTINATIONS_SHOWN}."
    )
    open_destination_count: int = Field(
        description="How many destinations have an open or half-open circuit."
    )


class ChannelOut(Output):
    name: str
    type: str
    enabled: bool
    ready: bool
    reason: str | None = Field(description="Why the channel is not ready, if it is not.")
    health: ChannelHealth = Field(
        description="unhealthy: not ready or circuit open; degraded: trial under way or "
        "recent transient failures; healthy otherwise."
    )
    circuit: Circuit
    settings: dict[str, Any] = Field(
        description="The channel's settings, secrets masked, durations written as in "
        "herald.yaml and /v1/routes (10s, 500ms, 2m)."
    )


class ChannelList(Output):
    items: list[ChannelOut]


class RetryOut(Output):
    schedule: list[str]
    jitter: float


class ConfirmOut(Output):
    within: str
    on: list[ConfirmOn]


class DedupOut(Output):
    window: str
    mode: DedupMode


class DigestOut(Output):
    window: str
    max_items: int


class RouteOut(Output):
    name: str
    channels: list[str]
    ack_within: list[str | None] = Field(
        description="Per channel, in order: how long an escalate route waits for an "
        "acknowledgement once that hop delivered (null: it does not wait)."
    )
    confirm: ConfirmOut | None = Field(
        description="Delivered hops of channels that send receipts count once a delivered "
        "receipt arrives within this window."
    )
    strategy: Strategy
    retry: RetryOut
    ttl: str | None
    dedup: DedupOut | None = Field(
        description="Its dedup window: a POST to it may carry a dedup_key (else 422)."
    )
    digest: DigestOut | None = Field(
        description="Its digest: notifications for one recipient are held up to window and "
        "sent as one message (at once when max_items are waiting)."
    )
    default: bool
    quiet_hours: QuietHours | None = Field(
        description="Hops held or skipped during a local time window (a request's "
        "recipient.quiet_hours overrides it)."
    )
    retention: dict[str, str | None] = Field(
        description="Per final status, how long a finished notification of this route is kept "
        "before it is purged (the route's own period, else the global one; null: for ever)."
    )
    mutes: list[MuteOut] = Field(
        description="The route's hops left out of its chain now, by channel type (Telegram "
        "/mute), until when and by whom."
    )


class MuteOut(Output):
    channel_type: str
    until: datetime
    by: str


class RouteList(Output):
    items: list[RouteOut]


class TemplateOut(Output):
    name: str
    fields: list[Literal["subject", "text", "html"]] = Field(
        description="The template's own fields that are set."
    )
    overrides: list[str] = Field(description="The channel types it has overrides for.")
    variables: list[str] = Field(
        description="The top-level names of data its fields use (each must be given)."
    )


class TemplateList(Output):
    items: list[TemplateOut]


class TemplatePreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: TemplateData = Field(
        default_factory=dict,
        description=f"The template's variables, as a notification's data: at most "
        f"{DATA_LIMIT // 1024} KiB serialized and {NESTING_LIMIT} levels deep.",
    )


class TemplatePreview(Output):
    """A template rendered with the given data, as a notification would store it."""

    template: str
    subject: str | None
    text: str | None
    html: str | None
    rendered: dict[str, dict[str, Any]] = Field(
        description="Per channel type: the overrides, rendered, that a channel of that type "
        "sends in place of subject, text and html."
    )


class Health(Output):
    status: Literal["ok"]


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class BatchItemResult(Output):
    """What became of one item of a batch."""

    index: int = Field(description="The item's position in the request.")
    status: int = Field(description="202 accepted, or the HTTP status of its problem (422).")
    id: uuid.UUID | None = None
    location: str | None = None
    error: Problem | None = None


class BatchResult(Output):
    accepted: int
    rejected: int
    items: list[BatchItemResult]


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class AlertmanagerNotification(Output):
    """One notification an Alertmanager webhook call made, or had made before."""

    id: uuid.UUID
    location: str
    status: AlertStatus
    alerts: int = Field(description="How many of the call's alerts it is about.")
    replayed: bool = Field(description="True when it existed already (the group sent again).")


class AlertmanagerResult(Output):
    notifications: list[AlertmanagerNotification]
    skipped: int = Field(description="Resolved notifications not made (resolved is off).")
