"""Herald's vocabulary (README, "How delivery works"): the states, strategies and classes every
layer speaks, and the value type of a chain's hop.

The API publishes these enums as they are (each is one named schema in ``openapi.yaml``), the
service and the orchestrator decide with them, the store writes them and the metrics label with
them. Nothing below the API spells a status or a state as a string literal. A ``StrEnum``
member is its string, so rows and JSON read back as plain strings compare equal to it.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

if TYPE_CHECKING:
    from app.channels.base import Recipient


class Severity(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class NotificationStatus(StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    PARTIAL = "partial"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ACKNOWLEDGED = "acknowledged"
    """A person said "got it" (README, "Receipts, acknowledgements and escalation")."""


FINAL_STATUSES = frozenset(
    {
        NotificationStatus.ACKNOWLEDGED,
        NotificationStatus.DELIVERED,
        NotificationStatus.FAILED,
        NotificationStatus.PARTIAL,
        NotificationStatus.EXPIRED,
        NotificationStatus.CANCELLED,
    }
)
"""Statuses a notification does not leave by itself (only an operator's retry moves it on)."""

STOPPING_STATUSES = frozenset({NotificationStatus.EXPIRED, NotificationStatus.CANCELLED})
"""Final statuses that end a notification from outside its rounds: a hop still open takes the
status as its state, so it does not read as if an earlier hop had delivered."""

CANCELLABLE = (NotificationStatus.PENDING,)
"""Statuses ``POST …/cancel`` moves to ``cancelled``."""

RETRYABLE = (NotificationStatus.FAILED, NotificationStatus.EXPIRED, NotificationStatus.PARTIAL)
"""Statuses ``POST …/retry`` moves back to ``pending``."""


class WaitEnd(StrEnum):
    """How a request that waited for a final state (``?wait=``) ended. Any end but ``final`` is
    sent as the answer's ``Herald-Wait`` header: the status in the body is not final yet."""

    FINAL = "final"
    TIMEOUT = "timeout"
    """The wait ran out."""
    BUSY = "busy"
    """The process (or the API key) held as many waiting requests as it may: answered at once."""


WAIT_LIMIT = 30.0
"""The longest ``?wait=``, in seconds."""


class Strategy(StrEnum):
    FALLBACK = "fallback"
    ALL = "all"
    ESCALATE = "escalate"
    """Deliver a hop, wait its ``ack_within`` for an acknowledgement, then the next hop."""


FIRST_SUCCESS = frozenset({Strategy.FALLBACK, Strategy.ESCALATE})
"""Strategies whose round stops at the first hop that delivers (or is held open)."""


class HopState(StrEnum):
    """Where one hop of the chain stands.

    ``pending`` not tried yet; ``retrying`` failed, tried again next round; ``delivered``;
    ``failed`` permanently or out of rounds; ``skipped`` nothing to try (no address, disabled);
    ``unused`` not needed, an earlier hop delivered; ``cancelled`` and ``expired`` not tried
    (again) because the notification was cancelled or expired first.

    Held open (``HOLD_STATES``): ``awaiting_confirmation`` delivered, waiting for the
    provider's receipt (route option ``confirm``); ``awaiting_ack`` delivered, waiting for an
    acknowledgement (``strategy: escalate``, the hop's ``ack_within``). ``unacknowledged``
    delivered, but nobody acknowledged within its ``ack_within``: the chain went on.
    """

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNUSED = "unused"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    AWAITING_ACK = "awaiting_ack"
    UNACKNOWLEDGED = "unacknowledged"


HOLD_STATES = frozenset({HopState.AWAITING_CONFIRMATION, HopState.AWAITING_ACK})
"""Hop states of a delivered hop held open until a deadline or an outside word (a receipt, an
acknowledgement): the notification stays ``pending``, due at the deadline."""

OPEN_HOP_STATES = frozenset({HopState.PENDING, HopState.RETRYING})
"""Hop states a round still tries."""


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"


class AttemptTrigger(StrEnum):
    """What started a round: the schedule (the first round, each retry) or an operator's retry."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"


class ErrorClass(StrEnum):
    """The one taxonomy of delivery failures (README, "How delivery works").

    transient: worth another try (timeout, connection refused, HTTP 408/5xx); rate_limited: the
    provider asked to slow down (HTTP 429); permanent: never tried again for this notification
    (other 4xx, 3xx); config: the channel's own setup is wrong (401/403, TLS), which quarantines
    it for its cooldown; skipped: no provider call made (no address, disabled, circuit open).
    """

    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    CONFIG = "config"
    SKIPPED = "skipped"


class CircuitState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


class ChannelHealth(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop of a notification's chain as it stands (stored in ``notifications.hops``; the
    API shows it as ``schemas.Hop``)."""

    channel: str
    state: HopState = HopState.PENDING
    attempts: int = 0
    last_error: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hop:
        return cls(
            channel=data["channel"],
            state=HopState(data.get("state", HopState.PENDING)),
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
        )


def fresh_hops(chain: Sequence[str]) -> list[Hop]:
    """The hops of a chain no round has tried yet."""
    return [Hop(channel=name) for name in chain]


# --- holds: receipts, confirmation and acknowledgements (issue 16) ---------------------------


class ConfirmOn(StrEnum):
    """What makes a route with ``confirm`` go on to the next hop after a hop delivered."""

    UNDELIVERED = "undelivered"
    """The provider's receipt says the message was not delivered (Twilio ``undelivered``)."""
    FAILED = "failed"
    """The provider's receipt says sending failed (Twilio and WhatsApp ``failed``)."""
    TIMEOUT = "timeout"
    """No ``delivered`` (or ``read``) receipt came within ``confirm.within``."""


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """How a route holds a delivered hop open, fixed on the notification when it is accepted.

    ``confirm_within``: wait that long for a ``delivered`` receipt from a channel that sends
    receipts (``confirm_on`` says what goes on to the next hop). ``ack_within``: per hop, how
    long an ``escalate`` route waits for an acknowledgement before the next hop (``None``: the
    hop does not wait: once delivered, the chain ends there, as a fallback's would).
    """

    confirm_within: float | None = None
    confirm_on: frozenset[ConfirmOn] = frozenset(ConfirmOn)
    ack_within: tuple[float | None, ...] = ()

    def ack_for(self, hop: int) -> float | None:
        return self.ack_within[hop] if hop < len(self.ack_within) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "confirm_within": self.confirm_within,
            "confirm_on": sorted(self.confirm_on),
            "ack_within": list(self.ack_within),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> HoldPolicy | None:
        if data is None:
            return None
        return cls(
            confirm_within=data.get("confirm_within"),
            confirm_on=frozenset(ConfirmOn(on) for on in data.get("confirm_on", ConfirmOn)),
            ack_within=tuple(data.get("ack_within", ())),
        )


class ReceiptStatus(StrEnum):
    """A provider's later word about a sent message, in Herald's words (Twilio's
    ``accepted``/``scheduled``/``sending`` read as ``queued``, its ``canceled`` as ``failed``)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


RECEIPT_RANK = {
    ReceiptStatus.QUEUED: 0,
    ReceiptStatus.SENT: 1,
    ReceiptStatus.DELIVERED: 2,
    ReceiptStatus.READ: 3,
    ReceiptStatus.UNDELIVERED: 4,
    ReceiptStatus.FAILED: 4,
}
"""How far a receipt says a message got; an attempt shows its furthest (then latest) one, since
providers do not promise to send them in order."""

CONFIRMING = frozenset({ReceiptStatus.DELIVERED, ReceiptStatus.READ})
"""Receipts that confirm a hop held for confirmation."""

REFUTING = {
    ReceiptStatus.UNDELIVERED: ConfirmOn.UNDELIVERED,
    ReceiptStatus.FAILED: ConfirmOn.FAILED,
}
"""Receipts that may send the chain on, and the ``confirm.on`` entry that lets them."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """One receipt as an inbound endpoint read it (verified already)."""

    channel: str
    channel_type: str
    provider_message_id: str
    status: ReceiptStatus
    at: datetime
    """When the provider says it happened (its timestamp, or when Herald received it)."""
    code: str | None = None
    """The provider's error code (Twilio ``ErrorCode``, WhatsApp ``errors[].code``)."""


@dataclass(frozen=True, slots=True)
class HeldAttempt:
    """What a round settling a held hop reads: the hop's latest attempt and the receipts its
    provider sent for it."""

    id: uuid.UUID
    started_at: datetime
    receipts: Sequence[Receipt] = ()


def best_receipt(receipts: Sequence[Receipt]) -> Receipt | None:
    """The receipt an attempt shows: the furthest along, the latest of those."""
    return max(receipts, key=lambda r: (RECEIPT_RANK[r.status], r.at), default=None)


class AckVia(StrEnum):
    """How a notification was acknowledged."""

    API = "api"
    EMAIL = "email"
    NTFY = "ntfy"
    TELEGRAM = "telegram"


class AckOutcome(StrEnum):
    """What became of one acknowledgement (``app.service.acknowledge``)."""

    ACKNOWLEDGED = "acknowledged"
    ALREADY_ACKNOWLEDGED = "already_acknowledged"
    """Someone acknowledged it first: the notification says who, when and how."""
    NOT_FOUND = "not_found"
    """No such notification, or none the caller may act on."""
    NOT_ACKABLE = "not_ackable"
    """It ended otherwise first (failed, expired, partial, cancelled)."""


ACKABLE = (
    NotificationStatus.PENDING,
    NotificationStatus.DELIVERING,
    NotificationStatus.DELIVERED,
)
"""Statuses an acknowledgement moves to ``acknowledged``."""

ACK_BY_LIMIT = 128
"""The longest ``acknowledged_by`` kept (longer names are cut)."""


@dataclass(frozen=True, slots=True)
class AckResult:
    outcome: AckOutcome
    notification: StoredNotification | None = None
    """As it stands after the acknowledgement (``None`` for ``not_found``)."""


# --- what a round changes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundUpdate:
    """What one round (or an expiry) changes on its notification; the worker's store turns it
    into columns.

    ``status``, ``hops``, ``next_attempt_at`` (``None``: no round is due) and ``updated_at`` are
    always written. The other fields are written only when set: ``round``, ``trigger`` and
    ``attempt_count`` together when the round made attempts (an expiry makes none), and
    ``last_error``, ``delivered_via`` and ``delivered_at`` when the round has something to say
    there; ``None`` leaves what the notification holds.
    """

    status: NotificationStatus
    hops: Sequence[Hop]
    next_attempt_at: datetime | None
    updated_at: datetime
    round: int | None = None
    trigger: AttemptTrigger | None = None
    attempt_count: int | None = None
    last_error: dict[str, Any] | None = None
    delivered_via: str | list[str] | None = None
    delivered_at: datetime | None = None


# --- What the service takes and gives ---------------------------------------------------------
#
# The API hands the service requests it validated and answers from what the service gives back;
# neither side sees the other's types (HTTP schemas above, ORM models below).

DEFAULT_ROUTE = "default"
"""The route of a request that names neither a route nor channels."""


class NewNotification(Protocol):
    """A notification a caller asks Herald to accept, already validated.

    A Protocol, not a type to convert into: the API's request body (``NotificationCreate``) is
    one as it stands, so the accept's hot path copies nothing.
    """

    @property
    def route(self) -> str | None: ...
    @property
    def channels(self) -> Sequence[str] | None: ...
    @property
    def recipient(self) -> Recipient: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def html(self) -> str | None: ...
    @property
    def severity(self) -> Severity: ...
    @property
    def source(self) -> str | None: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def send_at(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def callback_url(self) -> str | None: ...
    @property
    def callback_events(self) -> Sequence[str] | None: ...
    @property
    def template(self) -> str | None: ...
    @property
    def data(self) -> dict[str, Any] | None: ...
    @property
    def dedup_key(self) -> str | None: ...


class StoredNotification(TypedDict):
    """A notification as stored, column by column (``metadata``, not the ORM's ``metadata_``).

    A dict, not a dataclass: the accept builds one and hands the same object to the store (it
    is the row inserted) and to the API (it is what the answer shows), with no copy on the hot
    path. Enum columns read back as their strings, which compare equal to the members.
    """

    id: uuid.UUID
    status: str
    route: str | None
    strategy: str
    channels: list[str]
    chain_key: str
    recipient: dict[str, Any]
    subject: str | None
    text: str | None
    html: str | None
    severity: str
    source: str | None
    metadata: dict[str, Any]
    retry_schedule: list[float]
    retry_jitter: float
    round: int
    round_base: int
    trigger: str
    attempt_count: int
    delivered_via: str | list[str] | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    last_error: dict[str, Any] | None
    hops: list[dict[str, Any]]
    send_at: datetime | None
    expires_at: datetime | None
    claimed_by: str | None
    lease_expires_at: datetime | None
    owner: str | None
    callback_url: str | None
    callback_events: list[str] | None
    """The globs over event types its callback takes (set whenever ``callback_url`` is)."""
    holds: dict[str, Any] | None
    """Its route's ``HoldPolicy`` as stored (``None``: no hop is ever held open)."""
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledged_via: str | None
    template: str | None
    """The template its subject, text and html were rendered from."""
    rendered: dict[str, dict[str, Any]] | None
    """The template's per-channel-type overrides, rendered (``None`` without a template)."""
    dedup_key: str | None
    """The caller's key: repeats within its route's ``dedup`` window were dropped or collapsed."""
    occurrences: int
    """How many requests it stands for: 1, plus each repeat collapsed into it."""
    digest_key: str | None
    """Its digest group (owner, route and recipient) when its route has a ``digest``."""
    created_at: datetime
    updated_at: datetime


class StoredAttempt(TypedDict):
    """One attempt as stored, column by column (the error as its class, code and message)."""

    id: uuid.UUID
    notification_id: uuid.UUID
    channel: str
    channel_type: str
    round: int
    hop: int
    trigger: str
    outcome: str
    error_class: str | None
    error_code: str | None
    error_message: str | None
    provider_status: int | None
    provider_message_id: str | None
    response_excerpt: str | None
    started_at: datetime
    duration_ms: int
    digest_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class ListFilter:
    """Which notifications a list shows (every field given must match)."""

    status: NotificationStatus | None = None
    route: str | None = None
    channel: str | None = None
    """The notification's chain includes this channel."""
    created_after: datetime | None = None
    created_before: datetime | None = None
    owner: str | None = None
    """Only this API key's notifications; ``None``: everyone's."""
    severity: Severity | None = None
    subject_contains: str | None = None
    """The subject holds this text (case-insensitive for ASCII letters)."""


# --- events (issue 15: signed lifecycle events) ----------------------------------------------


class EventType(StrEnum):
    """What an event says happened (README, "Events and callbacks"). A subscription's ``types``
    are globs over these values (``notification.*``, ``*``)."""

    NOTIFICATION_ACCEPTED = "notification.accepted"
    NOTIFICATION_DELIVERED = "notification.delivered"
    NOTIFICATION_PARTIAL = "notification.partial"
    NOTIFICATION_FAILED = "notification.failed"
    NOTIFICATION_EXPIRED = "notification.expired"
    NOTIFICATION_CANCELLED = "notification.cancelled"
    NOTIFICATION_ACKNOWLEDGED = "notification.acknowledged"
    ATTEMPT_FAILED = "attempt.failed"
    ATTEMPT_RECEIPT = "attempt.receipt"
    CHANNEL_CIRCUIT_OPENED = "channel.circuit_opened"
    CHANNEL_CIRCUIT_CLOSED = "channel.circuit_closed"
    CHANNEL_QUARANTINED = "channel.quarantined"


FINAL_EVENTS: dict[NotificationStatus, EventType] = {
    NotificationStatus.DELIVERED: EventType.NOTIFICATION_DELIVERED,
    NotificationStatus.PARTIAL: EventType.NOTIFICATION_PARTIAL,
    NotificationStatus.FAILED: EventType.NOTIFICATION_FAILED,
    NotificationStatus.EXPIRED: EventType.NOTIFICATION_EXPIRED,
    NotificationStatus.CANCELLED: EventType.NOTIFICATION_CANCELLED,
    NotificationStatus.ACKNOWLEDGED: EventType.NOTIFICATION_ACKNOWLEDGED,
}
"""The event a notification's final status is announced by."""

CHANNEL_EVENTS = frozenset(
    {
        EventType.CHANNEL_CIRCUIT_OPENED,
        EventType.CHANNEL_CIRCUIT_CLOSED,
        EventType.CHANNEL_QUARANTINED,
    }
)
"""Events about a channel, not a notification: they carry no notification id, owner or route."""

NOTIFICATION_EVENTS = frozenset(EventType) - CHANNEL_EVENTS
"""Events about one notification: what its callback may take."""

DEFAULT_CALLBACK_EVENTS = tuple(FINAL_EVENTS.values())
"""What a ``callback_url`` receives when the request names no ``callback_events``: the
notification's final status."""

CALLBACK = "callback"
"""The delivery target of a notification's own ``callback_url``, beside the subscriptions
(a name no subscription may take)."""


def event_types_matching(glob: str) -> list[EventType]:
    """The event types a glob names (``notification.*``, ``*``), as a subscription's ``types``
    and a request's ``callback_events`` give them."""
    return [member for member in EventType if fnmatch.fnmatchcase(member, glob)]


@dataclass(frozen=True, slots=True)
class Callback:
    """A notification's own receiver of its events: its ``callback_url`` and the event types
    its ``callback_events`` name."""

    url: str
    types: frozenset[EventType]

    @classmethod
    def of(cls, url: str | None, globs: Sequence[str] | None) -> Callback | None:
        """The callback of a stored notification (``None`` without a ``callback_url``; no
        ``globs``: ``DEFAULT_CALLBACK_EVENTS``)."""
        if url is None:
            return None
        if globs is None:
            return cls(url, frozenset(DEFAULT_CALLBACK_EVENTS))
        return cls(url, frozenset(t for glob in globs for t in event_types_matching(glob)))

    def takes(self, event_type: EventType) -> bool:
        return event_type in self.types


EVENT_VERSION = 1
"""The version of the event body; a change a receiver could trip over gets a new one."""


class EventDeliveryStatus(StrEnum):
    """Where one event stands for one subscription.

    ``pending`` waiting for its ``next_attempt_at`` (or for an earlier event of the same
    notification); ``delivering`` claimed by a dispatcher under a lease; ``delivered`` the
    receiver answered 2xx; ``failed`` refused for good (a permanent error) or out of retries.
    """

    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


OPEN_EVENT_DELIVERIES = (EventDeliveryStatus.PENDING, EventDeliveryStatus.DELIVERING)
"""Deliveries not settled yet: a later event of the same notification waits for them."""


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, as the outbox stores it and every subscription receives it.

    ``route`` is what subscriptions filter on (it is also in a notification event's ``data``);
    ``data`` never holds a secret or a message body: ``body`` adds the notification's content
    only when a subscription asks for it (``include_content``).
    """

    id: uuid.UUID
    type: EventType
    timestamp: datetime
    notification_id: uuid.UUID | None
    owner: str | None
    route: str | None
    data: dict[str, Any]

    def body(self, content: dict[str, Any] | None = None) -> dict[str, Any]:
        """The versioned JSON body a receiver gets; ``content`` goes in as ``data.content``."""
        return {
            "id": str(self.id),
            "type": self.type,
            "timestamp": rfc3339(self.timestamp),
            "version": EVENT_VERSION,
            "notification_id": None if self.notification_id is None else str(self.notification_id),
            "owner": self.owner,
            "data": self.data if content is None else {**self.data, "content": content},
        }


def rfc3339(moment: datetime) -> str:
    """A UTC time as event bodies write it: ``2026-11-28T10:54:04.336849Z``."""
    return moment.isoformat().replace("+00:00", "Z")


# --- events in: Redis Streams and Alertmanager (app/ingest) --------------------------------


class IngestOutcome(StrEnum):
    """What became of one stream entry (``herald_ingest_entries_total{outcome}``), or of one
    Alertmanager notification (``herald_alertmanager_notifications_total{outcome}``)."""

    ACCEPTED = "accepted"
    """A new notification was stored."""
    REPLAYED = "replayed"
    """Its notification existed already (a redelivered entry, a resent alert group)."""
    UNMATCHED = "unmatched"
    """No rule matched; acked (or dead-lettered, as the stream's ``unmatched`` says)."""
    DEAD_LETTERED = "dead_lettered"
    """Moved to the dead-letter stream with the reason, and acked."""
    FAILED = "failed"
    """Processing failed for now: left pending, to be retried."""
    SKIPPED = "skipped"
    """Alertmanager only: a resolved group while ``resolved`` is off."""


class Unmatched(StrEnum):
    """What a stream does with an entry no rule matches."""

    ACK = "ack"
    DEAD_LETTER = "dead_letter"


class AlertGrouping(StrEnum):
    """How many notifications an Alertmanager webhook call becomes."""

    GROUP = "group"
    """One for the call's alert group."""
    ALERT = "alert"
    """One for each alert of the group."""


class AlertStatus(StrEnum):
    """An Alertmanager alert's or group's status."""

    FIRING = "firing"
    RESOLVED = "resolved"


# --- inbound messages and mutes (issue 16: Telegram inbound) ----------------------------------


class InboundKind(StrEnum):
    """What a chat sent Herald: a ``message`` (a command, or any text), or a
    ``callback_query`` (a press on an inline-keyboard button of a message Herald sent)."""

    MESSAGE = "message"
    CALLBACK_QUERY = "callback_query"
    OTHER = "other"
    """An update of a kind Herald did not ask for (Telegram may send one sent before it
    narrowed ``allowed_updates``): stored, never acted on."""


class InboundOutcome(StrEnum):
    """What Herald did with one inbound message (``herald_inbound_messages_total{outcome}``).

    ``handled`` a command from an allowed chat, carried out and answered; ``invalid`` from an
    allowed chat but no command Herald knows, or its arguments are wrong: answered with help;
    ``ignored`` from an allowed chat but not a command (plain text, a command for another
    bot, an update of another kind): no answer; ``not_allowed`` from a chat not in
    ``allowed_chats``: no answer, nothing done; ``failed`` a command that broke on a bug of
    Herald's: answered with an apology, nothing done.
    """

    HANDLED = "handled"
    INVALID = "invalid"
    IGNORED = "ignored"
    NOT_ALLOWED = "not_allowed"
    FAILED = "failed"


MUTED = "muted"
"""The skip code of a hop not tried because its route is muted for its channel type."""


@dataclass(frozen=True, slots=True)
class Mute:
    """A route's hops of one channel type left out of its chain until ``until`` (``/mute``)."""

    route: str
    channel_type: str
    until: datetime
    by: str
    """Who muted it, as shown in the skipped attempt: ``ops-telegram chat -100123 (@alice)``."""

    def reason(self) -> str:
        """The skipped attempt's message."""
        return (
            f"route {self.route} is muted for {self.channel_type} until "
            f"{rfc3339(self.until)} (by {self.by})"
        )


class QuietMode(StrEnum):
    """What quiet hours do to their hops: hold (the notification waits until the window ends)
    or skip (the hops are skipped and the chain goes on)."""

    HOLD = "hold"
    """Not tried: the notification waits until the window ends."""
    SKIP = "skip"
    """Skipped (an attempt with code ``quiet_hours``): the chain goes on to the next hop."""


# --- dedup and digests (issue 19 points 2 and 4) ----------------------------------------------


class DedupMode(StrEnum):
    """What a route's ``dedup`` does to a repeat of a ``dedup_key`` within its window."""

    DROP = "drop"
    """Not stored: the answer is the notification the key already has."""
    COLLAPSE = "collapse"
    """Counted on the pending notification, whose subject and bodies become the repeat's."""


DEDUP_KEY_LIMIT = 255
"""Characters a ``dedup_key`` may have."""


class Admission(StrEnum):
    """What became of a request to accept one notification."""

    STORED = "stored"
    """A new notification."""
    REPLAYED = "replayed"
    """An Idempotency-Key used before with the same body: the notification it made."""
    DEDUPLICATED = "deduplicated"
    """A repeat of a ``dedup_key`` within its window: dropped or collapsed into the
    notification the key already has."""
