"""Telegram inbound: one long-polling ``getUpdates`` loop per telegram channel with
``inbound``, in every process that delivers, of which exactly one polls each bot at a time.

Who polls. Each channel's row in ``inbound_polls`` carries a lease: a process polls only while
it holds it, and renews it on every pass (a long poll waits at most a third of the lease:
``HERALD_LEASE``). The others look again every third of a lease, so when the holder dies
another takes over once its lease has run out; a holder that stops gracefully hands the lease
back at once. On SQLite, where one process delivers, the same rows simply always name it.

A pass. ``getUpdates`` with ``offset`` = the stored next offset (which also tells Telegram
that every update before it is done with), ``timeout`` (long polling: Telegram answers as
soon as an update arrives, or with none at the end of it) and ``allowed_updates``
[``message``, ``callback_query``]. The updates it answers are stored, each with what
``dispatch`` did about it, in one transaction that first moves the offset past them (and
renews the lease) only if this process still holds the lease at the offset it polled from. So
an update is stored exactly once: a restart asks again from the stored offset (nothing
replayed), and updates fetched but not stored (a crash, a lost lease) are still unconfirmed at
Telegram and come again (nothing lost). Answers go out after the commit, at most once.

Faults. ``getUpdates`` failing (connection refused, 5xx, 409 while some other client polls the
bot, 429) is waited out with a doubling pause (from ``FIRST_BACKOFF``, at most a third of
the lease; at least Telegram's ``retry_after`` within that), logged once and then briefly, and
counted in ``herald_inbound_poll_failures_total``; the lease is kept meanwhile. A database
outage is waited out the same way. Anything else is a bug: the loop's supervisor logs it,
counts it in ``herald_task_restarts_total{task="inbound"}`` and starts the loop again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app import metrics
from app.channels.base import DeliveryResult, ErrorClass
from app.channels.telegram import BotApiError, TelegramChannel
from app.delivery.orchestrator import utcnow
from app.delivery.outage import FIRST_BACKOFF, Backoff, Outage
from app.delivery.supervise import stopped, supervised
from app.delivery.worker import default_worker_id
from app.domain import InboundOutcome
from app.ids import uuid7
from app.inbound.commands import (
    FAILED,
    MAX_ANSWER,
    Answer,
    CommandContext,
    Handlers,
    dispatch,
)
from app.inbound.updates import ALLOWED_UPDATES, Update, parse_update, update_id_of
from app.runtime import Runtime
from app.security.redaction import redact
from app.store.db import brief, unavailable_reason
from app.store.inbound import InboundLog

logger = logging.getLogger("herald.inbound")

LONGEST_POLL = 25
"""Seconds one ``getUpdates`` may wait for an update (Telegram's own examples use 25-30)."""
TASK = "inbound"
"""The supervised task's name (``herald_task_restarts_total{task}``)."""


class LeaseLost(Exception):
    """Another process holds the channel's polling now: what was fetched is not stored."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to send once the updates are stored."""

    update: Update
    text: str


class TelegramReceiver:
    """The ``getUpdates`` loop of one telegram channel with ``inbound``."""

    def __init__(
        self,
        runtime: Runtime,
        channel: TelegramChannel,
        *,
        holder: str | None = None,
        handlers: Handlers | None = None,
        clock: Callable[[], datetime] = utcnow,
        first_backoff: float = FIRST_BACKOFF,
    ) -> None:
        inbound = channel.config.inbound
        if inbound is None:
            raise ValueError(f"channel {channel.name} has no inbound settings")
        self.runtime = runtime
        self.channel = channel
        self.name = channel.name
        self.allowed_chats = frozenset(inbound.allowed_chats)
        self.holder = holder or default_worker_id()
        self.handlers = handlers or Handlers()
        self.clock = clock
        lease = runtime.settings.lease
        self.lease = timedelta(seconds=lease)
        self.pass_time = lease / 3
        """How long a long poll may wait, and a standby between its looks at the lease: the
        holder renews it about three times a lease."""
        self.poll_timeout = max(1, min(LONGEST_POLL, int(self.pass_time)))
        self.backoff = Backoff(first_backoff, max(first_backoff, self.pass_time))
        self.bot_username: str | None = None
        """The bot's ``@username`` without the ``@`` (``getMe``), to tell commands addressed
        to another bot apart."""
        self._asked_me = False
        self.holding = False
        self._cause: str | None = None

    # --- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until ``stop`` is set (restarted on a crash), then hand the lease back."""
        for outcome in InboundOutcome:  # every series exists, at 0, before the first message
            metrics.inbound_messages.labels(self.name, outcome)
        metrics.inbound_poll_failures.labels(self.name)
        try:
            await supervised(TASK, self._loop, stop)
        finally:
            await self._release()

    async def _loop(self, stop: asyncio.Event) -> None:
        database = Outage(logger, f"database (inbound {self.name})")
        while not stop.is_set():
            try:
                pause = await self._pass(stop)
                database.recovered()
            except Exception as exc:
                if unavailable_reason(exc) is None:
                    raise
                pause = min(database.failed(exc), self.pass_time)
            if pause:
                await stopped(stop, pause)

    async def _pass(self, stop: asyncio.Event) -> float:
        """Renew the lease, poll once, store and answer what came; the pause before the next
        pass (a standby's, or a failed poll's backoff)."""
        offset = await self._take_lease()
        if offset is None:
            return self.pass_time
        try:
            updates = await self._poll(offset, stop)
        except BotApiError as exc:
            return self._failed(exc)
        self._recovered()
        if not updates:  # none came, or stopped while waiting
            return 0
        try:
            replies = await self.store(offset, updates)
        except LeaseLost:
            logger.warning("inbound %s: lease lost before storing; not polling", self.name)
            self.holding = False
            return 0
        for reply in replies:
            await self._answer(reply)
        return 0

    async def _take_lease(self) -> int | None:
        """Hold or renew the lease; the offset to poll from, or ``None`` (another holds it)."""
        now = self.clock()
        async with self.runtime.sessions() as session, session.begin():
            offset = await InboundLog(session).take_lease(
                self.name, self.holder, now=now, until=now + self.lease
            )
        if (offset is not None) != self.holding:
            self.holding = offset is not None
            logger.info(
                "inbound %s: %s",
                self.name,
                f"polling Telegram (as {self.holder})" if self.holding else "another process polls",
            )
        return offset

    async def _poll(self, offset: int, stop: asyncio.Event) -> list[dict[str, Any]] | None:
        """One ``getUpdates`` from ``offset``: the updates (raw), or ``None`` if ``stop`` came
        first (the request is dropped: nothing it fetched is confirmed)."""
        if not self._asked_me:
            me = await self.channel.call("getMe", {}, timeout=self.channel.config.timeout)
            username = me.get("username") if isinstance(me, dict) else None
            self.bot_username = username if isinstance(username, str) else None
            self._asked_me = True
        payload = {
            "offset": offset,
            "timeout": self.poll_timeout,
            "allowed_updates": list(ALLOWED_UPDATES),
        }
        timeout = self.poll_timeout + self.channel.config.timeout
        call = asyncio.ensure_future(self.channel.call("getUpdates", payload, timeout=timeout))
        halt = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((call, halt), return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.cancel()
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
        if call.cancelled():
            return None
        result = call.result()
        if not isinstance(result, list):
            raise BotApiError("getUpdates", NOT_A_LIST)
        return [item for item in result if update_id_of(item) is not None]

    # --- storing a batch -----------------------------------------------------------------

    async def store(self, offset: int, raw: list[dict[str, Any]]) -> list[Reply]:
        """Store the updates from ``offset`` on, with what each made Herald do, and move the
        offset past them: one transaction. The answers to send."""
        updates = sorted(
            (parse_update(item, update_id) for item in raw if (update_id := update_id_of(item))
             is not None and update_id >= offset),
            key=lambda update: update.update_id,
        )  # fmt: skip
        if not updates:
            return []
        now = self.clock()
        after_commit: list[Callable[[], None]] = []
        replies: list[Reply] = []
        outcomes: list[InboundOutcome] = []
        async with self.runtime.sessions() as session, session.begin():
            log = InboundLog(session)
            moved = await log.advance(
                self.name,
                self.holder,
                offset=offset,
                to=updates[-1].update_id + 1,
                now=now,
                until=now + self.lease,
            )
            if not moved:
                raise LeaseLost(self.name)
            for update in updates:
                context = CommandContext(self.runtime, session, self.name, update, now)
                answer = await self._dispatch(context)
                await log.add(_row(self.name, update, answer, now))
                after_commit += context.after_commit
                outcomes.append(answer.outcome)
                if answer.reply is not None:
                    replies.append(Reply(update, answer.reply))
        for hook in after_commit:
            hook()
        for outcome in outcomes:
            metrics.inbound_messages.labels(self.name, outcome).inc()
        return replies

    async def _dispatch(self, context: CommandContext) -> Answer:
        """``dispatch`` in a savepoint: a command that breaks on a bug changes nothing and is
        stored as ``failed`` (the loop must not stall on one update); a database outage
        fails the whole batch, to be fetched again."""
        session = context.session
        try:
            async with session.begin_nested():
                return await dispatch(
                    context,
                    allowed_chats=self.allowed_chats,
                    bot_username=self.bot_username,
                    handlers=self.handlers,
                )
        except Exception as exc:
            if unavailable_reason(exc) is not None:
                raise
            logger.exception("inbound %s: update %d failed", self.name, context.update.update_id)
            context.after_commit.clear()
            return Answer(InboundOutcome.FAILED, FAILED)

    # --- answers -------------------------------------------------------------------------

    async def _answer(self, reply: Reply) -> None:
        """Send one answer: a message to the chat, or the toast of a button press."""
        update = reply.update
        if update.callback_query_id is not None:
            method = "answerCallbackQuery"
            payload: dict[str, Any] = {
                "callback_query_id": update.callback_query_id,
                "text": reply.text[:MAX_ANSWER],
            }
        else:
            method = "sendMessage"
            payload = {"chat_id": update.chat_id, "text": reply.text}
            if update.message_id is not None:
                payload["reply_parameters"] = {
                    "message_id": update.message_id,
                    "allow_sending_without_reply": True,
                }
        try:
            await self.channel.call(method, payload, timeout=self.channel.config.timeout)
        except BotApiError as exc:
            logger.warning(
                "inbound %s: answer to update %d not sent: %s", self.name, update.update_id, exc
            )

    # --- faults --------------------------------------------------------------------------

    def _failed(self, exc: BotApiError) -> float:
        """Count and log a failed poll; how long to wait before the next."""
        metrics.inbound_poll_failures.labels(self.name).inc()
        pause = self.backoff.next()
        wanted = exc.failure.retry_after
        if wanted is not None:
            pause = max(pause, min(wanted, self.pass_time))
        cause = redact(str(exc), self.channel.secrets())
        if exc.error.code == "http_409":
            cause += " (another client polls this bot, or a webhook is set for it)"
        if cause != self._cause:
            logger.warning("inbound %s: Telegram %s; retrying in %gs", self.name, cause, pause)
        else:
            logger.info("inbound %s: Telegram still failing; retrying in %gs", self.name, pause)
        self._cause = cause
        return pause

    def _recovered(self) -> None:
        if self._cause is not None:
            logger.info("inbound %s: Telegram answers again", self.name)
        self._cause = None
        self.backoff.reset()

    async def _release(self) -> None:
        if not self.holding:
            return
        try:
            async with self.runtime.sessions() as session, session.begin():
                await InboundLog(session).release(self.name, self.holder, now=self.clock())
        except Exception as exc:  # the lease then runs out by itself
            logger.warning("inbound %s: lease not handed back: %s", self.name, brief(exc))
        self.holding = False


def _row(channel: str, update: Update, answer: Answer, now: datetime) -> dict[str, Any]:
    return {
        "id": uuid7(),
        "channel": channel,
        "update_id": update.update_id,
        "kind": update.kind,
        "chat_id": update.chat_id,
        "sender_id": update.sender_id,
        "sender_name": update.sender_name,
        "text": update.text,
        "command": answer.command,
        "outcome": answer.outcome,
        "reply": answer.reply,
        "sent_at": update.sent_at,
        "received_at": now,
    }


NOT_A_LIST = DeliveryResult.failed(
    ErrorClass.CONFIG, "telegram_invalid_response", "getUpdates answered no list of updates"
)


def receivers(runtime: Runtime) -> list[TelegramReceiver]:
    """A receiver for each enabled telegram channel with ``inbound``."""
    return [
        TelegramReceiver(runtime, channel)
        for channel in runtime.channels.values()
        if isinstance(channel, TelegramChannel)
        and channel.config.inbound is not None
        and channel.config.enabled
    ]


async def receive(runtime: Runtime, stop: asyncio.Event) -> None:
    """Run every inbound loop of this process until ``stop``."""
    await asyncio.gather(*(receiver.run(stop) for receiver in receivers(runtime)))
