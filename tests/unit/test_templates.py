"""``app.templates``: what a template renders, what its sandbox refuses, the limits of one
render, and how the config reports a template it cannot compile."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app import templates
from app.channels.base import Message, Recipient
from app.channels.registry import default_registry
from app.config import ConfigError, parse_config
from app.ids import uuid7
from app.templates import (
    ITERATION_LIMIT,
    OUTPUT_LIMIT,
    TIME_LIMIT,
    RenderError,
    compile_template,
)


def render(source: dict[str, Any], data: dict[str, Any] | None = None) -> Any:
    return compile_template("t", source).render(data or {})


def refusal(text: str, data: dict[str, Any] | None = None) -> str:
    with pytest.raises(RenderError) as caught:
        render({"text": text}, data)
    assert caught.value.field == "text"
    return caught.value.reason


def test_each_field_escapes_for_its_output() -> None:
    data = {"v": "<b>&</b>"}
    rendered = render(
        {
            "subject": "{{ v }}",
            "text": "{{ v }}",
            "html": "<p>{{ v }}</p>{{ '<i>kept</i>'|safe }}",
            "overrides": {
                "telegram": {"html": "<b>{{ v }}</b>", "text": "{{ v }}"},
                "slack": {"text": "*{{ v }}*", "blocks": [{"type": "section", "text": "{{ v }}"}]},
                "whatsapp": {"name": "n", "language": "en", "parameters": ["{{ v }}"]},
            },
        },
        data,
    )
    assert rendered.subject == rendered.text == "<b>&</b>"
    assert rendered.html == "<p>&lt;b&gt;&amp;&lt;/b&gt;</p><i>kept</i>"
    assert rendered.overrides["telegram"] == {
        "html": "<b>&lt;b&gt;&amp;&lt;/b&gt;</b>",
        "text": "<b>&</b>",
    }
    assert rendered.overrides["slack"] == {
        "text": "*&lt;b&gt;&amp;&lt;/b&gt;*",
        "blocks": [{"type": "section", "text": "&lt;b&gt;&amp;&lt;/b&gt;"}],
    }
    assert rendered.overrides["whatsapp"]["parameters"] == ["<b>&</b>"]


def test_variables_fields_and_override_types_are_listed() -> None:
    template = compile_template(
        "t",
        {
            "subject": "{{ a }}",
            "text": "{% for x in items %}{{ x }}{{ b.c }}{% endfor %}",
            "overrides": {"twilio": {"text": "{{ z }}"}},
        },
    )
    assert template.variables == ("a", "b", "items", "z")
    assert template.fields == ("subject", "text")
    assert template.override_types == ("twilio",)


@pytest.mark.parametrize(
    ("text", "data", "says"),
    [
        ("{{ host }}", {}, "missing variable: 'host' is undefined"),
        ("{{ d.gone }}", {"d": {}}, "missing variable: 'dict object' has no attribute 'gone'"),
        ("{{ x or host }}", {"x": ""}, "missing variable: 'host' is undefined"),
        ("{{ ''.__class__ }}", {}, "not allowed in the sandbox: access to attribute '__class__'"),
        ("{{ d.__class__.__mro__ }}", {"d": {}}, "not allowed in the sandbox"),
        ("{{ 1 / 0 }}", {}, "ZeroDivisionError: division by zero"),
        (
            "{% for a in range(n) %}{% for b in range(n) %}{% endfor %}{% endfor %}",
            {"n": 100_000},
            f"render limit: loops ran more than {ITERATION_LIMIT} steps",
        ),
        (
            "{% for a in items %}{% endfor %}",
            {"items": list(range(ITERATION_LIMIT + 1))},
            "render limit: loops ran more than",
        ),
        ("{{ 'x' * n }}", {"n": 10**9}, "render limit: repetition"),
        ("{{ [1] * n }}", {"n": 10**6}, "render limit: repetition"),
        ("{{ 'x'|center(n) }}", {"n": 10**9}, "render limit: argument 1000000000"),
        ("{{ 'x'|indent(n) }}", {"n": 10**9}, "render limit: argument"),
        ("{{ 'x'.ljust(n) }}", {"n": 10**9}, "render limit: argument"),
        ("{{ 10 ** n }}", {"n": 10**8}, "render limit: 10 ** 100000000 has more than"),
        ("{% for i in range(70000) %}{{ i }}{% endfor %}", {}, "render limit: output is longer"),
        ("{{ v }}", {"v": "é" * (OUTPUT_LIMIT // 2 + 1)}, "bytes of UTF-8"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}, "recursion too deep"),
    ],
)
def test_a_render_the_data_breaks_is_a_render_error(
    text: str, data: dict[str, Any], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the limit each case names: on a loaded machine the step limit's loops took longer
    # than the time limit (test_a_render_is_limited_in_time has that one).
    monkeypatch.setattr(templates, "TIME_LIMIT", 60.0)
    assert says in refusal(text, data)


def test_a_render_is_limited_in_time() -> None:
    """Each step is cheap enough for the step limit, but together they take seconds."""
    items = list(range(5000, 0, -1))
    text = "{% for i in range(50000) %}{{ items|sort|length }}{% endfor %}"
    with pytest.raises(RenderError) as caught:
        compile_template("t", {"text": text}).render({"items": items})
    assert caught.value.reason == f"render limit: rendering took longer than {TIME_LIMIT:g}s"


def test_a_subject_is_limited_in_characters() -> None:
    with pytest.raises(RenderError) as caught:
        render({"subject": "{{ v }}", "text": "x"}, {"v": "s" * 999})
    assert caught.value.field == "subject"
    assert render({"subject": "{{ v }}", "text": "x"}, {"v": "s" * 998}).subject == "s" * 998


def test_the_limits_count_per_render_not_per_process() -> None:
    template = compile_template("t", {"text": "{% for i in range(n) %}{% endfor %}ok"})
    for _ in range(3):
        assert template.render({"n": ITERATION_LIMIT}).text == "ok"


def test_an_override_replaces_only_the_fields_it_gives() -> None:
    message = Message(
        id=uuid7(),
        route=None,
        recipient=Recipient(),
        subject="s",
        text="t",
        html="<p>h</p>",
        severity="info",
        source=None,
        metadata={},
        created_at=datetime(2026, 12, 4, tzinfo=UTC),
        overrides={"twilio": {"subject": "", "text": "short"}, "telegram": {"html": "<b>x</b>"}},
    )
    assert message.for_type("smtp") is message
    sms = message.for_type("twilio")
    assert (sms.subject, sms.text, sms.html) == ("", "short", "<p>h</p>")
    telegram = message.for_type("telegram")
    assert (telegram.subject, telegram.text, telegram.html) == ("s", "t", "<b>x</b>")


def problems(templates: dict[str, Any]) -> list[str]:
    raw = {
        "channels": {"console": {"type": "log"}},
        "routes": {"default": {"channels": ["console"]}},
        "templates": templates,
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, default_registry())
    return caught.value.problems


def test_the_config_compiles_every_template_and_names_what_is_wrong() -> None:
    assert problems(
        {
            "syntax": {"text": "ok\n{% if x %}\n{{ x }"},
            "filter": {"text": "x", "html": "<p>\n{{ x|nosuch }}</p>"},
            "bad name!": {"text": "x"},
            "types": {
                "text": "x",
                "overrides": {
                    "sms": {"text": "x"},
                    "whatsapp": {"name": "disk_alert"},
                    "telegram": {"html": "x", "blocks": []},
                },
            },
        }
    ) == [
        "templates.syntax.text: template syntax error at line 3: unexpected '}'",
        "templates.filter.html: template syntax error at line 2: No filter named 'nosuch'.",
        "templates.bad name!: a template name is letters, digits, '_', '.', '-' (≤ 64)",
        "templates.types.overrides.sms: overrides are per channel type; 'sms' is not one: did "
        "you mean `twilio`? (known: apprise, discord, log, ntfy, slack, smtp, telegram, twilio, "
        "webhook, whatsapp)",
        "templates.types.overrides.whatsapp: name and language go together (the approved "
        "template's)",
        "templates.types.overrides.telegram.blocks: unknown field 'blocks' (known: subject, "
        "text, html)",
    ]


def test_a_template_needs_a_body() -> None:
    assert problems({"nobody": {"subject": "only a subject"}}) == [
        "templates.nobody: give at least one of text and html"
    ]


def test_a_valid_template_section_is_compiled() -> None:
    config = parse_config(
        {
            "channels": {"console": {"type": "log"}},
            "templates": {"hello": {"text": "Hi {{ name }}", "overrides": {"log": {"text": "x"}}}},
        },
        default_registry(),
    )
    assert config.templates["hello"].render({"name": "Ada"}).text == "Hi Ada"


def test_the_example_config_has_a_template_that_renders_for_each_override() -> None:
    import yaml

    from tests.ops.support import ROOT

    raw = yaml.safe_load((ROOT / "examples/herald.yaml").read_text())
    config = parse_config(raw, default_registry(), env={})
    rendered = config.templates["disk-alert"].render({"host": "db-1", "percent": 93})
    assert rendered.text == "db-1: / at 93%"
    assert rendered.overrides["twilio"] == {"subject": "", "text": "DISK db-1 93%"}
    assert rendered.overrides["whatsapp"]["parameters"] == ["db-1", "93"]
    assert set(rendered.overrides) == {"telegram", "twilio", "slack", "whatsapp"}
