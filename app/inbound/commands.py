"""The commands a chat may send Herald's bot, and ``dispatch``, the one function that decides
what Herald does with an update and what it answers.

``dispatch`` runs inside the transaction that stores the update and moves its channel's offset
past it (app/inbound/poller.py), so what a command changes (a mute) is written exactly once
with it. The answer is sent after that transaction commits: ``sendMessage`` to the chat, or
``answerCallbackQuery`` for a button press.

Commands, from the chats in ``allowed_chats`` only (anything from another chat is stored and
counted, and gets no answer):

    /status <id>              the notification's status, where it was delivered, its hops
    /mute <route> <duration>  leave the route's telegram hops out of its chain until then
    /unmute <route>           lift that mute
    /ack <id>                 acknowledge (also the inline button whose data is ``ack:<id>``)
    /help                     the list

A command may name the bot (``/status@herald_bot …``, as Telegram clients write it in groups);
one naming another bot is not for Herald and is ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.channels.telegram import TelegramChannel, acked_by_callback
from app.channels.text import clip
from app.domain import (
    AckOutcome,
    AckResult,
    AckVia,
    HopState,
    InboundKind,
    InboundOutcome,
    Mute,
    StoredNotification,
)
from app.durations import parse_duration
from app.inbound.updates import Update
from app.runtime import Runtime
from app.service import ACK_TRIES, acknowledge_step, acknowledged, acknowledgement
from app.store.inbound import InboundLog
from app.store.repositories import NotificationRepository

MAX_MUTE = timedelta(days=7)
"""The longest ``/mute``: a forgotten mute must not silence a route for good."""
MAX_ARGS = 4
MAX_COMMAND = 32
MAX_ANSWER = 200
"""What ``answerCallbackQuery`` shows: at most 200 characters."""

HELP = "\n".join(
    (
        "Herald commands:",
        "/status <id> - a notification's status, delivery and hops",
        "/mute <route> <duration> - leave the route's telegram hops out until then "
        "(e.g. /mute alerts 1h; at most 7d)",
        "/unmute <route> - lift a mute",
        "/ack <id> - acknowledge a notification",
        "/help - this list",
    )
)
USAGE = {
    "status": "usage: /status <notification id>",
    "mute": "usage: /mute <route> <duration>, e.g. /mute alerts 30m (at most 7d)",
    "unmute": "usage: /unmute <route>",
    "ack": "usage: /ack <notification id>",
}
FAILED = "that command failed on Herald's side; it is logged, nothing was changed"


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: tuple[str, ...]


def parse_command(text: str | None, bot_username: str | None) -> Command | None:
    """The command a message's text holds (``/status@herald_bot 0192…``), or ``None``: not a
    command, or one for another bot than ``bot_username``."""
    if not text or not text.startswith("/"):
        return None
    head, *args = text.split()
    name, _, bot = head[1:].partition("@")
    if bot and bot_username is not None and bot.lower() != bot_username.lower():
        return None
    return Command(clip(name.lower(), MAX_COMMAND), tuple(args[: MAX_ARGS + 1]))


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of an update, and what Herald answers (``None``: nothing)."""

    outcome: InboundOutcome
    reply: str | None = None
    command: str | None = None


@dataclass
class CommandContext:
    """What a command's handler works with: the update and its channel, the process's
    runtime, and the session of the transaction that stores the update (a handler writes
    through it and never commits)."""

    runtime: Runtime
    session: AsyncSession
    channel: str
    update: Update
    now: datetime
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    """Run once the transaction has committed (wake a worker, drop a cache…)."""

    @property
    def sender(self) -> str:
        """Who sent it, for the records it leaves: ``ops-telegram chat -100123 (@alice)``."""
        update = self.update
        who = f" ({update.sender_name})" if update.sender_name else ""
        return clip(f"{self.channel} chat {update.chat_id}{who}", 255)


AckHandler = Callable[[CommandContext, uuid.UUID], Awaitable[str]]
"""Acknowledges a notification for ``/ack <id>`` or an ack button (``context.update.kind``
says which); the answer to show the chat."""


async def acknowledge_in_chat(context: CommandContext, notification_id: uuid.UUID) -> str:
    """``/ack <id>`` and the ack button: acknowledge in the transaction that stores the update
    (so a stored press has acknowledged, and a press not stored, fetched again, acknowledges
    then); events and waiters follow its commit. A notification a worker is sending right now
    has the acknowledgement recorded, and that worker finishes it when it saves the round."""
    ours = acknowledgement(context.sender, AckVia.TELEGRAM)
    for _ in range(ACK_TRIES):
        step = await acknowledge_step(context.runtime, context.session, notification_id, ours=ours)
        if step.recorded:  # on a row being sent: its worker finishes it
            step = replace(step, result=AckResult(AckOutcome.ACKNOWLEDGED, step.current))
        if step.result is not None:
            break
    else:
        raise RuntimeError(f"acknowledging {notification_id} kept losing races")
    answered = step

    def finish() -> None:
        acknowledged(context.runtime, answered)

    context.after_commit.append(finish)
    return ack_text(notification_id, answered.result)


def ack_text(notification_id: uuid.UUID, result: AckResult | None) -> str:
    """What the chat is told of an acknowledgement."""
    assert result is not None
    notification = result.notification
    if result.outcome is AckOutcome.ACKNOWLEDGED:
        return f"acknowledged {notification_id}"
    if result.outcome is AckOutcome.NOT_FOUND or notification is None:
        return f"no notification {notification_id}"
    if result.outcome is AckOutcome.ALREADY_ACKNOWLEDGED:
        return f"{notification_id} was already acknowledged by {notification['acknowledged_by']}"
    return f"{notification_id} is {notification['status']}: there is nothing to acknowledge"


@dataclass(frozen=True, slots=True)
class Handlers:
    """The handlers ``dispatch`` hands commands to that live outside this module."""

    ack: AckHandler = acknowledge_in_chat


async def dispatch(
    context: CommandContext,
    *,
    allowed_chats: Collection[str],
    bot_username: str | None,
    handlers: Handlers,
) -> Answer:
    """What Herald does with one update, done (in ``context.session``), and its answer."""
    update = context.update
    if update.kind is InboundKind.OTHER:
        return Answer(InboundOutcome.IGNORED)
    if update.chat_id is None or update.chat_id not in allowed_chats:
        return Answer(InboundOutcome.NOT_ALLOWED)
    if update.kind is InboundKind.CALLBACK_QUERY:
        notification_id = acked_by_callback(update.text or "")
        if notification_id is None:
            return Answer(InboundOutcome.INVALID, "this button is not one of Herald's")
        return await _ack(context, handlers, notification_id)
    command = parse_command(update.text, bot_username)
    if command is None:
        return Answer(InboundOutcome.IGNORED)
    run = _COMMANDS.get(command.name)
    if run is None:
        unknown = f"unknown command /{command.name}\n{HELP}"
        return Answer(InboundOutcome.INVALID, unknown, command.name)
    answer = await run(context, handlers, command.args)
    return Answer(answer.outcome, answer.reply, command.name)


# --- the commands ----------------------------------------------------------------------------

Run = Callable[[CommandContext, Handlers, Sequence[str]], Awaitable[Answer]]


async def _help(context: CommandContext, handlers: Handlers, args: Sequence[str]) -> Answer:
    return Answer(InboundOutcome.HANDLED, HELP)


async def _status(context: CommandContext, handlers: Handlers, args: Sequence[str]) -> Answer:
    notification_id = _uuid(args[0]) if len(args) == 1 else None
    if notification_id is None:
        return _usage("status")
    notification = await NotificationRepository(context.session).get(notification_id)
    if notification is None:
        return Answer(InboundOutcome.HANDLED, f"no notification {notification_id}")
    return Answer(InboundOutcome.HANDLED, status_text(notification))


def status_text(notification: StoredNotification) -> str:
    """``/status``'s answer: two short lines."""
    via = notification["delivered_via"]
    if isinstance(via, list):
        via = ", ".join(via)
    route = notification["route"]
    first = f"{notification['id']}: {notification['status']}"
    first += f" via {via}" if via else ""
    first += f" (route {route})" if route else " (inline chain)"
    hops = []
    for hop in notification["hops"]:
        error = hop.get("last_error") or {}
        failed = hop["state"] != HopState.DELIVERED
        code = f" ({error['code']})" if error.get("code") and failed else ""
        hops.append(f"{hop['channel']} {hop['state']}{code}")
    return f"{first}\nhops: {', '.join(hops)}"


async def _mute(context: CommandContext, handlers: Handlers, args: Sequence[str]) -> Answer:
    if len(args) != 2:
        return _usage("mute")
    route, spelt = args
    problem = _unmutable(context.runtime, route)
    if problem is not None:
        return Answer(InboundOutcome.INVALID, problem)
    try:
        seconds = parse_duration(spelt)
    except ValueError:
        return _usage("mute")
    if not 0 < seconds <= MAX_MUTE.total_seconds():
        return _usage("mute")
    # From when it was sent: a command read late (an outage) mutes until when it asked for.
    until = (context.update.sent_at or context.now) + timedelta(seconds=seconds)
    if until <= context.now:
        return Answer(InboundOutcome.HANDLED, f"that mute ended at {_time(until)} already")
    mute = Mute(route, TelegramChannel.type_name, until, context.sender)
    await InboundLog(context.session).mute(mute, now=context.now)
    context.after_commit.append(context.runtime.mutes.invalidate)
    return Answer(InboundOutcome.HANDLED, f"route {route}: telegram muted until {_time(until)}")


async def _unmute(context: CommandContext, handlers: Handlers, args: Sequence[str]) -> Answer:
    if len(args) != 1:
        return _usage("unmute")
    route = args[0]
    problem = _unmutable(context.runtime, route)
    if problem is not None:
        return Answer(InboundOutcome.INVALID, problem)
    lifted = await InboundLog(context.session).unmute(route, TelegramChannel.type_name)
    context.after_commit.append(context.runtime.mutes.invalidate)
    return Answer(
        InboundOutcome.HANDLED,
        f"route {route}: telegram unmuted" if lifted else f"route {route} was not muted",
    )


async def _ack_command(context: CommandContext, handlers: Handlers, args: Sequence[str]) -> Answer:
    notification_id = _uuid(args[0]) if len(args) == 1 else None
    if notification_id is None:
        return _usage("ack")
    return await _ack(context, handlers, notification_id)


async def _ack(context: CommandContext, handlers: Handlers, notification_id: uuid.UUID) -> Answer:
    """``/ack <id>`` and the ack button both come here."""
    reply = await handlers.ack(context, notification_id)
    return Answer(InboundOutcome.HANDLED, reply, "ack")


_COMMANDS: dict[str, Run] = {
    "help": _help,
    "start": _help,  # what a Telegram client sends when a person first opens the bot
    "status": _status,
    "mute": _mute,
    "unmute": _unmute,
    "ack": _ack_command,
}


def _unmutable(runtime: Runtime, route: str) -> str | None:
    """Why ``route`` cannot be muted for telegram, or ``None``."""
    config = runtime.config
    found = config.routes.get(route)
    if found is None:
        return f"no route {clip(route, 64)!r} (routes: {', '.join(config.routes) or 'none'})"
    if not any(config.channels[name].type == TelegramChannel.type_name for name in found.names):
        return f"route {route} has no telegram hop to mute"
    return None


def _usage(command: str) -> Answer:
    return Answer(InboundOutcome.INVALID, USAGE[command])


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
