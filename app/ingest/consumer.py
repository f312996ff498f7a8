"""``herald ingest``: Redis Streams consumed by consumer groups, each entry one notification.

Per configured stream, one loop in a consumer group (created if missing, ``MKSTREAM``), under
this process's consumer name:

1. Every so often (half of ``claim_idle``, at most 5 s) ``XAUTOCLAIM`` takes over entries
   pending longer than ``claim_idle``: those of a consumer that died, or whose try failed.
   An entry delivered more than ``dead_letter.after`` times goes to the dead-letter stream.
2. Otherwise ``XREADGROUP … >`` reads up to ``batch`` new entries, waiting ``block``.
   ``concurrency`` lanes do this at once, so that one batch is stored while the next is read
   (bench/results/levers.md, "ingest_stream").
3. Each entry becomes a request by the stream's rules (``app.ingest.mapping``); the batch is
   accepted in one transaction (``service.accept_keyed``: POST's checks, key = stream + entry
   id, so an entry read twice makes one notification).
4. Only then, in one ``MULTI``: ``XADD`` of the dead letters (the entry's fields and
   ``herald.reason``) and ``XACK`` of every entry settled. Entries whose store failed stay
   pending, for step 1.

Faults: Redis unreachable ends nothing: the loop waits (doubling up to 30 s, one log line per
cause) and resumes, and a group lost with Redis's data is created again. The database
unreachable: the batch is held and retried with the same backoff, its entries kept from being
claimed by others (``XCLAIM … JUSTID``, which resets their idle time and not their count), and
nothing is acked. A failure that is neither is tried again entry by entry, so one bad entry
fails alone. Whatever else escapes is the supervisor's (``supervised``: logged once, counted in
``herald_task_restarts_total{task="ingest"}``, restarted with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import metrics, service
from app.delivery.outage import Outage
from app.delivery.supervise import stopped, supervised
from app.delivery.worker import default_worker_id
from app.domain import IngestOutcome, Unmatched
from app.errors import HeraldError
from app.ingest.mapping import Entry, Refused, StreamRules
from app.ingest.rules import IngestConfig, RedisConfig, StreamConfig
from app.runtime import Runtime
from app.store.db import brief, unavailable_reason

logger = logging.getLogger("herald.ingest")
_quiet = logging.getLogger("herald.ingest.lanes")
_quiet.setLevel(logging.ERROR)  # the lanes after the first: their outage lines repeat its own

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)
"""What Redis being unreachable (or still loading its data after a restart) looks like."""
REASON_LIMIT = 1000
FAILURES_KEPT = 10_000
"""Reasons of failed tries remembered for the dead letter, at most (oldest dropped)."""
CLAIM_EVERY = 5.0
REASON = b"herald.reason"
SOURCE_STREAM = b"herald.stream"
SOURCE_ID = b"herald.id"
SOURCE_GROUP = b"herald.group"


def connect(config: RedisConfig, *, block: float) -> Redis:
    """A client for ``config.url``: reads may block ``block`` seconds, so the socket waits
    longer than that; one immediate retry replaces a pooled connection a restart broke."""
    client: Redis = Redis.from_url(
        config.url.get_secret_value(),
        socket_connect_timeout=5,
        socket_timeout=block + 10,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return client


@dataclass(frozen=True, slots=True)
class Failed:
    """An entry whose store failed for now: left pending, to be claimed and tried again."""

    reason: str


Result = service.Stored | HeraldError | Failed


def _id_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``1700000000000-3``) as it sorts: by time, then sequence."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def problem_reason(exc: HeraldError) -> str:
    """A refusal as one line: its detail, and where each error is."""
    where = "; ".join(
        ".".join(str(part) for part in error.get("loc", [])) + f": {error.get('msg')}"
        for error in exc.errors or []
    )
    return f"{exc.detail} ({where})" if where and where not in exc.detail else exc.detail


class StreamConsumer:
    """One configured stream, read by this process as one consumer of the stream's group."""

    def __init__(
        self,
        runtime: Runtime,
        redis: Redis,
        config: StreamConfig,
        settings: IngestConfig,
        consumer: str,
    ) -> None:
        self.runtime = runtime
        self.redis = redis
        self.config = config
        self.settings = settings
        self.consumer = consumer
        self.rules = StreamRules(config)
        self.stream = config.stream
        self.failures: dict[str, str] = {}
        """Why the last try of an entry failed here, for its dead letter."""
        self._cursor: bytes | str = "0-0"
        self._next_claim = 0.0
        self._redis_outage = Outage(logger, f"Redis (stream {self.stream})")
        self._db_outage = Outage(logger, f"database (stream {self.stream})")
        for outcome in IngestOutcome:
            if outcome is not IngestOutcome.SKIPPED:
                metrics.ingest_entries.labels(self.stream, outcome)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` with ``ingest.concurrency`` lanes, each reading and settling
        batches of its own (one claims idle entries too); Redis being unreachable is waited
        out, not raised."""
        await asyncio.gather(
            *(self._lane(stop, first=lane == 0) for lane in range(self.settings.concurrency))
        )

    async def _lane(self, stop: asyncio.Event, *, first: bool) -> None:
        # The first lane speaks for the stream: the others wait out the same outage silently.
        outage = self._redis_outage if first else Outage(_quiet, f"Redis (stream {self.stream})")
        while not stop.is_set():
            try:
                await self.create_group()
                while not stop.is_set():
                    await self.step(stop, claims=first)
                    outage.recovered()
            except REDIS_DOWN as exc:
                if await stopped(stop, outage.failed(exc)):
                    return

    async def create_group(self) -> None:
        """The group, created at ``group_start`` (with the stream) unless it exists."""
        try:
            await self.redis.xgroup_create(
                self.stream, self.config.group, id=self.config.group_start, mkstream=True
            )
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        else:
            logger.info(
                "stream %s: created consumer group %s at %s",
                self.stream,
                self.config.group,
                self.config.group_start,
            )

    async def step(self, stop: asyncio.Event, *, claims: bool = True) -> int:
        """Claim idle entries (with ``claims``), or else read new ones, and settle them; how
        many there were."""
        try:
            entries = await self._claim() if claims else []
            reclaimed = bool(entries)
            if not entries:
                entries = await self._read()
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            logger.warning("stream %s: group %s is gone: creating it", self.stream, exc)
            await self.create_group()
            return 0
        if entries:
            await self.settle(entries, stop, reclaimed=reclaimed)
        return len(entries)

    async def _read(self) -> list[tuple[Any, Any]]:
        reply: Any = await self.redis.xreadgroup(
            self.config.group,
            self.consumer,
            {self.stream: ">"},
            count=self.settings.batch,
            block=max(1, int(self.settings.block * 1000)),
        )
        if not reply:
            return []
        entries: list[tuple[Any, Any]] = reply[0][1]
        return entries

    async def _claim(self) -> list[tuple[Any, Any]]:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_claim:
            return []
        reply: Any = await self.redis.xautoclaim(
            self.stream,
            self.config.group,
            self.consumer,
            min_idle_time=max(1, int(self.settings.claim_idle * 1000)),
            start_id=self._cursor,
            count=self.settings.batch,
        )
        self._cursor = reply[0]
        if _text(self._cursor) == "0-0":  # the pending list was scanned to its end
            self._next_claim = loop.time() + min(CLAIM_EVERY, self.settings.claim_idle / 2)
            await self._observe_group()
        claimed: list[tuple[Any, Any]] = reply[1]
        if claimed:
            logger.info(
                "stream %s: took over %d entries pending longer than %gs",
                self.stream,
                len(claimed),
                self.settings.claim_idle,
            )
        return claimed

    async def _observe_group(self) -> None:
        """The group's pending entries and lag, for the gauges."""
        for group in await self.redis.xinfo_groups(self.stream):
            if _text(group.get("name", b"")) == self.config.group:
                metrics.ingest_pending.labels(self.stream).set(group.get("pending") or 0)
                lag = group.get("lag")
                if lag is not None:  # unknown after some deletions: leave the last value
                    metrics.ingest_lag.labels(self.stream).set(lag)

    async def _deliveries(self, ids: Sequence[str]) -> dict[str, int]:
        """How many times each of ``ids`` (pending, claimed by us now) has been delivered."""
        found: Any = await self.redis.xpending_range(
            self.stream,
            self.config.group,
            min(ids, key=_id_order),
            max(ids, key=_id_order),
            len(ids) * 2,
            self.consumer,
        )
        return {_text(item["message_id"]): int(item["times_delivered"]) for item in found}

    async def settle(
        self, raw: Sequence[tuple[Any, Any]], stop: asyncio.Event, *, reclaimed: bool = False
    ) -> None:
        """Turn entries into notifications, then dead-letter and ack what is settled."""
        after = self.config.dead_letter.after
        counts: dict[str, int] = {}
        if reclaimed:
            counts = await self._deliveries([_text(entry_id) for entry_id, _ in raw])
        acks: list[bytes | str] = []  # as read: XACK sends them back without encoding them
        dead: list[tuple[str, dict[bytes, bytes], str]] = []
        planned: list[tuple[str, service.Keyed]] = []
        planned_raw: list[tuple[bytes | str, dict[bytes, bytes]]] = []
        tally: dict[IngestOutcome, int] = {}
        for raw_id, raw_fields in raw:
            entry_id = _text(raw_id)
            fields: dict[bytes, bytes] = raw_fields or {}
            if raw_fields is None:  # deleted from the stream while pending: nothing to do
                acks.append(raw_id)
                continue
            if counts.get(entry_id, 1) > after:
                reason = self.failures.pop(entry_id, None) or (
                    f"not processed after {counts[entry_id] - 1} deliveries "
                    "(the consumers that held it failed or stopped)"
                )
                dead.append((entry_id, fields, reason))
                continue
            try:
                keyed = self.rules.plan(Entry(self.stream, entry_id, _decoded(fields)))
            except Refused as exc:
                dead.append((entry_id, fields, exc.reason))
                continue
            if keyed is None:
                tally[IngestOutcome.UNMATCHED] = tally.get(IngestOutcome.UNMATCHED, 0) + 1
                if self.config.unmatched is Unmatched.DEAD_LETTER:
                    dead.append((entry_id, fields, "no rule matched"))
                else:
                    acks.append(raw_id)
                continue
            planned.append((entry_id, keyed))
            planned_raw.append((raw_id, fields))
        results = await self._store(planned, stop, fresh=not reclaimed)
        for (entry_id, _), (raw_id, fields), result in zip(
            planned, planned_raw, results, strict=True
        ):
            if isinstance(result, service.Stored):
                acks.append(raw_id)
                self.failures.pop(entry_id, None)
                outcome = IngestOutcome.REPLAYED if result.replayed else IngestOutcome.ACCEPTED
            elif isinstance(result, HeraldError):
                dead.append((entry_id, fields, problem_reason(result)))
                continue
            else:
                self._remember(entry_id, result.reason)
                outcome = IngestOutcome.FAILED
            tally[outcome] = tally.get(outcome, 0) + 1
        await self._finish(acks, dead)
        if dead:
            tally[IngestOutcome.DEAD_LETTERED] = len(dead)
        for outcome, count in tally.items():
            metrics.ingest_entries.labels(self.stream, outcome).inc(count)

    def _remember(self, entry_id: str, reason: str) -> None:
        if len(self.failures) >= FAILURES_KEPT:
            self.failures.pop(next(iter(self.failures)))
        self.failures[entry_id] = reason

    async def _store(
        self,
        planned: Sequence[tuple[str, service.Keyed]],
        stop: asyncio.Event,
        *,
        fresh: bool = False,
    ) -> list[Result]:
        """Accept the planned entries' requests in one transaction; through a database outage,
        hold the entries and try again; after any other failure, try each alone so that one
        bad entry fails alone."""
        if not planned:
            return []
        items = [keyed for _, keyed in planned]
        while True:
            try:
                results = await service.accept_keyed(
                    self.runtime, items, owner=self.config.owner, fresh=fresh
                )
            except Exception as exc:
                if unavailable_reason(exc) is None:
                    failure = exc
                    break
                wait = self._db_outage.failed(exc)
                if await self._wait_holding([entry_id for entry_id, _ in planned], wait, stop):
                    return [Failed("stopped during a database outage")] * len(planned)
                continue
            self._db_outage.recovered()
            return list(results)
        if len(planned) == 1:
            entry_id = planned[0][0]
            again = entry_id in self.failures
            logger.log(
                logging.WARNING if again else logging.ERROR,
                "stream %s: storing entry %s failed%s: %s",
                self.stream,
                entry_id,
                " again" if again else "",
                brief(failure),
                exc_info=None if again else failure,
            )
            return [Failed(f"{type(failure).__name__}: {brief(failure)}")]
        alone: list[Result] = []
        for one in planned:
            alone.extend(await self._store([one], stop, fresh=fresh))
        return alone

    async def _wait_holding(self, ids: Sequence[str], wait: float, stop: asyncio.Event) -> bool:
        """Wait ``wait`` seconds (``True``: stopped meanwhile) holding ``ids``: their idle time
        is reset at least every half ``claim_idle``, however long the backoff has grown, so no
        other consumer's ``XAUTOCLAIM`` takes them while this one still has them in hand."""
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while True:
            await self._hold(ids)
            left = end - loop.time()
            if left <= 0:
                return False
            if await stopped(stop, min(left, self.settings.claim_idle / 2)):
                return True

    async def _hold(self, ids: Sequence[str]) -> None:
        """Keep entries this consumer holds from being taken over while it waits: their idle
        time starts again, their delivery count does not grow."""
        with contextlib.suppress(*REDIS_DOWN):
            await self.redis.xclaim(
                self.stream,
                self.config.group,
                self.consumer,
                min_idle_time=0,
                message_ids=list(ids),
                justid=True,
            )

    async def _finish(
        self, acks: list[bytes | str], dead: list[tuple[str, dict[bytes, bytes], str]]
    ) -> None:
        """Dead letters added and settled entries acked, all or nothing."""
        if not acks and not dead:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry_id, fields, reason in dead:
                letter = {
                    **fields,
                    REASON: reason[:REASON_LIMIT].encode(),
                    SOURCE_STREAM: self.stream.encode(),
                    SOURCE_ID: entry_id.encode(),
                    SOURCE_GROUP: self.config.group.encode(),
                }
                pipe.xadd(
                    self.config.dead_letter_stream,
                    letter,  # type: ignore[arg-type]  # bytes keys are fine on the wire
                    maxlen=self.config.dead_letter.maxlen,
                    approximate=True,
                )
            pipe.xack(self.stream, self.config.group, *acks, *(d[0] for d in dead))
            await pipe.execute()
        for entry_id, _, _ in dead:
            self.failures.pop(entry_id, None)
        if dead:
            entry_id, _, reason = dead[0]
            logger.warning(
                "stream %s: %d entries dead-lettered to %s; the first, %s: %s",
                self.stream,
                len(dead),
                self.config.dead_letter_stream,
                entry_id,
                reason,
            )


def _decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    """An entry's fields as text; ``Refused`` for one that is not UTF-8."""
    decoded: dict[str, str] = {}
    for name, value in fields.items():
        try:
            decoded[name.decode()] = value.decode()
        except UnicodeDecodeError:
            raise Refused(f"field {name.decode(errors='replace')!r} is not UTF-8") from None
    return decoded


class Ingest:
    """Every configured stream, each consumed by its own supervised loop."""

    def __init__(self, runtime: Runtime, consumer: str | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.config.ingest
        self.consumer = consumer or default_worker_id()

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if settings.redis is None or not settings.streams:
            return
        redis = connect(settings.redis, block=settings.block)
        logger.info(
            "consuming %d streams as %s: %s",
            len(settings.streams),
            self.consumer,
            ", ".join(f"{s.stream} (group {s.group})" for s in settings.streams),
        )
        try:
            await asyncio.gather(
                *(
                    supervised(
                        "ingest",
                        StreamConsumer(self.runtime, redis, stream, settings, self.consumer).run,
                        stop,
                    )
                    for stream in settings.streams
                )
            )
        finally:
            await redis.aclose()
