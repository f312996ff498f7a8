from __future__ import annotations

from tests.support.harness import herald
from tests.support.http_server import serve_http


async def test_fallback_webhook_then_log(db_url: str) -> None:
    async with serve_http() as sink:
        sink.script("/hook", (500, {}, "down"))
        config = {
            "channels": {
                "hooks": {"type": "webhook", "url": sink.url("/hook")},
                "console": {"type": "log"},
            },
            "routes": {"default": {"channels": ["hooks", "console"]}},
        }
        async with herald(db_url, config) as h:
            created = await h.send(text="hello")
            assert await h.run_worker() == 1
            body = await h.get(created["id"])
            assert body["status"] == "delivered", body
            assert body["delivered_via"] == "console"
            attempts = await h.attempts(created["id"])
            assert [a["outcome"] for a in attempts] == ["failed", "delivered"]
