"""Every Prometheus collector Herald exports, and nowhere else.

Labels are bounded: route, channel and status names come from the config file, never from a
request, and no id or address is ever a label value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from app.domain import FINAL_STATUSES, NotificationStatus

M = TypeVar("M", Counter, Gauge, Histogram)


@lru_cache(maxsize=4096)
def series(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, looked up once per combination, for the paths that count
    once or more per request or notification
    (bench/results/levers.md, "metric series looked up once").
    The label values are bounded (see above), so the cache is too."""
    return metric.labels(*values)


# A ``_created`` series per counter and histogram doubles what a scrape carries and no panel or
# alert reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

REGISTRY = CollectorRegistry(auto_describe=True)
"""What every process exports: what it counted itself, and its ``process_*`` and ``python_*``
series."""
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

QUEUE_REGISTRY = CollectorRegistry(auto_describe=True)
"""The queue as read from the database at scrape time: only the API reads it, so only the API
exports it (a worker's constant 0 would read as an empty queue)."""

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    900,
    1800,
    3600,
    7200,
    21600,
    86400,
)
_ATTEMPT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

notifications_received = Counter(
    "herald_notifications_received_total",
    "Notifications accepted by the API.",
    ["route"],
    registry=REGISTRY,
)
notifications_finished = Counter(
    "herald_notifications_finished_total",
    "Notifications that reached a final status.",
    ["route", "status"],
    registry=REGISTRY,
)
attempts = Counter(
    "herald_attempts_total",
    "Delivery attempts by channel, outcome and error class.",
    ["channel", "outcome", "error_class"],
    registry=REGISTRY,
)
attempt_duration = Histogram(
    "herald_attempt_duration_seconds",
    "Time one attempt took, provider call included.",
    ["channel"],
    buckets=_ATTEMPT_BUCKETS,
    registry=REGISTRY,
)
delivery_latency = Histogram(
    "herald_delivery_latency_seconds",
    "From acceptance to delivery.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
delivered_hop = Counter(
    "herald_delivered_hop_total",
    "Deliveries by the hop (position in the chain) that delivered.",
    ["route", "channel", "hop"],
    registry=REGISTRY,
)
queue_depth = Gauge(
    "herald_queue_depth",
    "Notifications by status, as of the last scrape.",
    ["status"],
    registry=QUEUE_REGISTRY,
)
queue_oldest_due_age = Gauge(
    "herald_queue_oldest_due_age_seconds",
    "How long the oldest due pending notification has waited past its due time.",
    registry=QUEUE_REGISTRY,
)
channel_circuit_state = Gauge(
    "herald_channel_circuit_state",
    "Circuit state per channel: 0 closed, 1 half-open, 2 open.",
    ["channel"],
    registry=REGISTRY,
)
http_requests = Counter(
    "herald_http_requests_total",
    "HTTP requests served.",
    ["method", "path", "status"],
    registry=REGISTRY,
)
http_request_duration = Histogram(
    "herald_http_request_duration_seconds",
    "HTTP request duration.",
    ["method", "path"],
    buckets=_HTTP_BUCKETS,
    registry=REGISTRY,
)
leases_recovered = Counter(
    "herald_leases_recovered_total",
    "Claims taken back from workers whose lease ran out.",
    registry=REGISTRY,
)
retention_deleted = Counter(
    "herald_retention_deleted_total",
    "Finished notifications retention purged (their attempts and events with them), by status.",
    ["status"],
    registry=REGISTRY,
)
for _status in sorted(FINAL_STATUSES):  # a series per status from the start: rate() reads 0
    retention_deleted.labels(_status)

task_restarts = Counter(
    "herald_task_restarts_total",
    "Restarts of a worker's loops after a failure: delivery, listener, renewal, sweep, "
    "retention, events, wait_listener, ingest, inbound.",
    ["task"],
    registry=REGISTRY,
)

waiters = Gauge(
    "herald_waiters",
    "Requests this process holds until their notification is final (?wait=).",
    registry=REGISTRY,
)
waits = Counter(
    "herald_waits_total",
    "Requests that waited (?wait=), by how the wait ended: final, timeout, busy.",
    ["result"],
    registry=REGISTRY,
)

events_emitted = Counter(
    "herald_events_emitted_total",
    "Events written to the outbox (those at least one subscription takes), by type.",
    ["type"],
    registry=REGISTRY,
)
events_delivered = Counter(
    "herald_events_delivered_total",
    "Events a subscription's receiver accepted (2xx).",
    ["subscription"],
    registry=REGISTRY,
)
event_attempts = Counter(
    "herald_event_attempts_total",
    "Tries to deliver an event, by subscription, outcome and error class.",
    ["subscription", "outcome", "error_class"],
    registry=REGISTRY,
)
events_pending = Gauge(
    "herald_events_pending",
    "Event deliveries not settled yet (pending or being sent) per subscription, as this "
    "process's dispatcher last counted them (every dispatcher counts the same rows).",
    ["subscription"],
    registry=REGISTRY,
)

ingest_entries = Counter(
    "herald_ingest_entries_total",
    "Redis Stream entries handled, by stream and outcome: accepted, replayed, unmatched, "
    "dead_lettered, failed (left pending for a retry).",
    ["stream", "outcome"],
    registry=REGISTRY,
)
ingest_pending = Gauge(
    "herald_ingest_pending_entries",
    "Entries the stream's group has read but not acked (being processed, or held by a "
    "consumer that failed or died), as this process last read them.",
    ["stream"],
    registry=REGISTRY,
)
ingest_lag = Gauge(
    "herald_ingest_lag_entries",
    "Entries in the stream the group has not read yet, as this process last read them.",
    ["stream"],
    registry=REGISTRY,
)
alertmanager_notifications = Counter(
    "herald_alertmanager_notifications_total",
    "Notifications Alertmanager webhook calls asked for, by alert status (firing, resolved) "
    "and outcome: accepted, replayed (a resent group), skipped (resolved, while off).",
    ["status", "outcome"],
    registry=REGISTRY,
)
receipts = Counter(
    "herald_receipts_total",
    "Provider receipts (Twilio status callbacks, WhatsApp statuses) by channel and what "
    "became of them: matched to an attempt, unmatched (kept until its send is saved), "
    "duplicate, ignored (a status Herald does not track), or refused (unsigned, forged, stale).",
    ["channel", "result"],
    registry=REGISTRY,
)
acks = Counter(
    "herald_acks_total",
    "Acknowledgements by how they came (api, email, ntfy, telegram) and what became of them: "
    "acknowledged, already_acknowledged, not_found, not_ackable, or refused (a link that is "
    "forged or expired).",
    ["via", "result"],
    registry=REGISTRY,
)
inbound_messages = Counter(
    "herald_inbound_messages_total",
    "Updates a bot received (Telegram inbound), by channel and what Herald did: handled, "
    "invalid (answered with help), ignored, not_allowed (from a chat not allowed), failed.",
    ["channel", "outcome"],
    registry=REGISTRY,
)
inbound_poll_failures = Counter(
    "herald_inbound_poll_failures_total",
    "getUpdates calls that failed (connection refused, 5xx, 409 Conflict, 429), by channel.",
    ["channel"],
    registry=REGISTRY,
)

STATUSES = tuple(NotificationStatus)


def route_label(route: str | None) -> str:
    """Metrics label for a notification's route; an inline chain has none."""
    return route if route is not None else "(inline)"


def api_exposition() -> bytes:
    """What ``GET /metrics`` of an API process answers: the process's metrics and the queue's."""
    return generate_latest(REGISTRY) + generate_latest(QUEUE_REGISTRY)
