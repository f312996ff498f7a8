"""Settings from ``HERALD_*`` environment variables, and the ``herald.yaml`` models.

``load_config`` reads the file, fills ``${VAR}`` / ``${VAR:-default}`` from the environment,
validates every section and every channel against its type's model, and raises one
``ConfigError`` listing each bad field by its path (``channels.email.port: …``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.channels.base import ChannelConfig
from app.channels.registry import ChannelRegistry
from app.durations import Duration
from app.ratelimit import parse_rate

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


class RouteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: list[str] = Field(min_length=1)
    strategy: Literal["fallback", "all"] = "fallback"
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    ttl: Duration | None = None
    """Default lifetime: a notification not delivered by then ends ``expired``."""

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"channel listed more than once: {', '.join(repeated)}")
        return value


Scope = Literal["send", "read", "admin"]


class ApiKeyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    key: SecretStr | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["send", "read"]))
    rate_limit: str | None = None
    """Requests this key may make per process: ``100/s``, ``600/m``, ``10000/h``."""

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, value: str | None) -> str | None:
        parse_rate(value)
        return value

    @property
    def rate(self) -> tuple[int, float] | None:
        """``(requests, per_seconds)`` parsed from ``rate_limit``, as channels parse theirs."""
        return parse_rate(self.rate_limit)

    @model_validator(mode="after")
    def _one_key(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("set exactly one of key and key_sha256")
        if self.key is not None and not self.key.get_secret_value():
            raise ValueError("key is empty (is its environment variable set?)")
        return self


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    metrics_key: SecretStr | None = None


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_private_addresses: bool = False
    allowed_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)


class _FileModel(BaseModel):
    """The file's shape before each channel is validated by its own type's model."""

    model_config = ConfigDict(extra="forbid")

    auth: AuthConfig = Field(default_factory=AuthConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = Field(default_factory=dict)


class HeraldConfig(BaseModel):
    """A validated ``herald.yaml``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    auth: AuthConfig = Field(default_factory=AuthConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)


class ConfigError(Exception):
    """The config file is unusable; ``problems`` lists ``path: message`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid config {source}:\n" + "\n".join(f"  {p}" for p in problems))


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
    return f"{path}.{part}" if path else part


def _error_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_join(prefix, loc) or '(top level)'}: {message}")
    return lines


def parse_config(
    raw: object,
    registry: ChannelRegistry,
    *,
    source: str = "config",
    env: Mapping[str, str] | None = None,
) -> HeraldConfig:
    """Validate an already-loaded YAML document; raises ``ConfigError`` listing every problem."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    raw = _interpolate(raw, "", os.environ if env is None else env, problems)
    try:
        shape = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems + _error_lines(exc)) from None

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
            known = ", ".join(registry.names())
            problems.append(
                f"{path}.type: "
                + (f"unknown channel type {type_name!r}" if type_name else "missing")
                + f" (known types: {known})"
            )
            continue
        try:
            channels[name] = channel_type.config_model.model_validate(settings)
        except ValidationError as exc:
            problems.extend(_error_lines(exc, path))

    routes: dict[str, RouteConfig] = {}
    for route_name, settings in shape.routes.items():
        path = f"routes.{route_name}"
        if not name_re.match(route_name):
            problems.append(f"{path}: a route name is letters, digits, '_', '.', '-' (≤ 64)")
        try:
            route = routes[route_name] = RouteConfig.model_validate(settings)
        except ValidationError as exc:
            problems.extend(_error_lines(exc, path))
            continue
        for index, channel_name in enumerate(route.channels):
            if channel_name not in shape.channels:
                problems.append(
                    f"{path}.channels.{index}: "
                    f"channel {channel_name!r} is not defined under channels"
                )
    if problems:
        raise ConfigError(source, problems)
    return HeraldConfig(auth=shape.auth, network=shape.network, channels=channels, routes=routes)


def load_config(
    path: str | Path, registry: ChannelRegistry, env: Mapping[str, str] | None = None
) -> HeraldConfig:
    """Read and validate ``herald.yaml``; raises ``ConfigError``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"(file): cannot read: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}: YAML syntax error: {problem}"]) from None
    return parse_config(raw, registry, source=source, env=env)
