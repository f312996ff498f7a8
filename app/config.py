"""Settings from ``HERALD_*`` environment variables, and the ``herald.yaml`` models.

``load_config`` reads the file, fills ``${VAR}`` / ``${VAR:-default}`` from the environment,
validates every section and every channel against its type's model, and raises one
``ConfigError`` listing each bad field by its path (``channels.email.port: …``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.channels.base import ChannelConfig, CircuitConfig, HttpUrl, distinct_setting
from app.channels.registry import ChannelRegistry
from app.channels.telegram import TelegramConfig
from app.channels.webhook import secret_key
from app.dedup import DedupConfig, DigestConfig
from app.domain import (
    CALLBACK,
    FIRST_SUCCESS,
    ConfirmOn,
    EventType,
    HoldPolicy,
    Strategy,
    event_types_matching,
)
from app.durations import Duration
from app.ingest.rules import IngestConfig
from app.quiet import QuietHours
from app.ratelimit import RateLimit, parse_rate
from app.retention import RetentionConfig, RetentionPeriods
from app.store.db import normalize_database_url
from app.templates import (
    OVERRIDE_MODELS,
    MessageTemplate,
    TemplateCompileError,
    TemplateConfig,
    TemplateFields,
    compile_template,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0)
DEFAULT_JITTER = 0.2


class Settings(BaseSettings):
    """Process settings; everything that is not a channel or a route."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./herald.db"
    config: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "console"] = "console"
    worker_concurrency: int = Field(default=32, ge=1, le=1024)
    """Deliveries in flight at once in one worker."""
    worker_batch_size: int = Field(default=64, ge=1, le=1000)
    """Notifications claimed per query."""
    poll_interval: Duration = 1.0
    """Longest sleep between claims when nothing wakes the worker."""
    lease: Duration = 60.0
    """How long a claim lasts before another worker may take the notification over."""
    shutdown_timeout: Duration = 20.0

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: list[Duration] = Field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    """Delays between rounds: N delays allow N + 1 rounds."""
    jitter: float = Field(default=DEFAULT_JITTER, ge=0.0, le=1.0)
    """Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""


class HopConfig(BaseModel):
    """A route's channel with per-hop options: ``{channel: NAME, ack_within: DURATION}``."""

    model_config = ConfigDict(extra="forbid")

    channel: str
    ack_within: Duration | None = Field(default=None, gt=0)
    """``strategy: escalate`` only: how long to wait for an acknowledgement once this hop
    delivered before the next hop is tried."""


class ConfirmConfig(BaseModel):
    """``confirm``: a delivered hop of a channel that sends receipts counts only once its
    ``delivered`` receipt arrives within ``within``."""

    model_config = ConfigDict(extra="forbid")

    within: Duration = Field(gt=0)
    on: list[ConfirmOn] = Field(default_factory=lambda: list(ConfirmOn), min_length=1)
    """What sends the chain on to the next hop."""


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[str | HopConfig] = Field(min_length=1)
    strategy: Strategy = Strategy.FALLBACK
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    ttl: Duration | None = None
    """Default lifetime: a notification not delivered by then ends ``expired``."""
    confirm: ConfirmConfig | None = None

    @property
    def names(self) -> list[str]:
        """The chain: the channels' names, in order."""
        return [item if isinstance(item, str) else item.channel for item in self.channels]

    @property
    def holds(self) -> HoldPolicy | None:
        """How the route holds delivered hops open (``None``: never)."""
        acks = tuple(None if isinstance(item, str) else item.ack_within for item in self.channels)
        if self.confirm is None and not any(acks):
            return None
        return HoldPolicy(
            confirm_within=self.confirm.within if self.confirm else None,
            confirm_on=frozenset(self.confirm.on) if self.confirm else frozenset(ConfirmOn),
            ack_within=acks if any(acks) else (),
        )

    retention: RetentionPeriods | None = None
    """How long its finished notifications are kept, per status (others: the global
    ``retention`` section's)."""
    quiet_hours: QuietHours | None = None
    """Hops held or skipped during a local time window (a request's ``recipient.quiet_hours``
    replaces it)."""
    dedup: DedupConfig | None = None
    """What a repeat of a request's ``dedup_key`` within the window does (``app.dedup``)."""
    digest: DigestConfig | None = None
    """Its notifications for one recipient are held and sent as one message (``app.dedup``)."""

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[str | HopConfig]) -> list[str | HopConfig]:
        distinct_setting(
            [item if isinstance(item, str) else item.channel for item in value], "channel"
        )
        return value

    @model_validator(mode="after")
    def _options_fit_the_strategy(self) -> RouteConfig:
        if self.strategy is not Strategy.ESCALATE:
            for index, item in enumerate(self.channels):
                if not isinstance(item, str) and item.ack_within is not None:
                    raise ValueError(
                        f"channels.{index}.ack_within applies only to strategy: escalate"
                    )
        if self.confirm is not None and self.strategy not in FIRST_SUCCESS:
            raise ValueError("confirm applies only to strategy: fallback or escalate")
        if self.digest is not None and (
            self.holds is not None or self.strategy is Strategy.ESCALATE
        ):
            raise ValueError(
                "digest does not combine with confirm or strategy: escalate (a digest is one "
                "send for many notifications; a hold waits on one notification's receipt or "
                "acknowledgement)"
            )
        return self


Scope = Literal["send", "read", "admin"]


class ApiKeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["send", "read"]))
    rate_limit: RateLimit | None = None
    """Requests this key may make per process: ``100/s``, ``600/m``, ``10000/h``."""

    @property
    def rate(self) -> tuple[int, float] | None:
        """``(requests, per_seconds)`` parsed from ``rate_limit``, as channels parse theirs."""
        return parse_rate(self.rate_limit)

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("set exactly one of key and key_sha256")
        _not_empty(self.key, "key")
        return self


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    metrics_key: SecretStr | None = None
    """Leave it out for an open ``/metrics``; an empty one is refused, as an empty API key is
    (a ``${VAR}`` set to nothing would otherwise turn metrics auth off without a word)."""

    @field_validator("metrics_key")
    @classmethod
    def _metrics_key(cls, value: SecretStr | None) -> SecretStr | None:
        _not_empty(value, "metrics_key")
        return value


def _not_empty(secret: SecretStr | None, name: str) -> None:
    if secret is not None and not secret.get_secret_value():
        raise ValueError(f"{name} is empty (is its environment variable set?)")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_private_addresses: bool = False
    allowed_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)


def event_glob_problem(
    value: str, among: Collection[EventType] = frozenset(EventType)
) -> str | None:
    """Why ``value`` names none of the event types ``among`` (an unknown type, or a glob that
    matches none of them); ``None`` when it names some."""
    if any(member in among for member in event_types_matching(value)):
        return None
    known = [str(member) for member in EventType if member in among]
    if any(char in value for char in "*?["):
        return f"{value!r} matches no event type (known: {', '.join(known)})"
    return unknown("event type", value, known)


def _event_type_glob(value: str) -> str:
    problem = event_glob_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


EventTypeGlob = Annotated[str, AfterValidator(_event_type_glob)]


def _whsec(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().startswith("whsec_"):
        raise ValueError("secret must be whsec_ followed by base64")
    secret_key(value.get_secret_value())
    return value


class SubscriptionConfig(BaseModel):
    """A receiver of events (``events.subscriptions``): where, how signed, which events.

    ``types`` are globs over the event types; ``routes`` and ``owners`` (API key names), when
    given, narrow it to the events of those notifications, so such a subscription gets no
    ``channel.*`` event (those belong to no route and no owner).
    """

    # Validation errors never echo the input: the secret is in it.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=NAME_PATTERN)
    url: HttpUrl
    """Where events are POSTed; the outbound guard checks it on every send."""
    secret: Annotated[SecretStr, AfterValidator(_whsec)]
    """``whsec_<base64>``: every request is signed (Standard Webhooks)."""
    types: list[EventTypeGlob] = Field(default_factory=lambda: ["*"], min_length=1)
    routes: list[str] = Field(default_factory=list)
    owners: list[str] = Field(default_factory=list)
    include_content: bool = False
    """Add the notification's content (subject, bodies, recipient, metadata) as
    ``data.content``; off, an event carries no message body."""
    timeout: Duration = Field(default=10.0, gt=0, le=60)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)

    @cached_property
    def event_types(self) -> frozenset[EventType]:
        return frozenset(member for glob in self.types for member in event_types_matching(glob))

    def takes(self, event_type: EventType, route: str | None, owner: str | None) -> bool:
        """Whether an event of this type, about a notification of ``route`` and ``owner``
        (both ``None`` for a channel event), is for this subscription."""
        return (
            event_type in self.event_types
            and (not self.routes or route in self.routes)
            and (not self.owners or owner in self.owners)
        )


class EventsConfig(BaseModel):
    # Validation errors never echo the input: a secret is in it.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    callback_secret: Annotated[SecretStr, AfterValidator(_whsec)] | None = None
    """``whsec_<base64>``: signs every request to a notification's ``callback_url``; without
    it a request naming a ``callback_url`` is refused (422)."""

    @cached_property
    def callback(self) -> SubscriptionConfig | None:
        """How callbacks are sent: as a subscription named ``callback`` with the default
        timeout, retries and circuit (a circuit per destination), whose URL each delivery
        names. ``None`` without ``callback_secret``."""
        if self.callback_secret is None:
            return None
        return SubscriptionConfig.model_construct(
            name=CALLBACK, url="", secret=self.callback_secret
        )


def _public_url(value: str) -> str:
    return value.rstrip("/")


class ServerConfig(BaseModel):
    """``server``: how Herald is reached from outside, for what comes back to it (README,
    "Receipts, acknowledgements and escalation")."""

    # Validation errors never echo the input: the secret is in it.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    public_url: Annotated[HttpUrl, AfterValidator(_public_url)] | None = None
    """Herald's base URL as providers and people reach it (``https://herald.example.com``):
    status callbacks and acknowledgement links are built on it. Without it, receipts are off
    and no acknowledgement link is sent."""
    secret: SecretStr | None = None
    """Signs acknowledgement links (HMAC-SHA256); at least 32 characters. Without it, no link is
    sent (the API, Telegram's button and ``/ack`` still acknowledge)."""
    ack_link_ttl: Duration = Field(default=7 * 86400.0, gt=0)
    """How long an acknowledgement link stays valid."""
    console: bool = True
    """Serve the operator console at ``/console`` (README, "Console"); off, it answers 404."""

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("secret must be at least 32 characters (is its variable set?)")
        return value


class _FileModel(BaseModel):
    """The file's shape before each channel is validated by its own type's model."""

    model_config = ConfigDict(extra="forbid")

    auth: AuthConfig = Field(default_factory=AuthConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    events: EventsConfig = Field(default_factory=EventsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    templates: dict[str, TemplateConfig] = Field(default_factory=dict)


class HeraldConfig(BaseModel):
    """A validated ``herald.yaml``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    auth: AuthConfig = Field(default_factory=AuthConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    events: EventsConfig = Field(default_factory=EventsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    templates: dict[str, MessageTemplate] = Field(default_factory=dict)
    """Compiled ``templates``, by name."""


TOP_LEVEL = tuple(_FileModel.model_fields)
EXAMPLE_HINT = "see examples/herald.yaml"


def listing(what: str, problems: list[str]) -> str:
    """One problem on one line; several as their count, then one line each."""
    if len(problems) == 1:
        return f"{what}: {problems[0]}"
    return f"{what}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)


class ConfigError(Exception):
    """The config file is unusable; ``problems`` lists ``path: message`` lines, one per cause."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(dict.fromkeys(problems))
        super().__init__(listing(f"invalid config {source}", self.problems))


def unknown(kind: str, name: object, known: Sequence[str]) -> str:
    """``unknown section 'route'; did you mean `routes`?`` (or the known names: none is close)."""
    close = difflib.get_close_matches(str(name), known, n=1) if isinstance(name, str) else []
    if close:
        return f"unknown {kind} {name!r}; did you mean `{close[0]}`?"
    return f"unknown {kind} {name!r} (known: {', '.join(known)})"


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(path, str(k)), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, _join(path, str(i)), env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and (env[name] or default is None):
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _VAR.sub(replace, node)


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path and part else path or part


def _error_lines(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One ``path: message`` line per cause. A misspelt field is one cause: its line says
    which field was meant, and that field's own "Field required" is left out."""
    errors = exc.errors()
    lines: dict[tuple[int | str, ...], str] = {}
    meant: set[tuple[int | str, ...]] = set()
    for error in errors:
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ").splitlines()[0]
        known = _fields_at(model, loc[:-1])
        if error["type"] == "extra_forbidden" and known:
            message = unknown("field", loc[-1], known)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            meant.update((*loc[:-1], name) for name in close)
        lines[loc] = message
    return [
        f"{_join(prefix, '.'.join(map(str, loc))) or '(top level)'}: {message}"
        for loc, message in lines.items()
        if not (loc in meant and message == "Field required")
    ]


def _fields_at(model: type[BaseModel], path: Sequence[int | str]) -> list[str]:
    """The field names of the model that ``path`` leads to inside ``model`` (none: unknown)."""
    for part in path:
        if isinstance(part, int):
            continue  # an item of a list: its model is the list's
        field = model.model_fields.get(part)
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def parse_config(
    raw: object,
    registry: ChannelRegistry,
    *,
    source: str = "config",
    env: Mapping[str, str] | None = None,
    require_channels: bool = False,
) -> HeraldConfig:
    """Validate an already-loaded YAML document; raises ``ConfigError`` listing every problem.

    ``require_channels``: a config with no channel is an error (a file to serve from must
    have one; tests and embedders may build a config without).
    """
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    for section in raw:
        if section not in TOP_LEVEL:
            problems.append(f"{section}: {unknown('section', section, TOP_LEVEL)}")
    raw = {k: v for k, v in raw.items() if k in TOP_LEVEL}
    raw = _interpolate(raw, "", os.environ if env is None else env, problems)
    try:
        shape = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems + _error_lines(exc, _FileModel)) from None
    if require_channels and not shape.channels:
        problems.append(f"channels: no channels configured; define at least one ({EXAMPLE_HINT})")

    channels: dict[str, ChannelConfig] = {}
    name_re = re.compile(NAME_PATTERN)
    for name, settings in shape.channels.items():
        path = f"channels.{name}"
        if not name_re.match(name):
            problems.append(f"{path}: a channel name is letters, digits, '_', '.', '-' (≤ 64)")
            continue
        type_name = settings.get("type")
        channel_type = registry.get(type_name) if isinstance(type_name, str) else None
        if channel_type is None:
            known = registry.names()
            problems.append(
                f"{path}.type: "
                + (
                    unknown("channel type", type_name, known)
                    if type_name
                    else f"missing (known types: {', '.join(known)})"
                )
            )
            continue
        try:
            channels[name] = channel_type.config_model.model_validate(settings)
        except ValidationError as exc:
            problems.extend(_error_lines(exc, channel_type.config_model, path))

    routes: dict[str, RouteConfig] = {}
    for route_name, settings in shape.routes.items():
        path = f"routes.{route_name}"
        if not name_re.match(route_name):
            problems.append(f"{path}: a route name is letters, digits, '_', '.', '-' (≤ 64)")
        try:
            route = routes[route_name] = RouteConfig.model_validate(settings)
        except ValidationError as exc:
            problems.extend(_error_lines(exc, RouteConfig, path))
            continue
        for index, channel_name in enumerate(route.names):
            if channel_name not in shape.channels:
                problems.append(
                    f"{path}.channels.{index}: "
                    + _undefined("channel", channel_name, "channels", list(shape.channels))
                )
        problems.extend(_quiet_hop_problems(path, route, channels))
    problems.extend(_subscription_problems(shape))
    problems.extend(_ingest_problems(shape))
    problems.extend(_inbound_problems(channels))
    templates = _templates(shape, registry, problems)
    if problems:
        raise ConfigError(source, problems)
    return HeraldConfig(
        auth=shape.auth,
        network=shape.network,
        channels=channels,
        routes=routes,
        events=shape.events,
        ingest=shape.ingest,
        server=shape.server,
        retention=shape.retention,
        templates=templates,
    )


OVERRIDE_HINTS = {"sms": "twilio", "email": "smtp", "mail": "smtp"}
"""Override keys people write that are not channel types, and the type they mean."""


def _templates(
    shape: _FileModel, registry: ChannelRegistry, problems: list[str]
) -> dict[str, MessageTemplate]:
    """Every template compiled; what is wrong with one goes to ``problems``, naming the
    template, the field and, for Jinja syntax, the line."""
    compiled: dict[str, MessageTemplate] = {}
    name_re = re.compile(NAME_PATTERN)
    for name, template in shape.templates.items():
        path = f"templates.{name}"
        if not name_re.match(name):
            problems.append(f"{path}: a template name is letters, digits, '_', '.', '-' (≤ 64)")
            continue
        overrides: dict[str, Any] = {}
        for type_name, settings in template.overrides.items():
            at = f"{path}.overrides.{type_name}"
            if registry.get(type_name) is None:
                meant = OVERRIDE_HINTS.get(type_name)
                problems.append(
                    f"{at}: overrides are per channel type; {type_name!r} is not one"
                    + (f": did you mean `{meant}`?" if meant else "")
                    + f" (known: {', '.join(registry.names())})"
                )
                continue
            model = OVERRIDE_MODELS.get(type_name, TemplateFields)
            try:
                overrides[type_name] = model.model_validate(settings).model_dump(
                    exclude_defaults=True
                )
            except ValidationError as exc:
                problems.extend(_error_lines(exc, model, at))
        source = template.model_dump(exclude_none=True, exclude={"overrides"})
        if overrides:
            source["overrides"] = overrides
        try:
            compiled[name] = compile_template(name, source)
        except TemplateCompileError as exc:
            problems.append(exc.problem)
    return compiled


def _quiet_hop_problems(
    path: str, route: RouteConfig, channels: Mapping[str, ChannelConfig]
) -> list[str]:
    """A quiet-hours hop that is none of the route's channels nor their types never applies."""
    if route.quiet_hours is None:
        return []
    known = [*route.names, *(channels[n].type for n in route.names if n in channels)]
    return [
        f"{path}.quiet_hours.hops.{index}: {hop!r} is none of the route's channels or their "
        f"types ({', '.join(dict.fromkeys(known))})"
        for index, hop in enumerate(route.quiet_hours.hops)
        if hop not in known
    ]


def _subscription_problems(shape: _FileModel) -> list[str]:
    """What the subscriptions name that the rest of the file does not define."""
    problems: list[str] = []
    seen: set[str] = set()
    key_names = [key.name for key in shape.auth.api_keys]
    for index, subscription in enumerate(shape.events.subscriptions):
        path = f"events.subscriptions.{index}"
        if subscription.name in seen:
            problems.append(f"{path}.name: subscription {subscription.name!r} is defined twice")
        if subscription.name == CALLBACK:
            problems.append(
                f"{path}.name: {CALLBACK!r} is reserved for notifications' callback_url"
            )
        seen.add(subscription.name)
        for at, route in enumerate(subscription.routes):
            if route not in shape.routes:
                problems.append(
                    f"{path}.routes.{at}: "
                    + _undefined("route", route, "routes", list(shape.routes))
                )
        for at, owner in enumerate(subscription.owners):
            if owner not in key_names:
                problems.append(
                    f"{path}.owners.{at}: "
                    + _undefined("API key", owner, "auth.api_keys", key_names)
                )
    return problems


def _ingest_problems(shape: _FileModel) -> list[str]:
    """What the ingest rules and the Alertmanager receiver name that the file does not define."""
    problems: list[str] = []
    routes = list(shape.routes)
    key_names = [key.name for key in shape.auth.api_keys]
    for index, stream in enumerate(shape.ingest.streams):
        path = f"ingest.streams.{index}"
        for at, rule in enumerate(stream.rules):
            if rule.route is not None and rule.route not in shape.routes:
                problems.append(
                    f"{path}.rules.{at}.route: " + _undefined("route", rule.route, "routes", routes)
                )
        if stream.owner is not None and stream.owner not in key_names:
            problems.append(
                f"{path}.owner: " + _undefined("API key", stream.owner, "auth.api_keys", key_names)
            )
    default = shape.ingest.alertmanager.route
    if default is not None and default not in shape.routes:
        problems.append(
            "ingest.alertmanager.route: " + _undefined("route", default, "routes", routes)
        )
    return problems


def _inbound_problems(channels: Mapping[str, ChannelConfig]) -> list[str]:
    """Two channels receiving for one bot: Telegram lets one ``getUpdates`` poller per bot
    token at a time (a second is answered 409 Conflict), so only one channel may."""
    problems: list[str] = []
    receiving: dict[str, str] = {}
    for name, channel in channels.items():
        if not isinstance(channel, TelegramConfig) or channel.inbound is None:
            continue
        token = channel.token.get_secret_value()
        first = receiving.setdefault(token, name)
        if first != name:
            problems.append(
                f"channels.{name}.inbound: channel {first} already receives for this bot token; "
                "Telegram allows one receiver per bot, so give inbound to one of them"
            )
    return problems


def _undefined(kind: str, name: str, where: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"{kind} {name!r} is not defined under {where}" + (
        f"; did you mean `{close[0]}`?" if close else ""
    )


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: ``true``/``false`` only. YAML 1.1's
    ``on``/``off``/``yes``/``no`` stay strings, so ``confirm: {within: 2m, on: [failed]}`` has
    the key ``on`` as written (1.1 reads it as ``True``); boolean settings still take them
    (pydantic reads ``"yes"`` as true)."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_config(
    path: str | Path, registry: ChannelRegistry, env: Mapping[str, str] | None = None
) -> HeraldConfig:
    """Read and validate ``herald.yaml``; raises ``ConfigError``. An empty file, or one with no
    channel, is an error: nothing could be delivered."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"(file): cannot read: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}: YAML syntax error: {problem}"]) from None
    if raw is None:
        raise ConfigError(source, [f"(file): the file is empty; define channels ({EXAMPLE_HINT})"])
    return parse_config(raw, registry, source=source, env=env, require_channels=True)
