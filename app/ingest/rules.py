"""``ingest`` in herald.yaml: which events become which notifications.

A stream entry is seen as a mapping: its ``type`` field (the event's name), its ``payload``
field parsed as a JSON object, its other fields as plain strings, and ``$id`` and ``$stream``
(the entry's id and stream). A rule's ``match`` tests fields of that mapping by dotted path
(``payload.amount``); its ``notification`` is a POST body whose strings may hold
placeholders, ``{payload.id}``, filled from the same mapping. Nothing here runs code: a
placeholder is a path and an optional default, nothing more.

Placeholders
    ``{path}`` is the value at ``path`` (dots go into objects, a number indexes an array);
    ``{path:-text}`` is ``text`` when there is nothing at ``path``; ``{{`` and ``}}`` are
    literal braces. A string that is one placeholder and nothing else takes the value as it is
    (a number stays a number, an object an object); inside a longer string a value is written as
    text (strings as they are, anything else as compact JSON). A placeholder whose path is
    missing and has no default makes the entry a dead letter naming the path.

Conditions (every one of a rule's ``match`` must hold; a missing field matches nothing but
``exists: false``)
    a string is a glob (``order.*``) over the value's text; a number or a boolean is equality;
    or a mapping of operators: ``eq``, ``ne``, ``gt``, ``gte``, ``lt``, ``lte`` (numbers, and
    strings that spell one), ``in`` (a list of values), ``glob`` and ``exists``.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import translate
from functools import partial
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from app.domain import AlertGrouping, Severity, Unmatched
from app.durations import Duration

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
STREAM_NAME_LIMIT = 200
"""A stream's name goes into each entry's idempotency key (at most 255 characters)."""
MISSING: Any = object()
_PATH = re.compile(r"^[$A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class MissingField(Exception):
    """A placeholder's path is not in the entry, and it has no default."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the entry has no field {path} (a placeholder needs it)")
        self.path = path


def lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``context``; ``MISSING`` when there is none."""
    value: Any = context
    for part in path:
        if isinstance(value, dict):  # JSON objects are dicts (an ABC check costs more)
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def as_text(value: Any) -> str:
    """A value as a placeholder writes it into a longer string."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _path(text: str) -> tuple[str, ...]:
    if not _PATH.match(text):
        raise ValueError(
            f"{text!r} is not a field path (letters, digits, '_', '-', joined by dots; "
            "$id and $stream name the entry)"
        )
    return tuple(text.split("."))


@dataclass(frozen=True, slots=True)
class Placeholder:
    path: tuple[str, ...]
    default: str | None

    def value(self, context: Mapping[str, Any]) -> Any:
        found = lookup(context, self.path)
        if found is not MISSING:
            return found
        if self.default is not None:
            return self.default
        raise MissingField(".".join(self.path))


@dataclass(frozen=True, slots=True)
class Text:
    """One template string, compiled: literal parts and placeholders."""

    parts: tuple[str | Placeholder, ...]

    def placeholder(self) -> Placeholder | None:
        """The placeholder that is the whole string, if it is one: its value goes as it is."""
        only = self.parts[0] if len(self.parts) == 1 else None
        return only if isinstance(only, Placeholder) else None

    def render(self, context: Mapping[str, Any]) -> Any:
        only = self.placeholder()
        if only is not None:
            return only.value(context)
        return "".join(
            part if isinstance(part, str) else as_text(part.value(context)) for part in self.parts
        )


def compile_text(text: str) -> Text | str:
    """``text`` compiled (a plain string stays one); ``ValueError`` for a bad placeholder."""
    parts: list[str | Placeholder] = []
    literal = ""
    at = 0
    for token in _TOKEN.finditer(text):
        literal += text[at : token.start()]
        at = token.end()
        found = token.group(0)
        if found in ("{{", "}}"):
            literal += found[0]
            continue
        if found in ("{", "}"):
            raise ValueError(
                f"unmatched {found!r} at character {token.start() + 1} (write {found * 2} for "
                "a literal brace)"
            )
        inner = token.group(1).strip()
        path, sep, default = inner.partition(":-")
        if literal:
            parts.append(literal)
            literal = ""
        parts.append(Placeholder(_path(path.strip()), default if sep else None))
    literal += text[at:]
    if literal:
        parts.append(literal)
    if not any(isinstance(part, Placeholder) for part in parts):
        return literal if len(parts) <= 1 else "".join(str(part) for part in parts)
    return Text(tuple(parts))


def compile_template(value: Any, where: str = "") -> Any:
    """A template value with every string compiled; ``ValueError`` naming where inside."""
    if isinstance(value, str):
        try:
            return compile_text(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}" if where else str(exc)) from None
    if isinstance(value, Mapping):
        return {
            str(key): compile_template(item, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            compile_template(item, f"{where}.{index}" if where else str(index))
            for index, item in enumerate(value)
        ]
    return value


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """A compiled template filled from ``context``; ``MissingField`` for a missing path."""
    if isinstance(template, Text):
        return template.render(context)
    if isinstance(template, dict):
        return {key: render(item, context) for key, item in template.items()}
    if isinstance(template, list):
        return [render(item, context) for item in template]
    return template


# --- conditions -------------------------------------------------------------------------------

Scalar = str | int | float | bool


def _number(value: Any) -> float | None:
    """A value as a number to compare: numbers, and strings that spell a finite one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _equal(value: Any, expected: Scalar) -> bool:
    if isinstance(expected, bool):
        return value is expected
    if isinstance(expected, int | float):
        number = _number(value)
        return number is not None and number == expected
    return as_text(value) == expected


class Condition(BaseModel):
    """Operators on one field, every one of which must hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    eq: Scalar | None = None
    ne: Scalar | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1, max_length=100)
    glob: str | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _some(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError("give at least one of eq, ne, gt, gte, lt, lte, in, glob, exists")
        return self

    def check(self) -> Check:
        """The condition made once into what a rule tests each entry with."""
        return Check(
            exists=self.exists,
            bounds=tuple(
                (bound, compare)
                for bound, compare in (
                    (self.gt, operator.gt),
                    (self.gte, operator.ge),
                    (self.lt, operator.lt),
                    (self.lte, operator.le),
                )
                if bound is not None
            ),
            eq=self.eq,
            ne=self.ne,
            in_=None if self.in_ is None else tuple(self.in_),
            # fnmatchcase's own compiled form of the glob, looked up once here, not per value
            glob=None if self.glob is None else re.compile(translate(self.glob)).match,
        )


@dataclass(frozen=True, slots=True)
class Check:
    """A ``Condition`` as the consumer tests it: its bounds listed and its glob compiled once
    (a pydantic model's fields, and ``fnmatchcase``'s cache, cost more per entry)."""

    exists: bool | None
    bounds: tuple[tuple[float, Callable[[float, float], bool]], ...]
    eq: Scalar | None
    ne: Scalar | None
    in_: tuple[Scalar, ...] | None
    glob: Callable[[str], re.Match[str] | None] | None

    def holds(self, value: Any) -> bool:
        if value is MISSING:
            return self.exists is False
        if self.exists is False:
            return False
        if self.bounds:
            # Only then is the value read as a number: for a string that spells none, that read
            # raises inside float(), the largest part of a glob rule's test otherwise.
            number = _number(value)
            if number is None or not all(compare(number, bound) for bound, compare in self.bounds):
                return False
        return (
            (self.eq is None or _equal(value, self.eq))
            and (self.ne is None or not _equal(value, self.ne))
            and (self.in_ is None or any(_equal(value, item) for item in self.in_))
            and (self.glob is None or self.glob(as_text(value)) is not None)
        )


def _condition(value: Scalar | Condition) -> Condition:
    if isinstance(value, Condition):
        return value
    if isinstance(value, str):
        return Condition(glob=value)
    return Condition(eq=value)


def _match_paths(value: dict[str, Scalar | Condition]) -> dict[str, Scalar | Condition]:
    for key in value:
        _path(key)
    return value


# --- rules and streams ------------------------------------------------------------------------

Templated = Annotated[Any, AfterValidator(compile_template)]


class NotificationTemplate(BaseModel):
    """A ``POST /v1/notifications`` body, but ``route``, whose strings may hold placeholders.

    Its fields are the request's (a test pins them); the route is the rule's own."""

    model_config = ConfigDict(extra="forbid")

    channels: Templated = None
    recipient: Templated = None
    subject: Templated = None
    text: Templated = None
    html: Templated = None
    severity: Templated = None
    source: Templated = None
    metadata: Templated = None
    send_at: Templated = None
    expires_at: Templated = None
    callback_url: Templated = None
    callback_events: Templated = None
    template: Templated = None
    """A configured template (``templates``), rendered with ``data`` as a POST's is."""
    data: Templated = None

    def given(self) -> Body:
        """The fields the rule gives, each with its filler: what ``fill`` fills."""
        return tuple((name, filler(getattr(self, name))) for name in self.model_fields_set)


Body = tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...]
"""A ``NotificationTemplate``'s given fields and their fillers, listed once per rule."""


def filler(template: Any) -> Callable[[Mapping[str, Any]], Any]:
    """``render`` of ``template``, its dispatch done once: a string that is one placeholder is
    that placeholder's value (as ``Text.render`` answers it), a ``Text`` its ``render``, anything
    else ``render`` itself (a test pins them to ``render``'s answers)."""
    if isinstance(template, Text):
        only = template.placeholder()
        return template.render if only is None else only.value
    return partial(render, template)


def fill(body: Body, context: Mapping[str, Any]) -> dict[str, Any]:
    """The body filled from ``context``; ``MissingField`` for a missing path."""
    return {name: fill_one(context) for name, fill_one in body}


DEFAULT_NOTIFICATION = NotificationTemplate.model_validate(
    {"subject": "{type:-event}", "text": "{type:-event}: {payload:-}"}
)
"""What a rule with no ``notification`` sends: the event's type, and its payload as JSON."""


class RuleConfig(BaseModel):
    """First match wins: ``match`` (all of it), then ``route`` and ``notification``."""

    model_config = ConfigDict(extra="forbid")

    match: Annotated[dict[str, Scalar | Condition], AfterValidator(_match_paths)] = Field(
        default_factory=dict
    )
    route: str | None = Field(default=None, pattern=NAME)
    """None: the notification's ``channels``, else the config's default route."""
    notification: NotificationTemplate = Field(default_factory=lambda: DEFAULT_NOTIFICATION)

    def conditions(self) -> list[tuple[tuple[str, ...], Check]]:
        return [
            (tuple(path.split(".")), _condition(test).check()) for path, test in self.match.items()
        ]


class DeadLetterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str | None = Field(default=None, min_length=1, max_length=STREAM_NAME_LIMIT)
    """Default: the stream's name followed by ``:dead``."""
    after: int = Field(default=5, ge=1, le=1000)
    """Deliveries of an entry that failed (or whose consumer died) before it is dead-lettered."""
    maxlen: int = Field(default=100_000, ge=1)
    """The dead-letter stream is trimmed to about this many entries."""


class StreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str = Field(min_length=1, max_length=STREAM_NAME_LIMIT)
    group: str = Field(default="herald", min_length=1, max_length=STREAM_NAME_LIMIT)
    rules: list[RuleConfig] = Field(min_length=1, max_length=100)
    unmatched: Unmatched = Unmatched.ACK
    dead_letter: DeadLetterConfig = Field(default_factory=DeadLetterConfig)
    owner: str | None = None
    """The API key (by name) the notifications belong to: its reads and its subscriptions'
    ``owners`` see them. None: no owner, as with auth off."""
    group_start: str = Field(default="0", pattern=r"^(0|\$)$")
    """Where a group created by Herald starts: ``0``, every entry the stream holds; ``$``,
    only entries added from then on."""

    @property
    def dead_letter_stream(self) -> str:
        return self.dead_letter.stream or f"{self.stream}:dead"

    @model_validator(mode="after")
    def _distinct_dead_letters(self) -> StreamConfig:
        if self.dead_letter_stream == self.stream:
            raise ValueError("dead_letter.stream must differ from stream")
        return self


def _redis_url(value: SecretStr) -> SecretStr:
    url = value.get_secret_value()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


class RedisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: Annotated[SecretStr, AfterValidator(_redis_url)]
    """``redis://[:password@]host:port/db``, ``rediss://…`` (TLS) or ``unix://path``."""


class AlertmanagerConfig(BaseModel):
    """How ``POST /v1/integrations/alertmanager`` turns a webhook call into notifications."""

    model_config = ConfigDict(extra="forbid")

    per: AlertGrouping = AlertGrouping.GROUP
    resolved: bool = True
    """Send a notification when alerts resolve (Alertmanager's ``send_resolved`` too)."""
    route: str | None = Field(default=None, pattern=NAME)
    """The route of alerts without ``route_label``; None: the config's default route."""
    route_label: str = Field(default="herald_route", min_length=1, max_length=128)
    severity_label: str = Field(default="severity", min_length=1, max_length=128)
    severities: dict[str, Severity] = Field(
        default_factory=lambda: {
            "page": Severity.CRITICAL,
            "high": Severity.ERROR,
            "warn": Severity.WARNING,
            "low": Severity.INFO,
            "none": Severity.INFO,
        }
    )
    """Label values that are not one of Herald's severities, mapped (case-insensitively)."""
    default_severity: Severity = Severity.WARNING
    """For an alert with no severity label, or one neither a severity nor in ``severities``."""


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    redis: RedisConfig | None = None
    streams: list[StreamConfig] = Field(default_factory=list, max_length=64)
    serve: bool = True
    """``herald serve`` consumes the streams too (the embedded default); false when separate
    ``herald ingest`` processes do."""
    batch: int = Field(default=500, ge=1, le=1000)
    """Entries read, stored and acked together."""
    concurrency: int = Field(default=4, ge=1, le=32)
    """Batches of one stream in flight at once in one process."""
    block: Duration = Field(default=2.0, gt=0, le=60)
    """How long one read waits for new entries."""
    claim_idle: Duration = Field(default=30.0, ge=0.1, le=86400)
    """Entries pending longer than this (a dead consumer's, or a failed try's) are taken over
    and tried again."""
    alertmanager: AlertmanagerConfig = Field(default_factory=AlertmanagerConfig)

    @field_validator("streams")
    @classmethod
    def _distinct(cls, value: list[StreamConfig]) -> list[StreamConfig]:
        seen = [(s.stream, s.group) for s in value]
        repeated = sorted({f"{s}/{g}" for s, g in seen if seen.count((s, g)) > 1})
        if repeated:
            raise ValueError(f"stream and group configured more than once: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _needs_redis(self) -> IngestConfig:
        if self.streams and self.redis is None:
            raise ValueError("streams need redis: {url: redis://…}")
        return self
