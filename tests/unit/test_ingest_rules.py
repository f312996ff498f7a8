"""Ingest rules without Redis: placeholders, conditions, the first matching rule, and config
errors that name the field."""

from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatchcase
from typing import Any

import pytest

from app.api.body import parse_json, parse_json_text
from app.api.schemas import NotificationCreate
from app.channels.registry import default_registry
from app.config import ConfigError, parse_config
from app.errors import Unprocessable
from app.ingest.mapping import Entry, Refused, StreamRules, fingerprint, idempotency_key
from app.ingest.rules import (
    MISSING,
    Condition,
    MissingField,
    NotificationTemplate,
    StreamConfig,
    compile_template,
    filler,
    lookup,
    render,
)

CONTEXT: dict[str, Any] = {
    "type": "order.failed",
    "payload": {"id": "A-1", "amount": 1500, "items": [{"sku": "x"}], "ok": True},
    "$id": "1-0",
}


def test_the_template_fields_are_the_request_fields_but_route() -> None:
    """…and but ``dedup_key``: a repeat is decided one request at a time, which a stream's
    batch is not (a POST's only)."""
    assert set(NotificationTemplate.model_fields) == set(NotificationCreate.model_fields) - {
        "route",
        "dedup_key",
    }


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Order {payload.id}", "Order A-1"),
        ("{payload.amount}", 1500),  # alone: the value as it is
        ("{payload.amount} EUR", "1500 EUR"),
        ("{payload.items.0.sku}", "x"),
        ("{payload.items}", [{"sku": "x"}]),
        ("x{payload.items}", 'x[{"sku":"x"}]'),
        ("{payload.ok}!", "true!"),
        ("{payload.missing:-none} {$id}", "none 1-0"),
        ("{{literal}} {type}", "{literal} order.failed"),
        ("no placeholder", "no placeholder"),
    ],
)
def test_placeholders(template: str, expected: Any) -> None:
    assert render(compile_template(template), CONTEXT) == expected


def test_a_missing_field_without_default_is_named() -> None:
    with pytest.raises(MissingField, match=r"no field payload\.nope"):
        render(compile_template({"a": ["{payload.nope}"]}), CONTEXT)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{payload.id", "unmatched '{'"),
        ("a } b", "unmatched '}'"),
        ("{payload..id}", "is not a field path"),
        ("{}", "is not a field path"),
        ("{payload.__class__()}", "is not a field path"),
    ],
)
def test_bad_placeholders_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_template({"subject": template})


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [
        ({"gt": 1000}, 1500, True),
        ({"gt": 1000}, "1500", True),
        ({"gt": 1000}, 1000, False),
        ({"gte": 1000, "lt": 2000}, 1000, True),
        ({"lte": 5}, "five", False),
        ({"eq": 3}, 3.0, True),
        ({"eq": "a"}, "a", True),
        ({"ne": "a"}, "b", True),
        ({"in": ["a", 2]}, 2, True),
        ({"glob": "order.*"}, "order.failed", True),
        ({"glob": "order.*"}, "user.created", False),
        ({"exists": True}, MISSING, False),
        ({"exists": False}, MISSING, True),
        ({"gt": 1}, MISSING, False),
        ({"eq": True}, 1, False),
    ],
)
def test_conditions(condition: dict[str, Any], value: Any, holds: bool) -> None:
    assert Condition.model_validate(condition).check().holds(value) is holds


def test_lookup_goes_into_objects_and_arrays_only() -> None:
    assert lookup(CONTEXT, ("payload", "items", "0", "sku")) == "x"
    assert lookup(CONTEXT, ("payload", "items", "5")) is MISSING
    assert lookup(CONTEXT, ("type", "upper")) is MISSING


def rules(*rules: dict[str, Any], **options: Any) -> StreamRules:
    return StreamRules(StreamConfig.model_validate({"stream": "s", "rules": rules, **options}))


def test_the_first_matching_rule_wins() -> None:
    stream = rules(
        {"match": {"type": "order.failed", "payload.amount": {"gt": 1000}}, "route": "oncall"},
        {"match": {"type": "order.*"}, "notification": {"text": "{payload.id}"}},
    )
    big = Entry("s", "1-0", {"type": "order.failed", "payload": '{"id": "A", "amount": 5000}'})
    small = Entry("s", "2-0", {"type": "order.failed", "payload": '{"id": "B", "amount": 5}'})
    other = Entry("s", "3-0", {"type": "user.created"})
    first, second = stream.plan(big), stream.plan(small)
    assert first is not None and second is not None
    assert first.request.route == "oncall" and first.request.subject == "order.failed"
    assert first.key == idempotency_key("s", "1-0") == "stream:s/1-0"
    assert second.request.route is None and second.request.text == "B"
    assert second.request.source == "s"
    assert stream.plan(other) is None


def test_a_rule_may_name_a_template_and_its_data() -> None:
    stream = rules(
        {
            "match": {"type": "disk.*"},
            "notification": {"template": "disk", "data": {"host": "{payload.host}", "n": 1}},
        }
    )
    entry = Entry("s", "1-0", {"type": "disk.full", "payload": '{"host": "db-1"}'})
    planned = stream.plan(entry)
    assert planned is not None
    assert (planned.request.template, planned.request.data) == ("disk", {"host": "db-1", "n": 1})
    assert planned.request.text is None  # the template makes it, when the entry is accepted


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "t", "payload": "[1]"}, "payload must be a JSON object, not list"),
        ({"type": "t", "payload": "{"}, "payload is not valid JSON"),
        ({"type": "t", "payload": '{"n": NaN}'}, "payload is not valid JSON"),
        ({"type": "t", "payload": '{"sev": "loud"}'}, "notification.severity"),
    ],
)
def test_entries_that_cannot_be_notifications_are_refused_with_the_reason(
    fields: dict[str, str], reason: str
) -> None:
    stream = rules({"notification": {"text": "x", "severity": "{payload.sev:-info}"}})
    with pytest.raises(Refused, match=reason):
        stream.plan(Entry("s", "1-0", fields))


def config_problems(ingest: dict[str, Any]) -> list[str]:
    raw = {
        "channels": {"console": {"type": "log"}},
        "routes": {"default": {"channels": ["console"]}},
        "ingest": ingest,
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, default_registry())
    return caught.value.problems


def test_config_errors_name_the_field() -> None:
    stream = {
        "stream": "s",
        "rules": [
            {"match": {"payload.amount": {"gtt": 1}}},
            {"notification": {"subjct": "x", "text": "{payload.id"}},
            {"match": {"bad path!": "x"}},
        ],
        "dead_letter": {"after": 0},
    }
    problems = config_problems({"redis": {"url": "http://x"}, "streams": [stream]})
    text = "\n".join(problems)
    assert "ingest.redis.url: Value error, must start with redis://" not in text
    assert "ingest.redis.url: must start with redis://, rediss:// or unix://" in text
    assert "ingest.streams.0.rules.0.match.payload.amount" in text
    assert "ingest.streams.0.rules.1.notification.subjct: unknown field 'subjct'" in text
    assert "ingest.streams.0.rules.1.notification.text: unmatched '{'" in text
    assert "ingest.streams.0.rules.2.match: 'bad path!' is not a field path" in text
    assert "ingest.streams.0.dead_letter.after: Input should be greater than or equal to 1" in text


def test_streams_need_redis_and_distinct_names() -> None:
    stream = {"stream": "s", "rules": [{}]}
    assert config_problems({"streams": [stream]}) == [
        "ingest: streams need redis: {url: redis://…}"
    ]
    problems = config_problems({"redis": {"url": "redis://h"}, "streams": [stream, stream]})
    assert problems == ["ingest.streams: stream and group configured more than once: s/herald"]
    dead = {**stream, "dead_letter": {"stream": "s"}}
    assert config_problems({"redis": {"url": "redis://h"}, "streams": [dead]}) == [
        "ingest.streams.0: dead_letter.stream must differ from stream"
    ]


def test_the_redis_url_is_never_echoed() -> None:
    problems = config_problems({"redis": {"url": "ftp://user:secret@h"}})
    assert not any("secret" in problem for problem in problems), problems


def test_the_commented_ingest_example_is_a_valid_config() -> None:
    """examples/herald.yaml's ``ingest`` section, uncommented, validates against the rest."""
    import yaml

    from tests.ops.support import ROOT

    text = (ROOT / "examples/herald.yaml").read_text()
    block = text[text.index("# ingest:") :].splitlines()
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in block)
    raw = yaml.safe_load(text)
    raw["ingest"] = yaml.safe_load(uncommented)["ingest"]
    config = parse_config(raw, default_registry(), env={})
    assert [s.stream for s in config.ingest.streams] == ["events:orders"]
    assert config.ingest.streams[0].dead_letter_stream == "events:orders:dead"


def test_the_fingerprint_is_the_framed_fields_digest() -> None:
    """What a stream entry's key row has always stored: SHA-256 of its fields sorted by name,
    each framed as ``len(name):name len(value):value`` (however it is computed; a key stored
    before must read the same)."""
    fields = {"type": "order.failed", "payload": '{"id": "é-1"}', "a": ""}
    reference = hashlib.sha256()
    for name, value in sorted(fields.items()):
        reference.update(f"{len(name)}:{name}{len(value)}:".encode())
        reference.update(value.encode("utf-8", "surrogatepass"))
    assert fingerprint(Entry("s", "1-0", fields)) == reference.hexdigest()
    framed = fingerprint(Entry("s", "1-0", {"ab": "c"}))
    assert framed != fingerprint(Entry("s", "1-0", {"a": "bc"}))


@pytest.mark.parametrize("value", ["bench.disk", "12", 12, MISSING, None, [1], {"a": 1}])
def test_a_condition_without_bounds_does_not_read_a_number(value: Any) -> None:
    """Bounds are tested only when given; the other operators answer as with them."""
    glob = Condition.model_validate({"glob": "bench.*"}).check()
    equal = Condition.model_validate({"eq": 12}).check()
    bounded = Condition.model_validate({"gte": 12, "lte": 12}).check()
    assert glob.holds(value) is (value == "bench.disk")
    assert equal.holds(value) is bounded.holds(value) is (value in ("12", 12))


@pytest.mark.parametrize("glob", ["order.*", "order.[fa]*", "a?c", "[!x]*", "*.failed", "x.y"])
@pytest.mark.parametrize("value", ["order.failed", "order.created", "abc", "x.y", "xyz", "", 12])
def test_a_compiled_glob_answers_as_fnmatchcase(glob: str, value: Any) -> None:
    text = value if isinstance(value, str) else str(value)
    assert Condition(glob=glob).check().holds(value) is fnmatchcase(text, glob)


@pytest.mark.parametrize(
    "template",
    [
        "Order {payload.id}",
        "{payload.amount}",
        "{payload.items}",
        "{payload.missing:-none}",
        "{payload.nope}",
        "plain",
        {"a": ["{payload.id}", "{payload.nope:-x}", 3]},
        ["{type}", None],
        None,
        12,
    ],
)
def test_a_filler_answers_as_render(template: Any) -> None:
    """A rule's fields are filled by ``filler``s made once; they answer as ``render`` does,
    a missing field included."""
    compiled = compile_template(template)
    try:
        expected: Any = render(compiled, CONTEXT)
    except MissingField as exc:
        with pytest.raises(MissingField, match=re.escape(exc.path)):
            filler(compiled)(CONTEXT)
    else:
        assert filler(compiled)(CONTEXT) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '\ufeff{"a": [1.5, "é"]}',
        '\ufeff\ufeff{"a": 1}',
        "{",
        "NaN",
        "1e999",
        '{"n": 18446744073709551615}',
    ],
)
def test_a_decoded_payload_parses_as_its_utf8_would(text: str) -> None:
    """``parse_json_text`` (a stream entry's field, decoded already) answers, or refuses with
    the same reason, as ``parse_json`` does for the field's UTF-8."""
    try:
        expected: Any = parse_json(text.encode())
    except Unprocessable as exc:
        with pytest.raises(Unprocessable) as refused:
            parse_json_text(text)
        assert refused.value.errors == exc.errors
    else:
        assert parse_json_text(text) == expected
