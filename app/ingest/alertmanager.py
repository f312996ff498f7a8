"""Alertmanager's webhook payload (version 4) and the notifications it becomes.

One notification per alert group (``per: group``, the default) or per alert (``per: alert``):
the subject and text come from the labels and annotations, the severity from the
``severity`` label, the route from the ``herald_route`` label or the configured default, and
the idempotency key from the group key, the status and each alert's fingerprint and start,
so a group Alertmanager sends again unchanged (its ``repeat_interval``, a retry) is one
notification, while an alert joining the group or the group resolving is a new one. Pure: the
API stores what ``plan`` returns through ``service.accept_keyed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.body import body_hash
from app.api.problems import validation_errors
from app.api.schemas import BODY_LIMIT, NotificationCreate
from app.domain import AlertGrouping, AlertStatus, Severity
from app.errors import Unprocessable
from app.ingest.rules import AlertmanagerConfig
from app.service import Keyed

SOURCE = "alertmanager"
SUBJECT_LIMIT = 998
TEXT_BUDGET = BODY_LIMIT - 2048
"""Bytes of alert lines in one text, leaving room for the closing lines."""
ALERTS_LIMIT = 1000
LABELS = dict[str, str]
_SEVERITY_ORDER = list(Severity)


class Alert(BaseModel):
    """One alert of the group, as Alertmanager sends it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: AlertStatus
    labels: LABELS
    annotations: LABELS = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL", max_length=4096)
    fingerprint: str = Field(min_length=1, max_length=64)


class AlertmanagerWebhook(BaseModel):
    """The body of Alertmanager's ``webhook_config`` call, payload version 4."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: Literal["4"] = Field(description="Payload version: only 4 is understood.")
    group_key: str = Field(alias="groupKey", min_length=1, max_length=8192)
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts", ge=0)
    status: AlertStatus
    receiver: str = Field(max_length=1024)
    group_labels: LABELS = Field(alias="groupLabels")
    common_labels: LABELS = Field(alias="commonLabels")
    common_annotations: LABELS = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL", max_length=4096)
    alerts: list[Alert] = Field(min_length=1, max_length=ALERTS_LIMIT)


@dataclass(frozen=True, slots=True)
class Planned:
    """One notification a webhook call asks for, and what it is about."""

    keyed: Keyed
    status: AlertStatus
    alerts: int
    route_from: list[str | int]
    """Where the route came from: the label's place in the body, or ``["body"]``."""


@dataclass(frozen=True, slots=True)
class Plan:
    notifications: list[Planned]
    skipped: list[AlertStatus]
    """Notifications not made: resolved ones, while ``resolved`` is off."""


def plan(payload: AlertmanagerWebhook, config: AlertmanagerConfig) -> Plan:
    """The notifications ``payload`` asks for; ``Unprocessable`` naming the field whose value
    makes an invalid one."""
    planned: list[Planned] = []
    skipped: list[AlertStatus] = []
    if config.per is AlertGrouping.GROUP:
        if payload.status is AlertStatus.RESOLVED and not config.resolved:
            skipped.append(payload.status)
        else:
            planned.append(_group(payload, config))
        return Plan(planned, skipped)
    for index, alert in enumerate(payload.alerts):
        if alert.status is AlertStatus.RESOLVED and not config.resolved:
            skipped.append(alert.status)
            continue
        planned.append(_alert(payload, index, alert, config))
    return Plan(planned, skipped)


def _group(payload: AlertmanagerWebhook, config: AlertmanagerConfig) -> Planned:
    firing = [a for a in payload.alerts if a.status is AlertStatus.FIRING]
    resolved = [a for a in payload.alerts if a.status is AlertStatus.RESOLVED]
    status = payload.status
    count = f":{len(firing)}" if status is AlertStatus.FIRING else ""
    names = " ".join(value for _, value in sorted(payload.group_labels.items()))
    name = names or payload.common_labels.get("alertname") or "alerts"
    summary = _summary(payload.common_annotations)
    lines = [summary, ""] if summary else []
    budget = TEXT_BUDGET
    for title, group in (("Firing", firing), ("Resolved", resolved)):
        if not group:
            continue
        lines.append(f"{title} ({len(group)}):")
        for at, alert in enumerate(group):
            line = _alert_line(alert, payload.group_labels)
            budget -= len(line.encode())
            if budget < 0:
                lines.append(f"… and {len(group) - at} more")
                break
            lines.append(line)
    if payload.truncated_alerts:
        lines.append(f"… and {payload.truncated_alerts} alerts Alertmanager left out")
    if payload.external_url:
        lines.append(f"Alertmanager: {payload.external_url}")
    levels = [a.labels.get(config.severity_label) for a in payload.alerts]
    label = payload.common_labels.get(config.severity_label)
    severity = (
        _severity(label, config)
        if label is not None
        else max((_severity(v, config) for v in levels), key=_SEVERITY_ORDER.index)
    )
    route_label = payload.common_labels.get(config.route_label)
    body = {
        "subject": _cut(f"[{status.upper()}{count}] {name}", SUBJECT_LIMIT),
        "text": "\n".join(lines),
        "severity": severity,
        "source": SOURCE,
        "metadata": {
            "alertmanager": {
                "receiver": payload.receiver[:256],
                "status": status,
                "group_key": payload.group_key[:1024],
                "group_labels": _small(payload.group_labels),
                "alerts": len(payload.alerts),
                "external_url": payload.external_url[:1024],
            }
        },
    }
    route = route_label if route_label is not None else config.route
    if route is not None:
        body["route"] = route
    where: list[str | int] = (
        ["body", "commonLabels", config.route_label] if route_label else ["body"]
    )
    key = _key(payload.group_key, status, payload.alerts)
    return Planned(_keyed(body, key, where), status, len(payload.alerts), where)


def _alert(
    payload: AlertmanagerWebhook, index: int, alert: Alert, config: AlertmanagerConfig
) -> Planned:
    name = alert.labels.get("alertname") or "alert"
    summary = _summary(alert.annotations)
    subject = f"[{alert.status.upper()}] {name}" + (f": {summary}" if summary else "")
    lines = [_alert_line(alert, {})]
    description = alert.annotations.get("description")
    if description and description != summary:
        lines += ["", _cut(description, 8192)]
    if payload.external_url:
        lines.append(f"Alertmanager: {payload.external_url}")
    route_label = alert.labels.get(config.route_label)
    body: dict[str, Any] = {
        "subject": _cut(subject, SUBJECT_LIMIT),
        "text": _cut("\n".join(lines), TEXT_BUDGET),
        "severity": _severity(alert.labels.get(config.severity_label), config),
        "source": SOURCE,
        "metadata": {
            "alertmanager": {
                "receiver": payload.receiver[:256],
                "status": alert.status,
                "group_key": payload.group_key[:1024],
                "fingerprint": alert.fingerprint,
                "external_url": payload.external_url[:1024],
            }
        },
    }
    route = route_label if route_label is not None else config.route
    if route is not None:
        body["route"] = route
    where: list[str | int] = (
        ["body", "alerts", index, "labels", config.route_label] if route_label else ["body"]
    )
    key = _key(payload.group_key, alert.status, [alert])
    return Planned(_keyed(body, key, where), alert.status, 1, where)


def _keyed(body: dict[str, Any], key: str, where: list[str | int]) -> Keyed:
    try:
        request = NotificationCreate.model_validate(body)
    except ValidationError as exc:
        errors = [{"loc": where, "msg": e["msg"]} for e in validation_errors(exc.errors())]
        raise Unprocessable(
            f"the alerts make an invalid notification: {errors[0]['msg']}", errors=errors
        ) from None
    return Keyed(request, key, body_hash(body))


def _key(group_key: str, status: AlertStatus, alerts: Sequence[Alert]) -> str:
    """The idempotency key of a notification about ``alerts`` of a group in ``status``."""
    parts = sorted(f"{a.fingerprint}@{a.starts_at.isoformat()}" for a in alerts)
    digest = hashlib.sha256("\n".join([group_key, status, *parts]).encode()).hexdigest()
    return f"alertmanager:{digest}"


def _severity(value: str | None, config: AlertmanagerConfig) -> Severity:
    if value is None:
        return config.default_severity
    wanted = value.strip().lower()
    if wanted in Severity._value2member_map_:
        return Severity(wanted)
    mapped = {k.lower(): v for k, v in config.severities.items()}.get(wanted)
    return mapped or config.default_severity


def _summary(annotations: Mapping[str, str]) -> str:
    return annotations.get("summary") or annotations.get("description") or ""


def _alert_line(alert: Alert, shown: Mapping[str, str]) -> str:
    """One alert as a line of the text: what it says, its labels, when it started."""
    what = _summary(alert.annotations) or alert.labels.get("alertname", "alert")
    labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k not in shown)
    line = f"- {what}" + (f" [{labels}]" if labels else "")
    line += f" since {alert.starts_at.isoformat()}"
    if alert.status is AlertStatus.RESOLVED and alert.ends_at is not None:
        line += f", resolved {alert.ends_at.isoformat()}"
    if alert.generator_url:
        line += f"\n  {alert.generator_url}"
    return _cut(line, 4096)


def _small(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels for the metadata, each cut short (metadata is at most 16 KiB)."""
    return {k[:128]: v[:256] for k, v in list(labels.items())[:20]}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
