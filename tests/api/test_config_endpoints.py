"""``GET /v1/channels`` and ``GET /v1/routes``: the config as the API shows it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from app.domain import Mute
from app.store.inbound import InboundLog
from tests.support.harness import herald

WEBHOOK_SECRET = "whsec_c2VjcmV0LXdlYmhvb2sta2V5LTQyNDI="
SMTP_PASSWORD = "sm7p-Pa55w0rd-never-shown"

CONFIG: dict[str, Any] = {
    "channels": {
        "hooks": {
            "type": "webhook",
            "url": "https://hooks.example.com/herald",
            "secret": WEBHOOK_SECRET,
            "timeout": "5s",
        },
        "email": {
            "type": "smtp",
            "host": "smtp.example.com",
            "port": 587,
            "starttls": True,
            "username": "alerts",
            "password": SMTP_PASSWORD,
            "from": "Alerts <alerts@example.com>",
        },
        "console": {"type": "log", "enabled": False},
        "private-ca": {
            "type": "smtp",
            "host": "mail.internal",
            "from": "a@example.com",
            "ca_file": "/nonexistent/ca.pem",
        },
    },
    "routes": {
        "default": {"channels": ["hooks"]},
        "alerts": {
            "channels": ["hooks", "email", "console"],
            "strategy": "fallback",
            "retry": {"schedule": ["5s", "90s", "1m", "30m", "2h", "1d", "500ms"], "jitter": 0.1},
            "ttl": "24h",
            "retention": {"delivered": "7d", "failed": None},
            "quiet_hours": {
                "timezone": "Europe/Berlin",
                "from": "22:00",
                "to": "07:00",
                "hops": ["email"],
            },
        },
        "everyone": {"channels": ["email", "console"], "strategy": "all", "ttl": 5400},
    },
}


async def test_channels_with_settings_and_secrets_masked(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        response = await h.client.get("/v1/channels")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        for secret in (WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), SMTP_PASSWORD):
            assert secret not in response.text
        items = {item["name"]: item for item in response.json()["items"]}
        assert list(items) == ["hooks", "email", "console", "private-ca"]

        hooks = items["hooks"]
        assert (hooks["type"], hooks["enabled"], hooks["ready"], hooks["reason"]) == (
            "webhook",
            True,
            True,
            None,
        )
        assert hooks["settings"]["url"] == "https://hooks.example.com/herald"
        # Durations as /v1/routes and herald.yaml write them, not as numbers of seconds.
        assert hooks["settings"]["timeout"] == "5s"
        assert hooks["settings"]["circuit"] == {"failures": 5, "cooldown": "30s"}
        assert hooks["settings"]["secret"] == "**********"
        assert "type" not in hooks["settings"]
        assert "enabled" not in hooks["settings"]

        email = items["email"]
        assert (email["type"], email["enabled"], email["ready"]) == ("smtp", True, True)
        assert email["settings"]["password"] == "**********"
        assert email["settings"]["username"] == "alerts"
        assert email["settings"]["host"] == "smtp.example.com"
        assert email["settings"]["from"] == "Alerts <alerts@example.com>"
        assert email["settings"]["timeout"] == "10s"

        console = items["console"]
        assert (console["type"], console["enabled"], console["ready"]) == ("log", False, False)
        assert console["reason"] == "disabled in the config"

        private = items["private-ca"]
        assert (private["enabled"], private["ready"]) == (True, False)
        assert "/nonexistent/ca.pem" in private["reason"]
        assert private["settings"]["password"] is None


DEFAULT_RETENTION = {
    "delivered": "30d",
    "failed": "90d",
    "partial": "90d",
    "expired": "90d",
    "cancelled": "30d",
    "acknowledged": "30d",
}


async def test_routes_with_durations_strategy_ttl_and_default(db_url: str) -> None:
    async with herald(db_url, CONFIG) as h:
        until = h.clock() + timedelta(hours=1)
        async with h.runtime.sessions() as session, session.begin():
            log = InboundLog(session)
            await log.mute(Mute("alerts", "smtp", until, "ops chat -1 (@al)"), now=h.clock())
            gone = Mute("everyone", "log", h.clock() - timedelta(minutes=1), "x")
            await log.mute(gone, now=h.clock())
        response = await h.client.get("/v1/routes")
        assert response.status_code == 200
        assert response.json() == {
            "items": [
                {
                    "name": "default",
                    "channels": ["hooks"],
                    "ack_within": [None],
                    "confirm": None,
                    "strategy": "fallback",
                    "retry": {"schedule": ["5s", "1m", "5m", "30m", "2h", "6h"], "jitter": 0.2},
                    "ttl": None,
                    "dedup": None,
                    "digest": None,
                    "default": True,
                    "quiet_hours": None,
                    "retention": DEFAULT_RETENTION,
                    "mutes": [],
                },
                {
                    "name": "alerts",
                    "channels": ["hooks", "email", "console"],
                    "ack_within": [None, None, None],
                    "confirm": None,
                    "strategy": "fallback",
                    "retry": {
                        "schedule": ["5s", "90s", "1m", "30m", "2h", "1d", "500ms"],
                        "jitter": 0.1,
                    },
                    "ttl": "1d",
                    "dedup": None,
                    "digest": None,
                    "default": False,
                    "quiet_hours": {
                        "timezone": "Europe/Berlin",
                        "from": "22:00",
                        "to": "07:00",
                        "hops": ["email"],
                        "mode": "hold",
                        "bypass_severity": "critical",
                    },
                    "retention": {**DEFAULT_RETENTION, "delivered": "7d", "failed": None},
                    "mutes": [
                        {
                            "channel_type": "smtp",
                            "until": until.isoformat().replace("+00:00", "Z"),
                            "by": "ops chat -1 (@al)",
                        }
                    ],
                },
                {
                    "name": "everyone",
                    "channels": ["email", "console"],
                    "ack_within": [None, None],
                    "confirm": None,
                    "strategy": "all",
                    "retry": {"schedule": ["5s", "1m", "5m", "30m", "2h", "6h"], "jitter": 0.2},
                    "ttl": "90m",
                    "dedup": None,
                    "digest": None,
                    "default": False,
                    "quiet_hours": None,
                    "retention": DEFAULT_RETENTION,
                    "mutes": [],
                },
            ]
        }


async def test_routes_show_their_dedup_window_and_digest(db_url: str) -> None:
    config = {
        "channels": {"console": {"type": "log"}},
        "routes": {
            "noisy": {"channels": ["console"], "dedup": {"window": "10m", "mode": "collapse"}},
            "daily": {"channels": ["console"], "digest": {"window": "1d", "max_items": 20}},
        },
    }
    async with herald(db_url, config) as h:
        items = (await h.client.get("/v1/routes")).json()["items"]
        shown = {item["name"]: (item["dedup"], item["digest"]) for item in items}
        assert shown == {
            "noisy": ({"window": "10m", "mode": "collapse"}, None),
            "daily": (None, {"window": "1d", "max_items": 20}),
        }


async def test_empty_config_lists_nothing(db_url: str) -> None:
    async with herald(db_url, {}) as h:
        channels = await h.client.get("/v1/channels")
        routes = await h.client.get("/v1/routes")
        assert (channels.status_code, channels.json()) == (200, {"items": []})
        assert (routes.status_code, routes.json()) == (200, {"items": []})
