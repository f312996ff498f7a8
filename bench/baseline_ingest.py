"""baseline_ingest: a bare FastAPI + asyncpg endpoint that stores the same row Herald stores.

``POST /v1/notifications`` parses the same body fields with a plain pydantic model, then runs
one INSERT (autocommit) of every column of Herald's ``notifications`` table with the values
Herald would give a notification on the default route (one webhook hop ``hooks``, default retry
schedule), and answers 202 with the id and a ``Location`` header. Served by uvicorn with the same
defaults Herald's ``herald serve`` gets (uvloop and httptools when installed, no access log).

    BENCH_DSN=postgresql://postgres@127.0.0.1:5432/herald_bench \\
        .venv/bin/python bench/baseline_ingest.py --port 8100
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

CHANNELS = ["hooks"]
RETRY_SCHEDULE = [5.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0]  # Herald's default schedule
RETRY_JITTER = 0.2
HOPS = json.dumps([{"channel": "hooks", "state": "pending", "attempts": 0, "last_error": None}])

INSERT = """
INSERT INTO notifications (
    id, status, route, strategy, channels, chain_key, recipient, subject, text, html,
    severity, source, metadata, retry_schedule, retry_jitter, round, round_base, trigger,
    attempt_count, delivered_via, delivered_at, next_attempt_at, last_error, hops, send_at,
    expires_at, claimed_by, lease_expires_at, owner, created_at, updated_at
) VALUES (
    $1, 'pending', 'default', 'fallback', $2::json, $3, $4::json, $5, $6, $7,
    $8, $9, $10::json, $11::json, $12, 0, 0, 'scheduled',
    0, NULL, NULL, $13, NULL, $14::json, $15,
    $16, NULL, NULL, NULL, $17, $17
)
"""


def uuid7() -> uuid.UUID:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = None
    phone: str | None = None
    telegram_chat_id: str | None = None
    webhook_url: str | None = None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    route: str | None = None
    channels: list[str] | None = None
    recipient: Recipient = Field(default_factory=Recipient)
    subject: str | None = Field(default=None, max_length=998)
    text: str | None = None
    html: str | None = None
    severity: Literal["debug", "info", "warning", "error", "critical"] = "info"
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    send_at: datetime | None = None
    expires_at: datetime | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Herald's engine: pool_size 10 plus max_overflow 10.
    app.state.pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=10, max_size=20)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/notifications", status_code=202)
async def create(body: Body, request: Request) -> JSONResponse:
    now = datetime.now(UTC)
    notification_id = uuid7()
    due = max(now, body.send_at) if body.send_at else now
    await request.app.state.pool.execute(
        INSERT,
        notification_id,
        json.dumps(CHANNELS),
        "," + ",".join(CHANNELS) + ",",
        json.dumps(body.recipient.model_dump(exclude_none=True)),
        body.subject,
        body.text,
        body.html,
        body.severity,
        body.source,
        json.dumps(body.metadata),
        json.dumps(RETRY_SCHEDULE),
        RETRY_JITTER,
        due,
        HOPS,
        body.send_at,
        body.expires_at,
        now,
    )
    return JSONResponse(
        {"id": str(notification_id), "status": "pending"},
        status_code=202,
        headers={"Location": f"/v1/notifications/{notification_id}"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
