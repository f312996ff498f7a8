"""From one stream entry to the notification it asks for: its fields read, the first rule that
matches, the rule's template filled, and the result validated as ``POST /v1/notifications``
validates its body (``NotificationCreate``). Pure: no Redis, no database."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.api.body import parse_json_text
from app.api.problems import validation_errors
from app.api.schemas import NotificationCreate
from app.errors import Unprocessable
from app.ingest.rules import Body, Check, MissingField, StreamConfig, fill, lookup
from app.service import Keyed

ENTRY_ID = "$id"
ENTRY_STREAM = "$stream"


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as read from a stream: its id and its fields (decoded as UTF-8)."""

    stream: str
    id: str
    fields: dict[str, str]


class Refused(Exception):
    """The entry cannot become a notification (bad payload, missing field, invalid body): it
    goes to the dead-letter stream with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def idempotency_key(stream: str, entry_id: str) -> str:
    """The entry's ``Idempotency-Key``: a redelivered entry finds its notification by it."""
    return f"stream:{stream}/{entry_id}"


def fingerprint(entry: Entry) -> str:
    """What an entry's key remembers of its request: a digest of the entry's fields, which
    never change (a stream entry is immutable), so one entry's requests share it. Hashing the
    rendered body instead (as a POST does) was a tenth of the ingest's CPU per entry
    (bench/results/levers.md, "ingest_stream"); a replay of a key is a replay whatever its
    digest (``service.accept_keyed``)."""
    digest = hashlib.sha256()
    for name in sorted(entry.fields):
        value = entry.fields[name]
        digest.update(f"{len(name)}:{name}{len(value)}:{value}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def context_of(entry: Entry) -> dict[str, Any]:
    """What rules and placeholders see of an entry: its fields, ``payload`` parsed as a JSON
    object, and ``$id`` and ``$stream``."""
    context: dict[str, Any] = dict(entry.fields)
    raw = entry.fields.get("payload")
    if raw is not None:
        try:
            payload = parse_json_text(raw)
        except Unprocessable as exc:
            reason = exc.errors[0]["msg"] if exc.errors else exc.detail
            raise Refused(f"payload is not valid JSON: {reason}") from None
        if not isinstance(payload, dict):
            raise Refused(f"payload must be a JSON object, not {type(payload).__name__}")
        context["payload"] = payload
    context[ENTRY_ID] = entry.id
    context[ENTRY_STREAM] = entry.stream
    return context


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule as the consumer runs it: its conditions parsed once."""

    conditions: Sequence[tuple[tuple[str, ...], Check]]
    route: str | None
    body: Body

    def matches(self, context: Mapping[str, Any]) -> bool:
        return all(test.holds(lookup(context, path)) for path, test in self.conditions)


class StreamRules:
    """One configured stream's rules: ``plan`` turns an entry into the request to accept."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.rules = [
            Rule(rule.conditions(), rule.route, rule.notification.given()) for rule in config.rules
        ]

    def plan(self, entry: Entry) -> Keyed | None:
        """The request ``entry`` makes under the first rule that matches, keyed by stream and
        entry id; ``None`` when no rule matches; ``Refused`` when it cannot be made."""
        context = context_of(entry)
        for rule in self.rules:
            if rule.matches(context):
                break
        else:
            return None
        try:
            body = fill(rule.body, context)
        except MissingField as exc:
            raise Refused(str(exc)) from None
        if rule.route is not None:
            body["route"] = rule.route
        body.setdefault("source", entry.stream)
        try:
            request = NotificationCreate.model_validate(body)
        except ValidationError as exc:
            problems = "; ".join(
                ".".join(map(str, ["notification", *error["loc"]])) + f": {error['msg']}"
                for error in validation_errors(exc.errors())
            )
            raise Refused(f"invalid notification: {problems}") from None
        return Keyed(request, idempotency_key(entry.stream, entry.id), fingerprint(entry))
