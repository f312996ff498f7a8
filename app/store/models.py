"""Tables: notifications, their append-only attempts, and idempotency keys; the events outbox,
its deliveries to each subscription and their append-only attempts; what chats sent Herald
(inbound messages), where each inbound channel's polling stands, and the routes muted; the
rate windows and circuits of channels that every process shares on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def error_info(cls: str | None, code: str | None, message: str | None) -> dict[str, Any] | None:
    """An attempt's ``error`` as the API shows it (``None`` for a success)."""
    if cls is None:
        return None
    return {"class": cls, "code": code, "message": message}


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        uuid.UUID: Uuid,
        dict[str, Any]: JSON,
    }


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    route: Mapped[str | None] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(16))
    channels: Mapped[list[str]] = mapped_column(JSON)
    chain_key: Mapped[str] = mapped_column(String(2000))
    """``,a,b,``: the chain as text, for the list endpoint's ``channel`` filter."""
    recipient: Mapped[dict[str, Any]] = mapped_column(JSON)
    subject: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    retry_schedule: Mapped[list[float]] = mapped_column(JSON)
    """The route's delays between rounds, fixed when the notification was accepted."""
    retry_jitter: Mapped[float] = mapped_column(Float)
    round: Mapped[int] = mapped_column(Integer, default=0)
    """Rounds run so far, over the notification's whole life."""
    round_base: Mapped[int] = mapped_column(Integer, default=0)
    """``round`` when the current set of rounds began (a manual retry starts a new set)."""
    trigger: Mapped[str] = mapped_column(String(16), default="scheduled")
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    delivered_via: Mapped[Any] = mapped_column(JSON, nullable=True)
    delivered_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    hops: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    send_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    owner: Mapped[str | None] = mapped_column(String(64))
    """Name of the API key that created it (none while auth is off)."""
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    """Where its own events go (``app.domain.Callback``), besides the subscriptions."""
    callback_events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """The globs over event types its callback takes; set whenever ``callback_url`` is."""
    holds: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Its route's ``app.domain.HoldPolicy`` (confirmation, per-hop ``ack_within``)."""
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_via: Mapped[str | None] = mapped_column(String(16))
    template: Mapped[str | None] = mapped_column(String(64))
    """The template its subject, text and html were rendered from."""
    rendered: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The template's per-channel-type overrides, rendered: what a channel of that type sends
    in place of subject, text and html."""
    dedup_key: Mapped[str | None] = mapped_column(String(255))
    """The request's ``dedup_key`` (``app.dedup``)."""
    occurrences: Mapped[int] = mapped_column(Integer, server_default=sql_text("1"))
    """Requests it stands for: 1, plus each repeat collapsed into it."""
    digest_key: Mapped[str | None] = mapped_column(String(64))
    """Its digest group (owner, route, recipient) when its route has a ``digest``."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        Index(
            "ix_notifications_digest",
            "digest_key",
            "id",
            postgresql_where=sql_text("status = 'pending' AND digest_key IS NOT NULL"),
            sqlite_where=sql_text("status = 'pending' AND digest_key IS NOT NULL"),
        ),
        Index(
            "ix_notifications_due",
            "next_attempt_at",
            postgresql_where=sql_text("status = 'pending'"),
            sqlite_where=sql_text("status = 'pending'"),
        ),
        Index(
            "ix_notifications_lease",
            "lease_expires_at",
            postgresql_where=sql_text("status = 'delivering'"),
            sqlite_where=sql_text("status = 'delivering'"),
        ),
        Index("ix_notifications_status_id", "status", "id"),
        Index("ix_notifications_route_id", "route", "id"),
        Index("ix_notifications_created_at", "created_at"),
        Index("ix_notifications_finished", "status", "updated_at"),
    )


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(64))
    channel_type: Mapped[str] = mapped_column(String(32))
    round: Mapped[int] = mapped_column(Integer)
    hop: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    provider_status: Mapped[int | None] = mapped_column(Integer)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    duration_ms: Mapped[int] = mapped_column(Integer)
    digest_id: Mapped[uuid.UUID | None]
    """The digest send this attempt was part of (the same on every notification it listed)."""

    __table_args__ = (
        Index("ix_attempts_notification_id", "notification_id", "id"),
        Index("ix_attempts_provider_message_id", "provider_message_id"),
    )

    @property
    def error(self) -> dict[str, Any] | None:
        return error_info(self.error_class, self.error_code, self.error_message)


class ReceiptRecord(Base):
    """A provider's receipt (``app.domain.Receipt``), kept by provider message id whether or
    not its attempt is saved yet: ``attempt_id`` is set once it is matched to one."""

    __tablename__ = "receipts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    channel_type: Mapped[str] = mapped_column(String(32))
    provider_message_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    attempt_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("attempts.id", ondelete="CASCADE")
    )
    notification_id: Mapped[uuid.UUID | None]

    __table_args__ = (
        UniqueConstraint(
            "channel_type", "provider_message_id", "status", name="uq_receipts_message_status"
        ),
        Index("ix_receipts_attempt_id", "attempt_id"),
        Index(
            "ix_receipts_unmatched",
            "received_at",
            postgresql_where=sql_text("attempt_id IS NULL"),
            sqlite_where=sql_text("attempt_id IS NULL"),
        ),
    )


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` already used: by ``POST /v1/notifications`` (``notification_id``
    set, ``response`` null) or by ``POST /v1/notifications/batch`` (``response`` set,
    ``notification_id`` null). Which of the two it was is part of what a replay must match."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The API key's name; empty while auth is off."""
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    notification_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """A batch's whole first answer (the 207 body), replayed as it was."""
    created_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_idempotency_keys_created_at", "created_at"),
        Index("ix_idempotency_keys_notification_id", "notification_id"),
    )
    """``notification_id``'s index serves the cascade when retention deletes a notification."""


class EventRecord(Base):
    """An event (``app.domain.Event``), written in the transaction of the change it reports.

    Immutable once written; ``event_deliveries`` says where it stands for each subscription.
    """

    __tablename__ = "events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    notification_id: Mapped[uuid.UUID | None]
    """No foreign key: the log outlives nothing it must keep, and the accept writes the
    notification and its event in one statement (``Intake``)."""
    owner: Mapped[str | None] = mapped_column(String(64))
    route: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    """The event's ``timestamp``: when the change happened."""

    __table_args__ = (
        Index("ix_events_notification_id", "notification_id", "id"),
        Index("ix_events_type_id", "type", "id"),
        Index("ix_events_created_at", "created_at"),
    )


class EventDelivery(Base):
    """One event for one subscription: its status, retries and the dispatcher's lease.

    ``seq`` is taken from the database when the row is written, inside the transaction of the
    change (after that change locked its notification), so it orders one notification's
    events as they happened, whatever the clocks of the processes that wrote them.
    """

    __tablename__ = "event_deliveries"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    subscription: Mapped[str] = mapped_column(String(64))
    """A configured subscription's name, or ``callback`` (``app.domain.CALLBACK``)."""
    url: Mapped[str | None] = mapped_column(String(2048))
    """A callback's URL (the notification's ``callback_url``); null for a subscription, whose
    URL is in the config."""
    notification_id: Mapped[uuid.UUID | None]
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempt_base: Mapped[int] = mapped_column(Integer, default=0)
    """``attempts`` when the current set of retries began (a redelivery starts a new set)."""
    trigger: Mapped[str] = mapped_column(String(16))
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("event_id", "subscription", name="uq_event_deliveries_event"),
        Index(
            "ix_event_deliveries_due",
            "next_attempt_at",
            "seq",
            postgresql_where=sql_text("status = 'pending'"),
            sqlite_where=sql_text("status = 'pending'"),
        ),
        Index(
            "ix_event_deliveries_open",
            "subscription",
            "notification_id",
            "seq",
            postgresql_where=sql_text("status IN ('pending', 'delivering')"),
            sqlite_where=sql_text("status IN ('pending', 'delivering')"),
        ),
        Index(
            "ix_event_deliveries_lease",
            "lease_expires_at",
            postgresql_where=sql_text("status = 'delivering'"),
            sqlite_where=sql_text("status = 'delivering'"),
        ),
    )


class EventAttempt(Base):
    """One try to deliver an event to one subscription: append-only."""

    __tablename__ = "event_attempts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    subscription: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    """1 for the first try of this event to this subscription, redeliveries included."""
    trigger: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    duration_ms: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_event_attempts_event_id", "event_id", "id"),)

    @property
    def error(self) -> dict[str, Any] | None:
        return error_info(self.error_class, self.error_code, self.error_message)


class InboundMessage(Base):
    """One update a chat sent a bot (``app.domain.InboundKind``) and what Herald did with it.

    Written in the transaction that moves its channel's offset past it (``InboundPoll``), so
    each update is stored once: a restart neither replays it nor loses it.
    """

    __tablename__ = "inbound_messages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    """UUIDv7: lists page newest first on it."""
    channel: Mapped[str] = mapped_column(String(64))
    update_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[str | None] = mapped_column(String(32))
    sender_id: Mapped[str | None] = mapped_column(String(32))
    sender_name: Mapped[str | None] = mapped_column(String(128))
    """``@username``, else the first name."""
    text: Mapped[str | None] = mapped_column(Text)
    """The message's text, or the pressed button's data."""
    command: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    reply: Mapped[str | None] = mapped_column(Text)
    """What Herald answered (none: no answer)."""
    sent_at: Mapped[datetime | None]
    """When the chat sent it (Telegram's ``date``)."""
    received_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("channel", "update_id", name="uq_inbound_messages_update"),
        Index("ix_inbound_messages_channel_id", "channel", "id"),
        Index("ix_inbound_messages_received_at", "received_at"),
    )


class InboundPoll(Base):
    """Where one inbound channel's ``getUpdates`` polling stands, and who polls it.

    ``next_offset`` is the first update not stored yet: every poll asks from it, which also
    tells Telegram that the updates before it are done. ``holder`` polls under a lease until
    ``lease_expires_at``, so one process at a time polls a bot; when it dies, another takes
    over once the lease has run out.
    """

    __tablename__ = "inbound_polls"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    holder: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class RouteMute(Base):
    """A route whose hops of one channel type are left out until ``until`` (``/mute``)."""

    __tablename__ = "route_mutes"

    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    until: Mapped[datetime]
    muted_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class PurgedRange(Base):
    """Ids retention purged, as a range per batch and owner: a ``GET`` of a missing id inside
    one answers that it was purged. Ranges, not ids, keep this small (one row per batch); a
    missing id inside a range that never existed reads as purged too (UUIDv7 ids are not
    guessed, so only a made-up id can)."""

    __tablename__ = "purged_ranges"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    owner: Mapped[str | None] = mapped_column(String(64))
    first_id: Mapped[uuid.UUID]
    last_id: Mapped[uuid.UUID]
    count: Mapped[int] = mapped_column(Integer)
    purged_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_purged_ranges_first_id", "first_id"),
        Index("ix_purged_ranges_purged_at", "purged_at"),
    )


class DedupWindow(Base):
    """A ``dedup_key``'s window: per API key (``scope``), route and key, the notification the
    key made and when its window closes (``app.dedup``).

    The primary key is what makes repeats race-free: the accept inserts the row ``ON CONFLICT
    DO NOTHING`` and, when it exists, locks it (``FOR UPDATE``; SQLite has one writer) before
    deciding, so concurrent repeats of one key are decided one at a time.
    """

    __tablename__ = "dedup_windows"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The API key's name; empty while auth is off."""
    route: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    notification_id: Mapped[uuid.UUID]
    """No foreign key: a window whose notification retention purged simply makes a new one."""
    opened_at: Mapped[datetime]
    closes_at: Mapped[datetime]

    __table_args__ = (Index("ix_dedup_windows_closes_at", "closes_at"),)


class ChannelRateWindow(Base):
    """A channel's ``rate_limit`` as every process on PostgreSQL enforces it: ``admitted``
    holds the times (database clock, epoch seconds) of the channel's last ``count`` admissions,
    oldest first, so a send is admitted when the oldest of them left the window
    (``app.store.fleet``). Keyed by the limit as written too: a process still running an
    older config keeps to its own window meanwhile. Never written on SQLite."""

    __tablename__ = "channel_rate_windows"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    rate: Mapped[str] = mapped_column(String(32), primary_key=True)
    admitted: Mapped[list[float]] = mapped_column(ARRAY(Float()).with_variant(JSON(), "sqlite"))


class ChannelCircuit(Base):
    """A channel's circuit as every process on PostgreSQL shares it (``app.delivery.fleet``):
    its state, the transient failures counted across processes, until when it stays open, and
    the one process holding the half-open trial. Never written on SQLite."""

    __tablename__ = "channel_circuits"

    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    failures: Mapped[int] = mapped_column(Integer)
    opened_until: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    quarantined: Mapped[bool] = mapped_column(Boolean)
    trial_holder: Mapped[str | None] = mapped_column(String(64))
    trial_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]
