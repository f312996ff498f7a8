from __future__ import annotations

from pathlib import Path

import pytest

from app.channels.registry import ChannelRegistry, DuplicateChannelType, default_registry
from app.channels.webhook import WebhookChannel
from app.cli import main
from app.config import ConfigError, Settings, load_config, parse_config
from app.durations import format_duration, parse_duration
from app.store.db import normalize_database_url

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "herald.yaml"


def parse(raw: object, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(raw, default_registry(), env=env or {})


def problems(raw: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(raw, env)
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1h", 3600), ("1d", 86400), (30, 30), ("1.5s", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 weeks", "-1s", True, None, "1y"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 60, 90, 3600, 86400, 0.5, 0, 1.5, 0.0005)] == [
        "5s",
        "1m",
        "90s",
        "1h",
        "1d",
        "500ms",
        "0s",
        "1500ms",
        "0.5ms",
    ]


@pytest.mark.parametrize("seconds", [0, 0.001, 0.25, 1.5, 10, 61, 5400, 86400 * 3, 100000.5])
def test_formatted_durations_parse_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE, default_registry())
    assert set(config.channels) == {"hooks", "console"}
    assert config.routes["default"].channels == ["hooks", "console"]
    assert config.routes["default"].retry.schedule == [5.0, 60.0, 300.0]
    assert config.routes["default"].ttl == 3600.0


def test_interpolation_with_and_without_default() -> None:
    config = parse(
        {
            "channels": {
                "hooks": {"type": "webhook", "url": "${HOOK_URL}", "timeout": "${T:-3s}"},
            }
        },
        env={"HOOK_URL": "https://example.com/h"},
    )
    hooks = config.channels["hooks"]
    assert hooks.url == "https://example.com/h"  # type: ignore[attr-defined]
    assert hooks.timeout == 3.0


def test_missing_variable_names_the_field_path() -> None:
    found = problems({"channels": {"hooks": {"type": "webhook", "url": "${NOPE}"}}})
    assert "channels.hooks.url: environment variable NOPE is not set" in found


def test_bad_field_names_its_path() -> None:
    found = problems(
        {"channels": {"email": {"type": "smtp", "host": "h", "port": "abc", "from": "a@b.c"}}}
    )
    assert any(p.startswith("channels.email.port: ") for p in found), found


def test_unknown_type_and_missing_type() -> None:
    found = problems({"channels": {"x": {"type": "pigeon"}, "y": {}}})
    assert any(p.startswith("channels.x.type: unknown channel type 'pigeon'") for p in found)
    assert any(p.startswith("channels.y.type: missing") for p in found)


def test_route_naming_undefined_channel_is_an_error() -> None:
    found = problems(
        {"channels": {"c": {"type": "log"}}, "routes": {"r": {"channels": ["c", "ghost"]}}}
    )
    assert found == ["routes.r.channels.1: channel 'ghost' is not defined under channels"]


def test_route_errors() -> None:
    found = problems(
        {
            "channels": {"c": {"type": "log"}},
            "routes": {
                "a": {"channels": []},
                "b": {"channels": ["c", "c"]},
                "d": {"channels": ["c"], "strategy": "random"},
                "e": {"channels": ["c"], "retry": {"jitter": 2}},
            },
        }
    )
    joined = "\n".join(found)
    for path in (
        "routes.a.channels",
        "routes.b.channels",
        "routes.d.strategy",
        "routes.e.retry.jitter",
    ):
        assert path in joined


def test_unknown_section_and_unknown_channel_field() -> None:
    found = problems({"sever": {}, "channels": {"c": {"type": "log", "colour": "red"}}})
    assert any(p.startswith("sever:") for p in found)


def test_unknown_channel_field() -> None:
    found = problems({"channels": {"c": {"type": "log", "colour": "red"}}})
    assert any(p.startswith("channels.c.colour:") for p in found)


def test_defaults_for_routes() -> None:
    config = parse({"channels": {"c": {"type": "log"}}, "routes": {"r": {"channels": ["c"]}}})
    route = config.routes["r"]
    assert route.strategy == "fallback"
    assert route.retry.schedule == [5, 60, 300, 1800, 7200, 21600]
    assert route.retry.jitter == 0.2
    assert route.ttl is None


def test_channel_common_settings() -> None:
    config = parse({"channels": {"c": {"type": "log", "timeout": "2s", "rate_limit": "30/s"}}})
    assert config.channels["c"].timeout == 2.0
    assert config.channels["c"].rate == (30, 1.0)
    found = problems({"channels": {"c": {"type": "log", "rate_limit": "lots"}}})
    assert any(p.startswith("channels.c.rate_limit:") for p in found)


@pytest.mark.parametrize("rate", ["lots", "0/s", "1/d", ""])
def test_keys_and_channels_refuse_a_rate_limit_alike(rate: str) -> None:
    key = {"auth": {"api_keys": [{"name": "a", "key": "k", "rate_limit": rate}]}}
    channel = {"channels": {"c": {"type": "log", "rate_limit": rate}}}
    refusal = "rate_limit must look like 30/s, 100/m or 1000/h"
    assert problems(key) == [f"auth.api_keys.0.rate_limit: {refusal}"]
    assert problems(channel) == [f"channels.c.rate_limit: {refusal}"]


def test_auth_and_network_sections_parse() -> None:
    config = parse(
        {
            "auth": {"api_keys": [{"name": "backend", "key": "k1", "scopes": ["send", "read"]}]},
            "network": {"allow_private_addresses": True, "allowed_networks": ["10.0.0.0/8"]},
        }
    )
    assert config.auth.api_keys[0].name == "backend"
    assert str(config.network.allowed_networks[0]) == "10.0.0.0/8"
    found = problems({"auth": {"api_keys": [{"name": "x", "scopes": ["send"]}]}})
    assert any("exactly one of key and key_sha256" in p for p in found)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("channels:\n  c: {type: log\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, default_registry())
    assert caught.value.problems[0].startswith("line ")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "ok (2 channels, 4 routes" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels:\n  email: {type: smtp, host: h, port: nope, from: a@b.c}\n")
    assert main(["check-config", str(bad)]) == 1
    assert "channels.email.port:" in capsys.readouterr().err


def test_registry_refuses_duplicate_type_names() -> None:
    registry = ChannelRegistry()
    registry.register(WebhookChannel)
    registry.register(WebhookChannel)  # the same class again is harmless

    class Impostor(WebhookChannel):
        type_name = "webhook"

    with pytest.raises(DuplicateChannelType, match="already registered"):
        registry.register(Impostor)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_DATABASE_URL", "postgresql+asyncpg://x/y")
    monkeypatch.setenv("HERALD_PORT", "9000")
    monkeypatch.setenv("HERALD_POLL_INTERVAL", "250ms")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://x/y"
    assert settings.port == 9000
    assert settings.poll_interval == 0.25


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p%40ss@db:5432/herald", "postgresql+asyncpg://u:p%40ss@db:5432/herald"),
        ("postgres://u@db/herald?ssl=require", "postgresql+asyncpg://u@db/herald?ssl=require"),
        ("postgresql+asyncpg://u@db/herald", "postgresql+asyncpg://u@db/herald"),
        ("sqlite:///./herald.db", "sqlite+aiosqlite:///./herald.db"),
        ("sqlite+aiosqlite:////var/lib/herald.db", "sqlite+aiosqlite:////var/lib/herald.db"),
    ],
)
def test_database_urls_get_herald_s_drivers(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    # Issue 13: postgresql:// failed with "No module named 'psycopg'".
    monkeypatch.setenv("HERALD_DATABASE_URL", given)
    assert Settings().database_url == expected
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("mysql://u:s3cret@db/herald", "unsupported database 'mysql'"),
        ("postgresql+psycopg2://u:s3cret@db/herald", "driver 'psycopg2' is not supported"),
        ("sqlite+pysqlite:///herald.db", "driver 'pysqlite' is not supported"),
        ("herald.db", "not a database URL"),
    ],
)
def test_other_database_urls_are_refused_saying_what_to_write(given: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_database_url(given)
    message = str(caught.value)
    assert says in message
    assert "write postgresql://" in message and "sqlite:///" in message
    assert "s3cret" not in message and "\n" not in message


def test_an_empty_metrics_key_is_refused_like_an_empty_api_key() -> None:
    # Issue 13: ${HERALD_METRICS_KEY} set but empty left /metrics open without a word.
    raw = {"auth": {"metrics_key": "${HERALD_METRICS_KEY}"}, "channels": {"c": {"type": "log"}}}
    assert problems(raw, env={"HERALD_METRICS_KEY": ""}) == [
        "auth.metrics_key: metrics_key is empty (is its environment variable set?)"
    ]
    assert parse(raw, env={"HERALD_METRICS_KEY": "m"}).auth.metrics_key is not None
    assert parse({"channels": {"c": {"type": "log"}}}).auth.metrics_key is None


@pytest.mark.parametrize(
    "text", ["", "# nothing yet\n", "routes: {}\n", "auth: {api_keys: []}\nchannels: {}\n"]
)
def test_a_file_without_channels_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "herald.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, default_registry())
    [problem] = caught.value.problems
    assert problem.startswith(("(file): the file is empty", "channels: no channels configured"))


def test_misspelt_names_get_a_suggestion() -> None:
    found = problems(
        {
            "route": {"r": {"channels": ["console"]}},
            "channels": {"console": {"type": "log", "timout": "5s"}, "x": {"type": "webhok"}},
            "routes": {"r": {"channels": ["console"], "stratgy": "all"}},
        }
    )
    assert found == [
        "route: unknown section 'route'; did you mean `routes`?",
        "channels.console.timout: unknown field 'timout'; did you mean `timeout`?",
        "channels.x.type: unknown channel type 'webhok'; did you mean `webhook`?",
        "routes.r.stratgy: unknown field 'stratgy'; did you mean `strategy`?",
    ]
    # One cause, one line: not also "auth.api_keys.0.name: Field required".
    assert problems({"auth": {"api_keys": [{"nmae": "backend", "key": "k"}]}}) == [
        "auth.api_keys.0.nmae: unknown field 'nmae'; did you mean `name`?"
    ]
    assert problems({"zzz": 1})[0].startswith(
        "zzz: unknown section 'zzz' "
        "(known: auth, network, channels, routes, events, ingest, server, retention, templates)"
    )
    route = problems(
        {"channels": {"console": {"type": "log"}}, "routes": {"r": {"channels": ["consle"]}}}
    )
    assert route == [
        "routes.r.channels.0: channel 'consle' is not defined under channels; "
        "did you mean `console`?"
    ]


def test_one_problem_is_one_line_and_several_are_counted() -> None:
    one = ConfigError("herald.yaml", ["channels.c.port: bad"])
    assert str(one) == "invalid config herald.yaml: channels.c.port: bad"
    several = ConfigError("herald.yaml", ["a: x", "b: y", "a: x"])
    assert str(several).splitlines() == [
        "invalid config herald.yaml: 2 problems:",
        "  a: x",
        "  b: y",
    ]


def test_check_config_reads_herald_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERALD_CONFIG", str(EXAMPLE))
    assert main(["check-config"]) == 0
    assert f"{EXAMPLE}: ok (2 channels" in capsys.readouterr().out
    empty = tmp_path / "empty.yaml"
    empty.touch()
    monkeypatch.setenv("HERALD_CONFIG", str(empty))
    assert main(["check-config"]) == 1
    assert capsys.readouterr().err.startswith(f"herald: invalid config {empty}: (file): the file")
    monkeypatch.delenv("HERALD_CONFIG")
    assert main(["check-config"]) == 1
    assert "set HERALD_CONFIG" in capsys.readouterr().err


TELEGRAM = {"type": "telegram", "token": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"}


def test_telegram_inbound_parses() -> None:
    inbound = {"allowed_chats": [-1001234567890, "42"], "mode": "poll"}
    config = parse({"channels": {"tg": {**TELEGRAM, "inbound": inbound}}})
    assert config.channels["tg"].inbound.allowed_chats == ["-1001234567890", "42"]
    assert parse({"channels": {"tg": TELEGRAM}}).channels["tg"].inbound is None


@pytest.mark.parametrize(
    ("inbound", "problem"),
    [
        ({"allowed_chats": []}, "inbound.allowed_chats: List should have at least 1 item"),
        ({}, "inbound.allowed_chats: Field required"),
        (
            {"allowed_chats": [1, "@ops"]},
            "inbound.allowed_chats.1: a chat id is the chat's number, such as -1001234567890",
        ),
        ({"allowed_chats": [1, "1"]}, "inbound.allowed_chats: chat listed more than once: 1"),
        ({"allowed_chats": [1], "mode": "webhook"}, "inbound.mode: Input should be 'poll'"),
        ({"allowed_chats": [1], "mod": "poll"}, "inbound.mod: unknown field 'mod'; did you mean"),
    ],
)
def test_telegram_inbound_errors_name_the_field(inbound: object, problem: str) -> None:
    (found,) = problems({"channels": {"tg": {**TELEGRAM, "inbound": inbound}}})
    assert found.startswith(f"channels.tg.{problem}"), found


def test_one_channel_per_bot_token_receives() -> None:
    inbound = {"allowed_chats": [1]}
    raw = {
        "channels": {
            "tg": {**TELEGRAM, "inbound": inbound},
            "tg-too": {**TELEGRAM, "inbound": inbound},
            "tg-send-only": TELEGRAM,
        }
    }
    assert problems(raw) == [
        "channels.tg-too.inbound: channel tg already receives for this bot token; Telegram "
        "allows one receiver per bot, so give inbound to one of them"
    ]


def test_yaml_reads_on_and_no_as_written_and_booleans_as_booleans(tmp_path: Path) -> None:
    """YAML 1.2 booleans: ``confirm``'s ``on`` key (the README's spelling) is the key ``on``,
    not ``True``; a channel's ``enabled: no`` still turns it off."""
    path = tmp_path / "herald.yaml"
    path.write_text(
        "channels:\n"
        f"  sms: {{type: twilio, account_sid: AC{'0' * 32}, auth_token: t,"
        " from_number: '+15550001'}\n"
        "  off: {type: log, enabled: no}\n"
        "  on: {type: log, enabled: true}\n"
        "routes:\n"
        "  alerts:\n"
        "    channels: [sms, on, off]\n"
        "    confirm: {within: 2m, on: [undelivered, failed]}\n"
    )
    config = load_config(path, default_registry())
    confirm = config.routes["alerts"].confirm
    assert confirm is not None and set(confirm.on) == {"undelivered", "failed"}
    assert (config.channels["off"].enabled, config.channels["on"].enabled) == (False, True)
