"""Delivery metrics carry the right values (measured as deltas: the registry is process-wide)."""

from __future__ import annotations

from typing import Any

from app.metrics import REGISTRY
from tests.support.harness import herald
from tests.support.http_server import serve_http


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def attempt_labels(channel: str, outcome: str, error_class: str) -> dict[str, str]:
    return {"channel": channel, "outcome": outcome, "error_class": error_class}


class Delta:
    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.series = series
        self.before = [sample(name, **labels) for name, labels in series]

    def __call__(self) -> list[float]:
        return [
            sample(name, **labels) - before
            for (name, labels), before in zip(self.series, self.before, strict=True)
        ]


async def test_metrics_follow_a_fallback_delivery(db_url: str) -> None:
    async with serve_http() as sink:
        sink.script("/down", (503, {}, "busy"))
        config: dict[str, Any] = {
            "channels": {
                "m-down": {"type": "webhook", "url": sink.url("/down")},
                "m-up": {"type": "webhook", "url": sink.url("/up")},
            },
            "routes": {"m-route": {"channels": ["m-down", "m-up"]}},
        }
        delta = Delta(
            ("herald_notifications_received_total", {"route": "m-route"}),
            ("herald_attempts_total", attempt_labels("m-down", "failed", "transient")),
            ("herald_attempts_total", attempt_labels("m-up", "delivered", "none")),
            ("herald_delivered_hop_total", {"route": "m-route", "channel": "m-up", "hop": "1"}),
            ("herald_notifications_finished_total", {"route": "m-route", "status": "delivered"}),
            ("herald_delivery_latency_seconds_count", {"route": "m-route"}),
            ("herald_attempt_duration_seconds_count", {"channel": "m-up"}),
        )
        async with herald(db_url, config) as h:
            await h.send(route="m-route", text="x")
            await h.run_worker()
            assert delta() == [1, 1, 1, 1, 1, 1, 1]
            text = (await h.client.get("/metrics")).text
            assert 'herald_queue_depth{status="delivered"} 1.0' in text
            assert "herald_queue_oldest_due_age_seconds 0.0" in text


async def test_queue_oldest_due_age_reports_waiting_work(db_url: str) -> None:
    config = {"channels": {"c": {"type": "log"}}, "routes": {"default": {"channels": ["c"]}}}
    async with herald(db_url, config) as h:
        created = await h.send(text="x")
        await h.set_fields(created["id"], next_attempt_at=h.clock().replace(year=2020))
        text = (await h.client.get("/metrics")).text
        line = next(
            x for x in text.splitlines() if x.startswith("herald_queue_oldest_due_age_seconds ")
        )
        assert float(line.split()[1]) > 86400 * 365
        assert 'herald_queue_depth{status="pending"} 1.0' in text


async def test_api_metrics_have_process_series_and_no_created_series(db_url: str) -> None:
    config = {"channels": {"c": {"type": "log"}}, "routes": {"default": {"channels": ["c"]}}}
    async with herald(db_url, config) as h:
        await h.send(text="x")
        await h.run_worker()
        text = (await h.client.get("/metrics")).text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert {"herald_queue_depth", "herald_queue_oldest_due_age_seconds"} <= names
    assert "herald_attempts_total" in names
    assert not [name for name in names if name.endswith("_created")]
