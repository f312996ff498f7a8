"""The event dispatcher: a loop of its own that sends the outbox's events to subscriptions.

It never touches the notifications' claim or save, and the delivery loop never waits for it:
a subscriber that is down, slow or refusing costs this loop's slots and tables only. It runs
beside the delivery loop (``herald serve``, ``herald worker``) or in a process of its own
(``herald events``, as many as wanted on PostgreSQL: their claims skip each other's rows), where
it does not share the delivery loop's CPU.

Each pass: take back deliveries whose dispatcher died (every ``SWEEP_EVERY``), and claim as many
due deliveries as there are free slots, under a lease (``DispatchStore.claim``: one
notification's events in order). Each is POSTed by a task of its own, signed by the Standard
Webhooks scheme (``webhook-id`` is the event id on every try), through Herald's guarded outbound
client. Its slot frees up as soon as the POST is over; its try (the delivery's new state and its
attempt row) is then saved with the others that finished meanwhile, in one transaction (group
commit, as the worker saves its rounds: app/delivery/saves.py). A pass runs again when slots
free up after a claim that filled them (once half are free, or ``GATHER`` after the first: a
claim per batch, not per try), when new events are written (in this process, or in any process
on PostgreSQL: ``NOTIFY herald_events``) or a save settled deliveries (the next event of their
notifications may be due), or after the poll interval.

A failure is classified as a channel's is (``http_errors``): ``transient`` and ``rate_limited``
(no sooner than Retry-After) and ``config`` are retried on the subscription's schedule with
jitter, ``permanent`` (4xx, a redirect, a blocked address) ends the delivery ``failed``, as
does the end of the schedule. Each subscription has a circuit breaker: while it is open its
deliveries stay queued, untried.

Callbacks (a notification's ``callback_url``) are sent as the subscription named ``callback``
is (``EventsConfig.callback``), to the URL stored on each delivery, with a circuit per
destination: one caller's failing endpoint must not hold back the others' callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from app import metrics
from app.channels.base import DeliveryResult, ErrorClass, Message, origin, redact_result
from app.channels.http_errors import post_bytes_and_classify
from app.channels.http_pool import wire_url
from app.channels.webhook import json_body, secret_key, signed_headers
from app.config import SubscriptionConfig
from app.delivery.circuit import CircuitBreaker, DestinationCircuits, observe
from app.delivery.listener import listen
from app.delivery.orchestrator import TIMEOUT_GRACE, utcnow
from app.delivery.outage import MAX_BACKOFF, Outage
from app.delivery.retry import next_round_at
from app.delivery.saves import GroupSaver
from app.delivery.supervise import supervised
from app.domain import CALLBACK, AttemptOutcome, CircuitState, EventDeliveryStatus
from app.events.store import (
    ClaimedDelivery,
    DispatchStore,
    FinishedDelivery,
    ReleasedDelivery,
    Settled,
)
from app.ids import uuid7
from app.runtime import Runtime
from app.store.db import is_sqlite, unavailable_reason
from app.store.sql import EVENTS_CHANNEL

logger = logging.getLogger("herald.events")

CONCURRENCY = 16
"""Events being sent at once by a dispatcher beside the delivery loop, in its process."""
OWN_PROCESS_CONCURRENCY = 64
"""Events being sent at once by ``herald events``, a process of its own: its claims and saves
take up to half as many deliveries each, fewer statements per event (bench/results/levers.md,
"slots of herald events")."""
SWEEP_EVERY = 5.0
GATHER = 0.01
"""While busy, how long the loop lets freed slots add up before it claims again, unless half
of them free up sooner (bench/results/levers.md, "Event dispatcher")."""
LEASE_MARGIN = 5.0
"""A claim outlasts the longest subscription timeout by this much, so no send outlives it."""
SAVE_GRACE = 5.0
"""At shutdown, how long tries that finished but are not yet written may take to be saved."""


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        *,
        dispatcher_id: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.runtime = runtime
        self.dispatcher_id = dispatcher_id or f"events-{uuid7().hex[-12:]}"
        self.clock = clock
        self.rng = rng or random.Random()
        self.concurrency = concurrency
        self.store = DispatchStore(runtime.engine, runtime.sessions)
        events = runtime.config.events
        subscriptions = list(events.subscriptions)
        self.subscriptions = {s.name: s for s in subscriptions}
        self.circuits = {
            s.name: CircuitBreaker(f"subscription {s.name}", s.circuit, clock=monotonic)
            for s in subscriptions
        }
        self.destinations: DestinationCircuits | None = None
        """The callbacks' circuits, one per destination (``None``: no callbacks are sent)."""
        if events.callback is not None:
            subscriptions.append(events.callback)
            self.subscriptions[CALLBACK] = events.callback
            self.destinations = DestinationCircuits(
                CALLBACK, events.callback.circuit, _no_message, clock=monotonic
            )
        self._keys = {s.name: secret_key(s.secret.get_secret_value()) for s in subscriptions}
        self._urls = {s.name: wire_url(s.url) for s in subscriptions}
        """Each subscription's URL, parsed once."""
        self._with_content = {s.name for s in subscriptions if s.include_content}
        longest = max((s.timeout for s in subscriptions), default=0.0)
        self._lease = max(runtime.settings.lease, longest + TIMEOUT_GRACE + LEASE_MARGIN)
        self._saves: GroupSaver[Settled] = GroupSaver(self._write, _seq, what="event tries")
        self._tasks: set[asyncio.Task[None]] = set()
        """A task per claimed delivery: sending it, then waiting for its save."""
        self._sending: set[asyncio.Task[None]] = set()
        """The tasks whose POST is not over: each holds one of ``concurrency`` slots."""
        self._slot_free = asyncio.Event()
        self._settled = asyncio.Event()
        """Set when a save settled deliveries: the next event of their notifications may be
        due."""
        self._unsaved: list[Settled] = []
        """What could not be saved while the database was unreachable (and deliveries whose
        send was cut short at shutdown): written by the next pass."""
        self._last_sweep = -math.inf

    # --- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set (restarted on a crash: supervise.py), then let the
        sends in flight finish within the shutdown timeout and hand the rest back.

        On PostgreSQL a side task listens on ``herald_events`` (supervised too), so events
        written by any process (an API's accept, a worker's round, a cancel) wake this loop at
        once; on SQLite the process that writes them wakes it in memory."""
        if not self.subscriptions:
            return
        logger.info("event dispatcher %s started", self.dispatcher_id)
        side_stop = asyncio.Event()
        side = []
        url = self.runtime.settings.database_url
        if not is_sqlite(url):
            wakeup = self.runtime.events_wakeup

            def listener(stop: asyncio.Event) -> Awaitable[None]:
                return listen(url, EVENTS_CHANNEL, wakeup, stop)

            side.append(
                asyncio.create_task(
                    supervised("events_listener", listener, side_stop, cap=MAX_BACKOFF),
                    name="herald-events-listener",
                )
            )
        try:
            await supervised("events", self._loop, stop, first=1.0)
        finally:
            try:
                await self._shutdown()
            finally:
                side_stop.set()
                for task in side:
                    task.cancel()  # one stuck on an unreachable database must not hold us
                if side:
                    await asyncio.wait(side)

    async def _loop(self, stop: asyncio.Event) -> None:
        outage = Outage(logger, step_level=logging.DEBUG)
        wakeup = self.runtime.events_wakeup
        while not stop.is_set():
            try:
                for event in (wakeup, self._slot_free, self._settled):
                    event.clear()
                await self._save_unsaved()
                if asyncio.get_running_loop().time() - self._last_sweep >= SWEEP_EVERY:
                    await self.sweep()
                room = self.concurrency - len(self._sending)
                claimed = await self.claim(room) if room > 0 else []
                outage.recovered()
            except Exception as exc:
                if unavailable_reason(exc) is None:
                    raise
                await _pause(stop, (), outage.failed(exc))
                continue
            for delivery in claimed:
                task = asyncio.create_task(self._dispatch(delivery))
                self._tasks.add(task)
                self._sending.add(task)
                task.add_done_callback(self._done)
            if room <= 0 or len(claimed) == room:
                # Every slot is busy, or was just filled: more may be due. Claim again once
                # half the slots are free, or GATHER after the first one freed up: a claim a
                # batch, not one per try, and no slot idle for long.
                await self._gather_room(stop)
            else:
                # Nothing more is due: sleep until something may be.
                await _pause(stop, (wakeup, self._settled), self.runtime.settings.poll_interval)

    async def _gather_room(self, stop: asyncio.Event) -> None:
        """Until half the slots are free, or ``GATHER`` seconds after one freed up."""
        half = max(1, self.concurrency // 2)
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while not stop.is_set() and self.concurrency - len(self._sending) < half:
            if deadline is None and len(self._sending) < self.concurrency:
                deadline = loop.time() + GATHER
            wait = None if deadline is None else deadline - loop.time()
            if wait is not None and wait <= 0:
                return
            self._slot_free.clear()
            await _pause(stop, (self._slot_free,), wait)

    async def _dispatch(self, delivery: ClaimedDelivery) -> None:
        """Send one claimed delivery, free its slot, then save the try with the next batch."""
        task = asyncio.current_task()
        try:
            settled = await self.send(delivery)
        except asyncio.CancelledError:  # shutdown: handed back untried
            self._unsaved.append(ReleasedDelivery(delivery.seq, self.clock()))
            raise
        finally:
            self._sending.discard(task)
            self._slot_free.set()
        try:
            saved = await self._saves.save(settled)
        except Exception as exc:
            if unavailable_reason(exc) is None:
                raise
            self._unsaved.append(settled)
            return
        self._observe(settled, saved)
        if saved:
            self._settled.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sending.discard(task)
        self._slot_free.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug of ours: the lease runs out and the sweep hands the delivery back.
            logger.error("an event delivery failed before its try was saved", exc_info=exc)

    async def _write(self, batch: Sequence[Settled]) -> set[int]:
        return await self.store.save(batch, worker_id=self.dispatcher_id, now=self.clock())

    async def _save_unsaved(self) -> None:
        unsaved, self._unsaved = self._unsaved, []
        try:
            await self.save(unsaved)
        except Exception:
            self._unsaved = unsaved + self._unsaved  # tried again next pass (or left to leases)
            raise

    async def _shutdown(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(
                list(self._tasks), timeout=self.runtime.settings.shutdown_timeout
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not await self._saves.drain(SAVE_GRACE):
            logger.warning("gave up on saving event tries still queued after %.0fs", SAVE_GRACE)
        if self._unsaved:
            try:
                await self._save_unsaved()
            except Exception as exc:  # the leases run out and another dispatcher sends them
                logger.warning("event deliveries left to their leases: %s", exc)
        logger.info("event dispatcher %s stopped", self.dispatcher_id)

    # --- steps ---------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim one batch, send it and save it; how many were claimed. For tests and tools."""
        claimed = await self.claim(self.concurrency)
        await self.save(await asyncio.gather(*(self.send(delivery) for delivery in claimed)))
        return len(claimed)

    async def claim(self, limit: int) -> list[ClaimedDelivery]:
        now = self.clock()
        ready = [
            name
            for name in self.subscriptions
            if name not in self.circuits or _may_try(self.circuits[name])
        ]
        return await self.store.claim(
            worker_id=self.dispatcher_id,
            now=now,
            lease_until=now + timedelta(seconds=self._lease),
            subscriptions=ready,
            with_content=self._with_content,
            limit=limit,
        )

    async def send(self, delivery: ClaimedDelivery) -> Settled:
        """POST one event to its subscription: the try to save, or, when the subscription's
        circuit lets nothing through, the delivery to hand back untried."""
        subscription = self.subscriptions[delivery.subscription]
        destination = None if delivery.url is None else origin(delivery.url) or delivery.url
        circuit = self._circuit(delivery.subscription, destination)
        if not circuit.allow():
            due = self.clock() + timedelta(seconds=max(1.0, circuit.retry_in()))
            return ReleasedDelivery(delivery.seq, due)
        started_at = self.clock()
        began = time.perf_counter()
        result = await self._post(subscription, delivery)
        duration_ms = round((time.perf_counter() - began) * 1000)
        result = redact_result(result, [subscription.secret.get_secret_value()])
        observe(circuit, result, self.destinations, destination)
        return self._finished(subscription, delivery, result, started_at, duration_ms)

    def _circuit(self, subscription: str, destination: str | None) -> CircuitBreaker:
        """A subscription's circuit, or a callback destination's."""
        if destination is None or self.destinations is None:
            return self.circuits[subscription]
        return self.destinations.breaker(destination)

    async def _post(
        self, subscription: SubscriptionConfig, delivery: ClaimedDelivery
    ) -> DeliveryResult:
        event, url = delivery.event, delivery.url
        body = json_body(event.body(delivery.content))
        headers = {
            "content-type": "application/json",
            **signed_headers(self._keys[subscription.name], str(event.id), int(time.time()), body),
        }
        try:
            async with asyncio.timeout(subscription.timeout + TIMEOUT_GRACE):
                return await post_bytes_and_classify(
                    self.runtime.http,
                    self._urls[subscription.name] if url is None else wire_url(url),
                    content=body,
                    headers=headers,
                    timeout=subscription.timeout,
                )
        except TimeoutError:
            return DeliveryResult.failed(
                ErrorClass.TRANSIENT, "timeout", f"no answer within {subscription.timeout:g}s"
            )

    def _finished(
        self,
        subscription: SubscriptionConfig,
        delivery: ClaimedDelivery,
        result: DeliveryResult,
        started_at: datetime,
        duration_ms: int,
    ) -> FinishedDelivery:
        now = self.clock()
        attempt = delivery.attempts + 1
        error = result.error
        values: dict[str, object] = {"attempts": attempt, "updated_at": now}
        if error is None:
            values |= {
                "status": EventDeliveryStatus.DELIVERED,
                "next_attempt_at": None,
                "delivered_at": now,
                "last_error": None,
            }
        else:
            retry_at = None
            if error.cls is not ErrorClass.PERMANENT:
                retry_at = next_round_at(
                    now=now,
                    schedule=subscription.retry.schedule,
                    jitter=subscription.retry.jitter,
                    rounds_done=attempt - delivery.attempt_base,
                    retry_after=result.retry_after,
                    expires_at=None,
                    rng=self.rng,
                )
            values |= {
                "status": EventDeliveryStatus.PENDING if retry_at else EventDeliveryStatus.FAILED,
                "next_attempt_at": retry_at,
                "delivered_at": None,
                "last_error": {"class": error.cls, "code": error.code, "message": error.message},
            }
        return FinishedDelivery(
            seq=delivery.seq,
            values=values,
            attempt={
                "id": uuid7(),
                "event_id": delivery.event.id,
                "subscription": delivery.subscription,
                "attempt": attempt,
                "trigger": delivery.trigger,
                "outcome": AttemptOutcome.DELIVERED if error is None else AttemptOutcome.FAILED,
                "error_class": None if error is None else error.cls,
                "error_code": None if error is None else error.code,
                "error_message": None if error is None else error.message,
                "response_status": result.provider_status,
                "response_excerpt": result.response_excerpt,
                "started_at": started_at,
                "duration_ms": duration_ms,
            },
        )

    async def save(self, settled: Sequence[Settled]) -> set[int]:
        """Write finished tries and hand back untried deliveries, in one transaction; count
        and log the tries written. The ``seq`` of those written."""
        if not settled:
            return set()
        saved = await self._write(settled)
        for item in settled:
            self._observe(item, item.seq in saved)
        return saved

    def _observe(self, item: Settled, saved: bool) -> None:
        """Count and log a try once its save is over."""
        if not isinstance(item, FinishedDelivery):
            return
        if not saved:
            logger.warning("lease on event delivery %d was lost before it was saved", item.seq)
            return
        attempt = item.attempt
        name = attempt["subscription"]
        metrics.event_attempts.labels(
            name, attempt["outcome"], attempt["error_class"] or "none"
        ).inc()
        if attempt["outcome"] == AttemptOutcome.DELIVERED:
            metrics.events_delivered.labels(name).inc()
        logger.log(
            logging.DEBUG if attempt["error_class"] is None else logging.INFO,
            "event attempt event=%s subscription=%s attempt=%d outcome=%s error_class=%s "
            "code=%s status=%s",
            attempt["event_id"],
            name,
            attempt["attempt"],
            attempt["outcome"],
            attempt["error_class"] or "-",
            attempt["error_code"] or "-",
            item.values["status"],
        )

    async def sweep(self) -> int:
        """Take back deliveries whose dispatcher's lease ran out; give a new table its first
        statistics; count what is unsettled."""
        self._last_sweep = asyncio.get_running_loop().time()
        recovered = await self.store.recover_expired_leases(self.clock())
        if recovered:
            logger.warning("recovered %d event deliveries from expired leases", recovered)
        if await self.store.analyze_if_never():
            logger.info("analyzed event_deliveries, never analyzed before, for the claim's plan")
        unsettled = await self.store.unsettled()
        for name in self.subscriptions:
            metrics.events_pending.labels(name).set(unsettled.get(name, 0))
        return recovered


async def _pause(
    stop: asyncio.Event, events: Sequence[asyncio.Event], seconds: float | None
) -> None:
    """Sleep until ``stop`` or one of ``events`` is set, or ``seconds`` have passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in (stop, *events)]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _seq(settled: Settled) -> int:
    return settled.seq


def _no_message(message: Message) -> str | None:
    """Callbacks name their destination per delivery, not per message."""
    return None


def _may_try(circuit: CircuitBreaker) -> bool:
    """Whether a delivery could go through ``circuit`` now (without taking its trial)."""
    return not circuit.enabled or circuit.state is CircuitState.CLOSED or circuit.retry_in() == 0
