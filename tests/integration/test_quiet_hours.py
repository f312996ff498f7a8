"""Quiet hours on SQLite and PostgreSQL with a fixed clock: a warning during the window waits
for its end (or skips the hop), a critical one goes now, and the nights of both 2026 DST
changes in Europe/Berlin end at 07:00 local time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.config import ConfigError
from app.delivery.orchestrator import utcnow
from tests.support.harness import Harness, config_from, herald
from tests.support.http_server import HttpServer, serve_http

NIGHT = {"timezone": "Europe/Berlin", "from": "22:00", "to": "07:00", "hops": ["pager"]}


def quiet_config(sink: HttpServer, **quiet: Any) -> dict[str, Any]:
    """``pager`` (a webhook to ``sink``) then ``console``; ``night`` has quiet hours on pager."""
    return {
        "channels": {
            "pager": {"type": "webhook", "url": sink.url("/page"), "timeout": "2s"},
            "console": {"type": "log"},
        },
        "routes": {
            "default": {"channels": ["pager", "console"]},
            "night": {"channels": ["pager", "console"], "quiet_hours": {**NIGHT, **quiet}},
        },
    }


async def at(h: Harness, when: str, *ids: str) -> None:
    """Set the worker's clock to ``when`` (UTC) and make ``ids`` due then."""
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    h.clock.offset = (moment - utcnow()).total_seconds()
    for notification_id in ids:
        await h.set_fields(notification_id, next_attempt_at=moment)


@pytest.mark.parametrize(
    ("evening", "morning"),
    [
        # 23:00 CET on the night clocks go forward: 07:00 CEST is 05:00 UTC
        ("2026-03-28T22:00:00", "2026-03-29T05:00:00+00:00"),
        # 23:30 CEST on the night clocks go back: 07:00 CET is 06:00 UTC
        ("2026-10-24T21:30:00", "2026-10-25T06:00:00+00:00"),
    ],
)
async def test_a_warning_waits_for_the_end_of_the_night_and_a_critical_goes_now(
    db_url: str, evening: str, morning: str
) -> None:
    async with serve_http() as sink, herald(db_url, quiet_config(sink)) as h:
        warning = (await h.send(text="disk at 91%", route="night", severity="warning"))["id"]
        critical = (await h.send(text="db down", route="night", severity="critical"))["id"]
        await at(h, evening, warning, critical)
        await h.run_worker()

        held = await h.get(warning)
        assert held["status"] == "pending"
        assert datetime.fromisoformat(held["next_attempt_at"]) == datetime.fromisoformat(morning)
        assert held["attempt_count"] == 0 and held["round"] == 0, "holding is not a round"
        assert await h.attempts(warning) == []
        now = await h.get(critical)
        assert (now["status"], now["delivered_via"]) == ("delivered", "pager")
        assert len(sink.requests_to("/page")) == 1

        h.clock.advance(
            (datetime.fromisoformat(morning) - h.clock()).total_seconds() - 60
        )  # 06:59 local: still quiet
        assert await h.run_worker() == 0, "not due before the window ends"
        h.clock.advance(61)
        await h.run_worker()
        done = await h.get(warning)
        assert (done["status"], done["delivered_via"]) == ("delivered", "pager")
        assert len(sink.requests_to("/page")) == 2


async def test_skip_mode_goes_on_to_the_next_hop(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, quiet_config(sink, mode="skip")) as h:
        created = (await h.send(text="x", route="night"))["id"]
        await at(h, "2026-03-28T22:00:00", created)
        await h.run_worker()
        done = await h.get(created)
        assert (done["status"], done["delivered_via"]) == ("delivered", "console")
        pager, console = await h.attempts(created)
        assert (pager["channel"], pager["outcome"], pager["error"]["code"]) == (
            "pager",
            "skipped",
            "quiet_hours",
        )
        assert "until 2026-03-29T05:00:00Z" in pager["error"]["message"]
        assert console["outcome"] == "delivered"
        assert sink.requests_to("/page") == []


async def test_outside_the_window_nothing_waits(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, quiet_config(sink)) as h:
        created = (await h.send(text="x", route="night"))["id"]
        await at(h, "2026-03-29T05:00:00", created)  # 07:00 CEST
        await h.run_worker()
        assert (await h.get(created))["delivered_via"] == "pager"


async def test_a_recipients_quiet_hours_replace_the_routes(db_url: str) -> None:
    async with serve_http() as sink, herald(db_url, quiet_config(sink)) as h:
        mine = {**NIGHT, "from": "20:00", "to": "08:00", "hops": ["webhook"]}
        created = await h.send(text="x", recipient={"quiet_hours": mine})
        assert created["recipient"]["quiet_hours"]["from"] == "20:00"
        await at(h, "2026-10-25T06:30:00", created["id"])  # 07:30 CET: the route's is over
        await h.run_worker()
        held = await h.get(created["id"])
        assert held["status"] == "pending"
        assert datetime.fromisoformat(held["next_attempt_at"]) == datetime(
            2026, 10, 25, 7, 0, tzinfo=UTC
        )

        bad = {**NIGHT, "timezone": "Europe/Berlim"}
        response = await h.client.post(
            "/v1/notifications", json={"text": "x", "recipient": {"quiet_hours": bad}}
        )
        assert response.status_code == 422
        assert "Europe/Berlim" in response.text


def test_an_unknown_time_zone_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from(
            {
                "channels": {"console": {"type": "log"}},
                "routes": {
                    "default": {
                        "channels": ["console"],
                        "quiet_hours": {**NIGHT, "timezone": "Mars/Olympus", "to": "7am"},
                    },
                    "other": {"channels": ["console"], "quiet_hours": {**NIGHT, "hops": ["sms"]}},
                },
            }
        )
    message = str(raised.value)
    assert "routes.default.quiet_hours.timezone: unknown time zone 'Mars/Olympus'" in message
    assert "routes.default.quiet_hours.to: expected a 24-hour time HH:MM" in message
    assert "routes.other.quiet_hours.hops.0: 'sms' is none of the route's channels" in message
