"""The delivery loop: claim due notifications under a lease, run a round each, persist it.

A claim is one short transaction; the provider calls happen outside any transaction; each
notification's attempts and new state are then written together, in one transaction that also
checks the lease is still ours (shared with the other rounds that finished meanwhile: see
saves.py). A worker that dies mid-round leaves no attempt behind: its lease runs out, the sweep
returns the notification to ``pending``, and another try is made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.channels.base import (
    NO_OVERRIDES,
    ChannelConfig,
    DeliveryResult,
    ErrorClass,
    Message,
    Recipient,
)
from app.channels.text import html_to_text
from app.config import HeraldConfig, Settings
from app.dedup import DigestConfig, digest_message, marked, marked_overrides
from app.delivery.fleet import FleetCircuits
from app.delivery.listener import listen
from app.delivery.mutes import MuteBook
from app.delivery.orchestrator import (
    Link,
    Orchestrator,
    Outcome,
    Plan,
    Revision,
    utcnow,
)
from app.delivery.outage import MAX_BACKOFF, Outage
from app.delivery.quiet import run_round as quiet_round
from app.delivery.retention import RetentionSweep
from app.delivery.saves import RoundSaver
from app.delivery.supervise import Task, supervised
from app.domain import (
    HOLD_STATES,
    AttemptOutcome,
    AttemptTrigger,
    HopState,
    RoundUpdate,
    Strategy,
)
from app.events.body import CircuitChange, acknowledgement_data
from app.events.circuits import CircuitChanges
from app.events.outbox import Outbox
from app.ids import uuid7
from app.nesting import shown
from app.quiet import QuietHours
from app.store.db import brief, is_sqlite, unavailable_reason
from app.store.queue import Claimed, FinishedRound, WorkQueue
from app.store.repositories import IDEMPOTENCY_RETENTION
from app.store.sql import DUE_CHANNEL, OutboxRows, Row

if TYPE_CHECKING:
    from app.receipts import Receipts

logger = logging.getLogger("herald.worker")
T = TypeVar("T")

SWEEP_EVERY = 5.0
PURGE_EVERY = 600.0
WINDOW_GRACE = timedelta(hours=1)
"""How long after it closed a dedup window is deleted (long after any accept that read it)."""
SAVE_GRACE = 5.0
"""At shutdown, how long rounds that finished but are not yet written may take to be saved."""


class _UnconfiguredConfig(ChannelConfig):
    type: Literal["unconfigured"] = "unconfigured"


class UnconfiguredChannel:
    """Stands in for a channel that was removed from the config after a notification named it."""

    type_name = "unconfigured"

    def __init__(self, name: str) -> None:
        self.name = name
        self.config: ChannelConfig = _UnconfiguredConfig()

    async def send(self, message: Message) -> DeliveryResult:
        return DeliveryResult.failed(
            ErrorClass.CONFIG,
            "channel_not_configured",
            f"channel {self.name} is no longer in the config",
        )


HELD_PER_SLOT = 4
"""Rounds held per concurrency slot, sending or waiting for their save. A save waits for the
event loop between its statements, so under load it takes a while: with more rounds waiting,
each group commit takes more of them (bench/results/levers.md, "rounds held per slot")."""


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def message_of(notification: Claimed) -> Message:
    """The message a notification sends: a collapsed one's with its ``app.dedup.times`` mark."""
    occurrences = notification.occurrences
    return Message(
        id=notification.id,
        route=notification.route,
        recipient=Recipient.stored(notification.recipient),
        subject=marked(notification.subject, occurrences),
        text=marked(notification.text, occurrences),
        html=marked(notification.html, occurrences),
        severity=notification.severity,
        source=notification.source,
        metadata=shown(notification.metadata),
        created_at=notification.created_at,
        acks=notification.strategy == Strategy.ESCALATE,
        overrides=marked_overrides(notification.rendered or NO_OVERRIDES, occurrences),
    )


def _digest_of(
    digest_id: uuid.UUID, leader: Claimed, message: Message, members: list[Claimed]
) -> Message:
    """The one message of ``leader``'s digest with ``members``, listed oldest first."""
    listed = sorted([leader, *members], key=lambda claimed: claimed.id)
    items = [
        (
            claimed.id,
            claimed.subject,
            claimed.text if claimed.text is not None else html_to_text(claimed.html or ""),
            claimed.severity,
            claimed.occurrences,
        )
        for claimed in listed
    ]
    return digest_message(digest_id, leader.route, message.recipient, items, leader.created_at)


def _digestible(notification: Claimed, now: datetime) -> bool:
    """Whether a claimed notification of a digest group may go in a digest now: not
    acknowledged, expired or holding a hop open (those rounds send nothing)."""
    return (
        notification.acknowledged_at is None
        and (notification.expires_at is None or notification.expires_at > now)
        and not any(hop.state in HOLD_STATES for hop in notification.hops)
    )


def revision_row(revision: Revision) -> Row:
    """``revise_attempt``'s parameters: the attempt now failed, and why."""
    error = revision.error
    return {
        "a_id": revision.attempt_id,
        "outcome": AttemptOutcome.FAILED,
        "error_class": str(error.cls),
        "error_code": error.code,
        "error_message": error.message,
    }


def acknowledgement_of(notification: Claimed) -> dict[str, object]:
    """``data.acknowledgement`` of an acknowledgement recorded while a worker held it."""
    assert notification.acknowledged_at is not None
    return acknowledgement_data(
        notification.acknowledged_at,
        notification.acknowledged_by or "",
        notification.acknowledged_via or "",
    )


class Resources(Protocol):
    """What a worker uses of its process's resources. ``app.runtime.Runtime`` is one; the
    worker does not import it, since the runtime, which builds every part, imports delivery."""

    @property
    def settings(self) -> Settings: ...

    @property
    def config(self) -> HeraldConfig: ...

    @property
    def engine(self) -> AsyncEngine: ...

    @property
    def links(self) -> Mapping[str, Link]:
        """The configured channels by name, as rounds use them."""
        ...

    @property
    def wakeup(self) -> asyncio.Event:
        """Set when work may be due now."""
        ...

    def wake_worker(self) -> None: ...

    @property
    def mutes(self) -> MuteBook:
        """The route mutes in force (``/mute``): muted hops are left out of rounds."""
        ...

    @property
    def fleet_circuits(self) -> FleetCircuits | None:
        """The channels' circuits as every process shares them (PostgreSQL), or ``None``."""
        ...

    @property
    def outbox(self) -> Outbox:
        """Who takes which events: a round's events are built only when somebody does."""
        ...

    @property
    def circuit_changes(self) -> CircuitChanges | None:
        """Channel circuit changes waiting to be written with the next round's save."""
        ...

    def emitted(self, events: OutboxRows | None) -> None:
        """Once a save that wrote ``events`` committed: count them, wake the dispatcher."""
        ...

    def announce_final(self, notification_id: uuid.UUID) -> None:
        """Wake the requests waiting for this notification, just saved in a final state."""
        ...

    @property
    def receipts(self) -> Receipts:
        """Matches providers' receipts to the attempts they are about."""
        ...


class Worker:
    def __init__(
        self,
        runtime: Resources,
        *,
        worker_id: str | None = None,
        orchestrator: Orchestrator | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.worker_id = worker_id or default_worker_id()
        self.clock = clock
        self.orchestrator = orchestrator or Orchestrator(clock=clock)
        self._in_flight: dict[asyncio.Task[None], uuid.UUID] = {}
        self._saving: set[asyncio.Task[None]] = set()
        """Tasks in ``_in_flight`` whose provider calls are over, waiting for their save."""
        self._gathered: set[uuid.UUID] = set()
        """Notifications a digest in flight here claimed besides the one its task holds."""
        self._slot_free = asyncio.Event()
        self.store = WorkQueue(runtime.engine)
        self._saves = RoundSaver(self.store, self.worker_id)
        self._last_purge = float("-inf")
        config = runtime.config
        self.retention = RetentionSweep(
            runtime.engine,
            config.retention,
            {name: route.retention for name, route in config.routes.items()},
            clock,
        )

    # --- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then finish or release what is in flight.

        The delivery loop and its side tasks (LISTEN, lease renewal, sweep) are each supervised
        (supervise.py): a failure restarts the one that failed. The side tasks run until the
        shutdown is over, so leases are still renewed while in-flight rounds finish.
        """
        logger.info("worker %s started", self.worker_id)
        side_stop = asyncio.Event()
        side = [
            asyncio.create_task(supervised(name, task, side_stop, cap=cap), name=f"herald-{name}")
            for name, task, cap in self._side_tasks()
        ]
        try:
            await supervised("delivery", self._loop, stop, first=1.0)
            await self._shutdown()
        finally:
            side_stop.set()
            for task in side:
                task.cancel()  # one stuck on an unreachable database must not hold us
            await asyncio.wait(side)

    def _side_tasks(self) -> list[tuple[str, Task, float]]:
        """Name, loop and longest restart pause of each side task."""
        renew_every = self._renew_every()
        tasks: list[tuple[str, Task, float]] = [
            ("renewal", self._keep_leases, renew_every),
            ("sweep", self._sweep_often, MAX_BACKOFF),
            ("retention", self.retention.run, MAX_BACKOFF),
        ]
        if not is_sqlite(self.settings.database_url):
            url, wakeup = self.settings.database_url, self.runtime.wakeup
            tasks.append(
                ("listener", lambda stop: listen(url, DUE_CHANNEL, wakeup, stop), MAX_BACKOFF)
            )
        return tasks

    async def _loop(self, stop: asyncio.Event) -> None:
        outage = Outage(logger)
        while not stop.is_set():
            try:
                self.runtime.wakeup.clear()
                self._slot_free.clear()
                limit = self._room()
                if limit > 0:
                    await self.runtime.mutes.refresh(self.clock())
                claimed = await self.claim(limit) if limit > 0 else []
                outage.recovered()
            except Exception as exc:
                if unavailable_reason(exc) is None:
                    raise
                await _wait_any(stop, None, outage.failed(exc))
                continue
            for notification, together in self._digests(claimed):
                task = asyncio.create_task(self._deliver_guarded(notification, together))
                self._in_flight[task] = notification.id
                task.add_done_callback(self._done)
            if limit <= 0:
                # Every slot is busy: claim again as soon as one frees up.
                await _wait_any(stop, self._slot_free, None)
            elif len(claimed) < limit:
                # Nothing more is due: sleep until woken, or until the poll finds retries.
                await _wait_any(stop, self.runtime.wakeup, self.settings.poll_interval)
            # A full claim means more may be due: go round at once.

    async def run_once(self) -> int:
        """Claim one batch and deliver it to the end; the number claimed. For tests and tools."""
        await self.runtime.mutes.refresh(self.clock())
        claimed = await self.claim(self.settings.worker_batch_size)
        await asyncio.gather(*(self.deliver(n, more) for n, more in self._digests(claimed)))
        return len(claimed)

    def _digests(self, claimed: list[Claimed]) -> list[tuple[Claimed, list[Claimed]]]:
        """The claimed notifications each with those of its digest group claimed in the same
        batch (up to its route's ``max_items`` a digest, the oldest leading): their windows
        ended together, so they go as one message. Every other one goes alone."""
        now = self.clock()
        groups: dict[str, list[Claimed]] = {}
        batches: list[tuple[Claimed, list[Claimed]]] = []
        for notification in claimed:
            if _digestible(notification, now) and self._digest_of(notification) is not None:
                groups.setdefault(notification.digest_key or "", []).append(notification)
            else:
                batches.append((notification, []))
        for group in groups.values():
            group.sort(key=lambda notification: notification.id)
            digest = self._digest_of(group[0])
            assert digest is not None
            for start in range(0, len(group), digest.max_items):
                leader, *together = group[start : start + digest.max_items]
                self._gathered.update(member.id for member in together)
                batches.append((leader, together))
        return batches

    def _digest_of(self, notification: Claimed) -> DigestConfig | None:
        """The ``digest`` of a notification's route, when it belongs to a digest group."""
        if notification.digest_key is None:
            return None
        route = self.runtime.config.routes.get(notification.route or "")
        return None if route is None else route.digest

    def _room(self) -> int:
        """How many notifications to claim now.

        ``worker_concurrency`` bounds the rounds talking to providers; a round whose calls are
        over frees its slot while its save is written (a save waits for the next group commit),
        so the slot is not idle meanwhile. At most ``HELD_PER_SLOT`` times the concurrency is
        held in all, so slow saves cannot pile up claims without end.
        """
        concurrency = self.settings.worker_concurrency
        sending = len(self._in_flight) - len(self._saving)
        return min(
            concurrency - sending,
            HELD_PER_SLOT * concurrency - len(self._in_flight),
            self.settings.worker_batch_size,
        )

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._saving.discard(task)
        self._slot_free.set()

    async def _deliver_guarded(self, notification: Claimed, together: list[Claimed]) -> None:
        try:
            await self.deliver(notification, together)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease stays; the sweep hands the notification back when it runs out.
            logger.exception("delivery of %s failed before it was saved", notification.id)

    async def _shutdown(self) -> None:
        if self._in_flight:
            logger.info(
                "worker %s stopping: waiting up to %.0fs for %d deliveries",
                self.worker_id,
                self.settings.shutdown_timeout,
                len(self._in_flight),
            )
            _, pending = await asyncio.wait(
                list(self._in_flight), timeout=self.settings.shutdown_timeout
            )
            if pending:
                ids = [self._in_flight[t] for t in pending if t in self._in_flight]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                # A cancelled round that had finished is still written if it was queued; only
                # then can release tell which claims are really unfinished.
                await self._drain_saves()
                # With them, the members of their digests (a task cancelled before it ran
                # never let go of those claimed in its batch).
                await self.release([*ids, *self._gathered])
                self._gathered.clear()
        await self._drain_saves()
        logger.info("worker %s stopped", self.worker_id)

    async def _drain_saves(self) -> None:
        if not await self._saves.drain(SAVE_GRACE):
            logger.warning("gave up on saving rounds still queued after %.0fs", SAVE_GRACE)

    def _renew_every(self) -> float:
        return max(0.05, self.settings.lease / 3)

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the lease of every notification in flight here, every third of a lease, until
        ``stop`` (after the shutdown grace period); at once when (re)started.

        A round can outlast the lease (a slow provider, a long chain of timeouts, a rate
        limiter's wait): without renewal another worker's sweep would take the notification
        over while this one is still sending it, and the provider would get it twice.
        """
        while not stop.is_set():
            if ids := [*self._in_flight.values(), *self._gathered]:
                await self.renew(ids)
            await _wait_any(stop, None, self._renew_every())

    async def _sweep_often(self, stop: asyncio.Event) -> None:
        """Sweep every ``SWEEP_EVERY`` seconds until ``stop``."""
        while not stop.is_set():
            await self.sweep()
            await _wait_any(stop, None, SWEEP_EVERY)

    # --- steps ---------------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claimed]:
        now = self.clock()
        return await self.store.claim(
            worker_id=self.worker_id,
            now=now,
            lease_until=now + timedelta(seconds=self.settings.lease),
            limit=limit,
        )

    async def renew(self, ids: list[uuid.UUID]) -> int:
        """Extend this worker's leases on ``ids`` (those it still holds); how many."""
        lease_until = self.clock() + timedelta(seconds=self.settings.lease)
        return await self.store.renew(ids, worker_id=self.worker_id, lease_until=lease_until)

    async def release(self, ids: list[uuid.UUID]) -> int:
        released = await self.store.release(ids, worker_id=self.worker_id, now=self.clock())
        logger.info("released %d unfinished claims", released)
        return released

    async def sweep(self) -> int:
        """Hand back notifications whose worker's lease ran out; purge old idempotency keys."""
        now = self.clock()
        loop = asyncio.get_running_loop()
        recovered = await self.store.recover_expired(now)
        await self.runtime.receipts.match(now=now)  # those that came before their send's save
        if loop.time() - self._last_purge >= PURGE_EVERY:
            await self.store.purge_keys(now - IDEMPOTENCY_RETENTION)
            await self.store.purge_windows(now - WINDOW_GRACE)
            await self.runtime.receipts.purge(now)
            self._last_purge = loop.time()
        if recovered:
            metrics.leases_recovered.inc(recovered)
            logger.warning("recovered %d notifications from expired leases", recovered)
            self.runtime.wake_worker()
        return recovered

    async def deliver(self, notification: Claimed, together: Sequence[Claimed] = ()) -> Outcome:
        """Run one round (or settle its held hops, or expire it) and save it; returns what
        was decided.

        ``together``: notifications of its digest group claimed with it; its digest sends
        them, and the pending others of the group it can claim (``app.dedup``)."""
        members = list(together)
        try:
            return await self._deliver(notification, members)
        finally:
            self._gathered.difference_update(member.id for member in members)

    async def _deliver(self, notification: Claimed, members: list[Claimed]) -> Outcome:
        """``deliver``, with ``members`` the digest's others: those claimed with it, to which
        its round adds those it gathers. When its round sends no digest (it expired, say), the
        ones claimed with it go alone after it."""
        digested = False
        hops = notification.hops
        expires_at = notification.expires_at
        held = [index for index, hop in enumerate(hops) if hop.state in HOLD_STATES]
        # A round that settles held hops goes on with the round they were held in.
        round_number = notification.round + (0 if held else 1)
        if notification.acknowledged_at is not None:
            # Acknowledged while a worker held it: recorded, made final here, nothing sent.
            outcome = self.orchestrator.acknowledged(hops, acknowledgement_of(notification))
        elif expires_at is not None and expires_at <= self.clock():
            outcome = self.orchestrator.expire(hops)
        else:
            fleet = self.runtime.fleet_circuits
            if fleet is not None:
                await fleet.fresh()  # no round decides on a view of the circuits older than 1 s
            chain = [self._link(name) for name in notification.channels]
            muted = self.runtime.mutes.muted_hops(
                notification.route, [link.channel.type_name for link in chain], self.clock()
            )
            plan = Plan(
                strategy=notification.strategy,
                schedule=notification.retry_schedule,
                jitter=notification.retry_jitter,
                round=round_number,
                rounds_done=round_number - 1 - notification.round_base,
                trigger=notification.trigger,
                expires_at=expires_at,
                holds=notification.holds,
                muted=muted,
            )
            message = message_of(notification)
            if held:
                found = await self._retrying(
                    f"reading the held hops of {notification.id}",
                    lambda: self.store.held(notification.id, held),
                )
                outcome = await self.orchestrator.resume(message, chain, hops, plan, found)
            else:
                digested = True
                members += await self._digest_members(notification, len(members))
                if members:
                    digest_id = uuid7()
                    message = _digest_of(digest_id, notification, message, members)
                quiet = message.recipient.quiet_hours or self._route_quiet_hours(notification.route)
                outcome = await quiet_round(
                    self.orchestrator, message, chain, hops, plan, quiet, self.clock()
                )
                if members:
                    outcome = replace(
                        outcome,
                        attempts=[replace(r, digest_id=digest_id) for r in outcome.attempts],
                    )
        task = asyncio.current_task()
        if task in self._in_flight:  # done with providers: its slot may take the next one
            self._saving.add(task)
            self._slot_free.set()
        saved = await self._save(notification, outcome, round_number)
        self._observe(notification, outcome, saved)
        self._announce(notification, outcome, saved)
        if saved:
            await self._match_early_receipts(outcome)
        if members and digested:
            await self._save_members(members, outcome)
        elif members:
            await asyncio.gather(*(self.deliver(member) for member in members))
        return outcome

    async def _digest_members(self, leader: Claimed, claimed: int) -> list[Claimed]:
        """The pending notifications of ``leader``'s digest group that its digest sends besides
        the ``claimed`` ones it has already (claimed here now); none when it has no group."""
        digest = self._digest_of(leader)
        if digest is None or claimed + 1 >= digest.max_items:
            return []
        now = self.clock()
        members = await self._retrying(
            f"gathering the digest of {leader.id}",
            lambda: self.store.gather(
                leader.digest_key or "",
                leader=leader.id,
                worker_id=self.worker_id,
                now=now,
                lease_until=now + timedelta(seconds=self.settings.lease),
                limit=digest.max_items - 1 - claimed,
            ),
        )
        self._gathered.update(member.id for member in members)
        return members

    async def _save_members(self, members: list[Claimed], outcome: Outcome) -> None:
        """Save the digest's round on each notification it listed besides the leader: the
        leader's outcome, with attempts of their own (the same ``digest_id``)."""

        async def save(member: Claimed) -> None:
            round_number = member.round + 1
            own = replace(
                outcome,
                attempts=[replace(r, round=round_number) for r in outcome.attempts],
                revisions=[],
            )
            saved = await self._save(member, own, round_number)
            self._observe(member, own, saved)
            self._announce(member, own, saved)

        await asyncio.gather(*(save(member) for member in members))

    async def _match_early_receipts(self, outcome: Outcome) -> None:
        """Receipts for a send now held for confirmation may have come before its save
        committed: match them now rather than at the next sweep."""
        keys = [
            (record.channel_type, record.result.provider_message_id)
            for record in outcome.attempts
            if record.result.provider_message_id is not None
            and outcome.hops[record.hop].state == HopState.AWAITING_CONFIRMATION
        ]
        if keys:
            try:
                await self.runtime.receipts.match(keys, now=self.clock())
            except Exception as exc:  # the sweep matches them later
                logger.warning("matching early receipts failed: %s", brief(exc))

    def _route_quiet_hours(self, name: str | None) -> QuietHours | None:
        """A route's quiet hours (a recipient's own replace them)."""
        route = self.runtime.config.routes.get(name or "")
        return None if route is None else route.quiet_hours

    def _link(self, name: str) -> Link:
        link = self.runtime.links.get(name)
        return link if link is not None else Link(channel=UnconfiguredChannel(name))

    async def _save(self, notification: Claimed, outcome: Outcome, round_number: int) -> bool:
        tried = bool(outcome.attempts)
        change = RoundUpdate(
            status=outcome.status,
            hops=outcome.hops,
            next_attempt_at=outcome.next_attempt_at,
            updated_at=self.clock(),
            round=round_number if tried else None,
            trigger=AttemptTrigger.SCHEDULED if tried else None,
            attempt_count=notification.attempt_count + len(outcome.attempts) if tried else None,
            last_error=outcome.last_error,
            delivered_via=outcome.delivered_via,
            delivered_at=outcome.delivered_at,
        )
        rows = [record.row(notification.id) for record in outcome.attempts]
        revisions = [revision_row(revision) for revision in outcome.revisions]
        changes = self.runtime.circuit_changes
        circuits = changes.take() if changes is not None else []
        saved = False
        try:
            events = self._events(notification, outcome, change.updated_at, circuits)
            finished = FinishedRound(notification.id, change, rows, events, revisions)
            saved = await self._retrying(
                f"saving the round of {notification.id}",
                lambda: self._saves.save(finished),
            )
        finally:
            if not saved and circuits and changes is not None:
                changes.restore(circuits)  # written with the next round that saves
        if not saved:
            logger.warning(
                "lease on %s was lost before the round was saved; another worker owns it",
                notification.id,
            )
        else:
            self.runtime.emitted(events)
        return saved

    def _events(
        self,
        notification: Claimed,
        outcome: Outcome,
        at: datetime,
        circuits: list[CircuitChange],
    ) -> OutboxRows | None:
        """The outbox's rows of what the round decided and of the channel ``circuits`` that
        moved meanwhile, saved with it (``None``: nobody takes any of it, and nothing was
        built)."""
        outbox = self.runtime.outbox
        return outbox.of_round(
            notification_id=notification.id,
            owner=notification.owner,
            route=notification.route,
            callback=outbox.callback(notification.callback_url, notification.callback_events),
            outcome=outcome,
            at=at,
            circuits=circuits,
        )

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run a database step, retrying while the database is unreachable.

        A delivered round is worth keeping: rather than leave it to the lease sweep (which
        would send it again), keep trying to save it for up to half the lease.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.lease / 2
        backoff = 0.25
        while True:
            try:
                return await step()
            except Exception as exc:
                reason = unavailable_reason(exc)
                if reason is None or loop.time() + backoff > give_up:
                    raise
                logger.warning("%s: %s (%s); retrying in %.2fs", what, reason, brief(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    def _observe(self, notification: Claimed, outcome: Outcome, saved: bool) -> None:
        route = metrics.route_label(notification.route)
        for record in outcome.attempts:
            error = record.result.error
            metrics.series(
                metrics.attempts,
                record.channel,
                record.outcome,
                str(error.cls) if error else "none",
            ).inc()
            metrics.series(metrics.attempt_duration, record.channel).observe(
                record.duration_ms / 1000
            )
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "attempt notification=%s channel=%s hop=%d round=%d outcome=%s "
                    "error_class=%s code=%s",
                    notification.id,
                    record.channel,
                    record.hop,
                    record.round,
                    record.outcome,
                    error.cls if error else "-",
                    error.code if error else "-",
                    extra={
                        "notification_id": str(notification.id),
                        "channel": record.channel,
                        "outcome": record.outcome,
                        "error_class": str(error.cls) if error else None,
                    },
                )
            if error is None and saved:
                metrics.series(metrics.delivered_hop, route, record.channel, str(record.hop)).inc()
        if not saved or not outcome.final:
            return
        metrics.series(metrics.notifications_finished, route, outcome.status).inc()
        if outcome.delivered_at is not None:
            latency = (outcome.delivered_at - notification.created_at).total_seconds()
            metrics.series(metrics.delivery_latency, route).observe(max(0.0, latency))

    def _announce(self, notification: Claimed, outcome: Outcome, saved: bool) -> None:
        """Once a final state is committed, wake the requests waiting for it (``?wait=``)."""
        if saved and outcome.final:
            self.runtime.announce_final(notification.id)


async def supervise_worker(worker: Worker, stop: asyncio.Event) -> None:
    """Run the worker until ``stop`` (its loops restart themselves on a crash: supervise.py)."""
    await worker.run(stop)


async def _wait_any(
    stop: asyncio.Event, wakeup: asyncio.Event | None, seconds: float | None
) -> None:
    """Sleep until ``stop`` or ``wakeup`` is set, or ``seconds`` pass (``None``: no limit)."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wakeup is not None:
        waiters.append(asyncio.ensure_future(wakeup.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
