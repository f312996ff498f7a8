"""``GET /v1/inbound``: what chats sent Herald's bots (Telegram inbound), and what Herald did."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from app.api.deps import AdminScope, SessionDep
from app.api.paging import Cursor, Limit, aware, cursor_id
from app.api.problems import AUTH_ERRORS, error_responses
from app.api.schemas import Output
from app.domain import InboundKind, InboundOutcome
from app.store.inbound import InboundFilter, InboundLog

router = APIRouter(prefix="/v1/inbound", tags=["inbound"])


class InboundOut(Output):
    """One update a bot received."""

    id: uuid.UUID = Field(description="UUIDv7, in the order Herald stored them.")
    channel: str = Field(description="The telegram channel whose bot received it.")
    update_id: int = Field(description="Telegram's update_id.")
    kind: InboundKind
    chat_id: str | None
    sender_id: str | None = Field(description="The Telegram user id of the sender.")
    sender_name: str | None = Field(description="@username, else the first name.")
    text: str | None = Field(description="The message's text, or the pressed button's data.")
    command: str | None = Field(description="The command it held (status, mute, ack…).")
    outcome: InboundOutcome = Field(
        description="handled, invalid (answered with help), ignored (not a command), "
        "not_allowed (from a chat not in allowed_chats: no answer), failed (a bug: logged)."
    )
    reply: str | None = Field(description="What Herald answered; null: no answer.")
    sent_at: datetime | None = Field(description="When the chat sent it.")
    received_at: datetime


class InboundPage(Output):
    items: list[InboundOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page.")


@router.get(
    "",
    operation_id="list_inbound",
    response_model=InboundPage,
    summary="List inbound messages, newest first",
    responses=error_responses(422, 503) | AUTH_ERRORS,
)
async def list_inbound(
    principal: AdminScope,
    session: SessionDep,
    channel: Annotated[str | None, Query(max_length=64)] = None,
    outcome: InboundOutcome | None = None,
    since: Annotated[
        datetime | None, Query(description="Only messages received at or after this time.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> InboundPage:
    """Every command, button press and message the bots of telegram channels with inbound
    received, from every chat (those not allowed included), with what Herald did about it.
    Admin scope: they belong to no API key."""
    filters = InboundFilter(channel=channel, outcome=outcome, since=aware(since, "since"))
    rows = await InboundLog(session).messages(filters, limit=limit + 1, before_id=cursor_id(cursor))
    page = rows[:limit]
    return InboundPage(
        items=[InboundOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=str(page[-1].id) if len(rows) > limit else None,
    )
