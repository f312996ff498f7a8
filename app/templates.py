"""Named message templates (``templates:`` in herald.yaml): compiled when the config is read,
rendered in Jinja2's sandbox when a notification is submitted.

A template has a ``subject``, ``text`` and ``html`` and, per channel type, ``overrides`` that
replace them for that type (``telegram`` HTML, a short ``twilio`` text, Slack ``mrkdwn`` and
``blocks``, a WhatsApp approved template's ``name``, ``language`` and ``parameters``). Fields an
override leaves out come from the template.

Escaping follows the output: ``html`` fields autoescape what they insert (a ``data`` value cannot
add markup; ``|safe`` opts out), Slack's ``text`` and ``blocks`` escape ``&``, ``<`` and ``>`` as
Slack's formatting rules ask (a value cannot ping ``<!channel>``), the rest is plain text.

Rendering is bounded, because ``data`` comes from whoever may send: an undefined variable is an
error (``StrictUndefined``), not an empty string; attribute access the sandbox forbids is an
error; all loops of one render together run at most ``ITERATION_LIMIT`` times, one render takes
at most ``TIME_LIMIT`` seconds (checked at each loop step and each call), each field's output is
at most ``OUTPUT_LIMIT`` bytes (a subject ``SUBJECT_LIMIT`` characters), and repetition (``*``,
``**``, padding filters and methods) is refused before it builds something larger than that.
Every such failure is a ``RenderError`` naming the field, which the API answers with a 422.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.channels.slack import escape as slack_escape

OUTPUT_LIMIT = 64 * 1024
"""Bytes of UTF-8 one rendered field may hold: a request's own ``text``/``html`` limit."""
SUBJECT_LIMIT = 998
"""Characters of a rendered subject: a request's own ``subject`` limit."""
ITERATION_LIMIT = 100_000
"""Loop steps of one render, every ``{% for %}`` of every field together."""
TIME_LIMIT = 0.25
"""Seconds one render (every field of a template) may take."""
POWER_LIMIT = 4096
"""Bits an ``a ** b`` result may have."""
COUNTED = "herald_counted"
"""The filter every ``{% for %}``'s iterable is passed through (``_Sandbox._parse``)."""


class TemplateFields(BaseModel):
    """What a template, or one of its overrides, says: each a Jinja template."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = None
    text: str | None = None
    html: str | None = None
    """Autoescaped: what it inserts cannot add markup (``|safe`` opts out)."""


class SlackOverride(TemplateFields):
    """``overrides.slack``: ``text`` is Slack ``mrkdwn`` as written (what it inserts is
    escaped), sent as it is rather than built from the subject and text."""

    blocks: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=50)
    """Block Kit blocks; every string in them is a template (escaped as ``text`` is)."""


class WhatsAppOverride(TemplateFields):
    """``overrides.whatsapp``: an approved template message, which WhatsApp delivers outside
    the 24-hour customer-service window, where free-form text is refused."""

    name: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,512}$")
    """The approved template's name (WhatsApp Manager)."""
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")
    """Its language code: ``en``, ``en_US``, ``pt_BR``."""
    parameters: list[str] = Field(default_factory=list, max_length=100)
    """The body's ``{{1}}``, ``{{2}}``, … in order, each a Jinja template (plain text)."""

    @model_validator(mode="after")
    def _together(self) -> WhatsAppOverride:
        if (self.name is None) != (self.language is None):
            raise ValueError("name and language go together (the approved template's)")
        if self.parameters and self.name is None:
            raise ValueError("parameters need the approved template's name and language")
        return self


OVERRIDE_MODELS: dict[str, type[TemplateFields]] = {
    "slack": SlackOverride,
    "whatsapp": WhatsAppOverride,
}
"""The override model of a channel type that takes more than subject, text and html."""


class TemplateConfig(TemplateFields):
    """``templates.NAME``: a subject, text and html, and overrides per channel type."""

    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per channel type (``telegram``, ``twilio``, ``smtp``, ``slack``, ``whatsapp``, …): the
    fields that replace the template's for that type; fields left out come from the template."""

    @model_validator(mode="after")
    def _has_a_body(self) -> TemplateConfig:
        if self.text is None and self.html is None:
            raise ValueError("give at least one of text and html")
        return self


class Escaping(StrEnum):
    """How a field's output escapes what its expressions insert."""

    PLAIN = "plain"
    HTML = "html"
    MRKDWN = "mrkdwn"


class RenderError(Exception):
    """A template could not be rendered with the given data; ``field`` is the dotted field
    (``text``, ``overrides.telegram.html``) and the message says why."""

    def __init__(self, template: str, field: str, reason: str) -> None:
        self.template = template
        self.field = field
        self.reason = reason
        super().__init__(f"template {template!r}, field {field}: {reason}")


class TemplateCompileError(Exception):
    """A template's field is not valid Jinja; ``problem`` is a ``path: message`` config line."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class _LimitExceeded(Exception):
    """A render went past one of its limits."""


@dataclass(slots=True)
class _Budget:
    deadline: float
    steps: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > ITERATION_LIMIT:
            raise _LimitExceeded(f"loops ran more than {ITERATION_LIMIT} steps")
        self.check_time()

    def check_time(self) -> None:
        if time.perf_counter() > self.deadline:
            raise _LimitExceeded(f"rendering took longer than {TIME_LIMIT:g}s")


_budget: ContextVar[_Budget | None] = ContextVar("herald_template_budget", default=None)


def _charge() -> _Budget | None:
    budget = _budget.get()
    if budget is not None:
        budget.check_time()
    return budget


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget.tick()
        yield item


def _refuse_large(values: Iterable[Any]) -> None:
    """Refuse an integer argument larger than anything a field could hold (a width, a count)."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > OUTPUT_LIMIT:
            raise _LimitExceeded(f"argument {value} is larger than {OUTPUT_LIMIT}")


def _bounded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    """A builtin filter that refuses huge numeric arguments (``center(10**9)``) before it runs.
    ``functools.wraps`` keeps Jinja's ``pass_context``-style marker."""
    skip = 2 if hasattr(function, "jinja_pass_arg") else 1

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _charge()
        _refuse_large(args[skip:])
        _refuse_large(kwargs.values())
        return function(*args, **kwargs)

    return bounded


def _size(value: object) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with loops counted and repetition bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, escaping: Escaping) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=escaping is Escaping.HTML,
            finalize=_mrkdwn if escaping is Escaping.MRKDWN else None,
            keep_trailing_newline=True,
        )
        self.filters = {name: _bounded_filter(f) for name, f in self.filters.items()}
        self.filters[COUNTED] = _counted

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, COUNTED, [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                length = _size(sequence)
                if length is not None and isinstance(times, int) and length * times > OUTPUT_LIMIT:
                    raise _LimitExceeded(f"repetition would build more than {OUTPUT_LIMIT} items")
        elif (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left).bit_length() * right > POWER_LIMIT
        ):
            raise _LimitExceeded(f"{left} ** {right} has more than {POWER_LIMIT} bits")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _charge()
        if isinstance(getattr(__obj, "__self__", None), str | list | tuple):
            _refuse_large(args)  # "x".ljust(10**9), "x".zfill(…), "x".center(…)
            _refuse_large(kwargs.values())
        return super().call(__context, __obj, *args, **kwargs)


def _mrkdwn(value: Any) -> Any:
    return slack_escape(str(value))


_ENVIRONMENTS = {escaping: _Sandbox(escaping) for escaping in Escaping}


@dataclass(frozen=True, slots=True)
class _Field:
    path: str
    """Where it is in the template: ``text``, ``overrides.slack.blocks.0.text.text``."""
    template: Template
    limit: int
    """How long its output may be: in bytes of UTF-8, or characters (a subject's)."""
    in_bytes: bool


@dataclass(frozen=True, slots=True)
class Rendered:
    """A template rendered with one request's data: what the notification stores and sends."""

    template: str
    subject: str | None
    text: str | None
    html: str | None
    overrides: dict[str, dict[str, Any]]
    """Per channel type, the rendered fields that replace the template's for that type."""


OVERRIDE_FIELDS = ("subject", "text", "html")


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """A compiled ``templates.NAME`` entry."""

    name: str
    fields: tuple[str, ...]
    """The template's own fields that are set (``subject``, ``text``, ``html``)."""
    override_types: tuple[str, ...]
    variables: tuple[str, ...]
    """The top-level ``data`` names its fields use, sorted."""
    _compiled: tuple[_Field, ...] = field(repr=False)
    _shape: dict[str, Any] = field(repr=False)
    """The template's fields as configured (the YAML's shape: lists and mappings of strings),
    each string replaced by the index of its ``_Field`` in ``_compiled``."""

    def render(self, data: Mapping[str, Any]) -> Rendered:
        """Render every field with ``data``; ``RenderError`` names the first that fails."""
        budget = _Budget(deadline=time.perf_counter() + TIME_LIMIT)
        token = _budget.set(budget)
        try:
            outputs = [self._render_field(compiled, data) for compiled in self._compiled]
        finally:
            _budget.reset(token)
        filled = _fill(self._shape, outputs)
        return Rendered(
            template=self.name,
            subject=filled.get("subject"),
            text=filled.get("text"),
            html=filled.get("html"),
            overrides=filled.get("overrides", {}),
        )

    def _render_field(self, compiled: _Field, data: Mapping[str, Any]) -> str:
        try:
            return _collect(compiled.template.generate(data), compiled.limit, compiled.in_bytes)
        except _LimitExceeded as exc:
            reason = f"render limit: {exc}"
        except RecursionError:
            reason = "render limit: recursion too deep"
        except MemoryError:
            reason = "render limit: out of memory"
        except Exception as exc:  # the data's fault or the template's, never the server's
            reason = _reason(exc)
        raise RenderError(self.name, compiled.path, reason)


def _collect(chunks: Iterator[str], limit: int, in_bytes: bool) -> str:
    """The chunks a render yields, joined; ``_LimitExceeded`` as soon as they pass ``limit``
    characters, or at the end when they pass ``limit`` bytes of UTF-8 (``in_bytes``: a
    character is at least one byte, so the characters are counted as they come)."""
    parts: list[str] = []
    length = 0
    for chunk in chunks:
        length += len(chunk)
        if length > limit:
            raise _LimitExceeded(f"output is longer than {limit} characters")
        parts.append(chunk)
    out = "".join(parts)
    if in_bytes and len(out.encode()) > limit:
        raise _LimitExceeded(f"output is longer than {limit} bytes of UTF-8")
    return out


def _reason(exc: Exception) -> str:
    if isinstance(exc, UndefinedError):
        return f"missing variable: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"not allowed in the sandbox: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _fill(shape: Any, outputs: list[str]) -> Any:
    if isinstance(shape, int) and not isinstance(shape, bool):
        return outputs[shape]
    if isinstance(shape, dict):
        return {key: _fill(value, outputs) for key, value in shape.items()}
    if isinstance(shape, list):
        return [_fill(value, outputs) for value in shape]
    return shape


def escaping_of(path: tuple[str, ...]) -> Escaping:
    """How the field at ``path`` (``("html",)``, ``("overrides", "slack", "text")``) escapes."""
    if path[-1] == "html" and len(path) in (1, 3):
        return Escaping.HTML
    if path[:2] == ("overrides", "slack") and path[2] in ("text", "blocks"):
        return Escaping.MRKDWN
    return Escaping.PLAIN


def compile_template(name: str, source: Mapping[str, Any]) -> MessageTemplate:
    """Compile a validated template (its fields as a mapping: ``subject``, ``text``, ``html``,
    ``overrides``, no ``None`` in it): every string in it is a template. ``TemplateCompileError``
    for the first field that is not valid Jinja, naming its line (Jinja gives no column)."""
    compiled: list[_Field] = []
    variables: set[str] = set()

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, str(i))) for i, v in enumerate(node)]
        if not isinstance(node, str):
            return node
        environment = _ENVIRONMENTS[escaping_of(path)]
        dotted = ".".join(path)
        try:
            tree = environment.parse(node)
            # The compiler finds what the parser does not: an unknown filter or test.
            variables.update(meta.find_undeclared_variables(tree))
            template = environment.from_string(tree)
        except TemplateSyntaxError as exc:
            raise TemplateCompileError(
                f"templates.{name}.{dotted}: template syntax error at line {exc.lineno}: "
                f"{exc.message}"
            ) from None
        if path[-1] == "subject" and len(path) in (1, 3):
            compiled.append(_Field(dotted, template, SUBJECT_LIMIT, in_bytes=False))
        else:
            compiled.append(_Field(dotted, template, OUTPUT_LIMIT, in_bytes=True))
        return len(compiled) - 1

    shape = walk(dict(source), ())
    overrides = source.get("overrides") or {}
    return MessageTemplate(
        name=name,
        fields=tuple(f for f in OVERRIDE_FIELDS if source.get(f) is not None),
        override_types=tuple(overrides),
        variables=tuple(sorted(variables)),
        _compiled=tuple(compiled),
        _shape=shape,
    )
