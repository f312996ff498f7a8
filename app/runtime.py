"""The resources one Herald process holds, built once and closed once.

``open_runtime`` is used by the FastAPI lifespan, by ``herald worker`` and by the tests, so all
three run the same objects: engine, sessions, HTTP client, channel instances, the wake-up event,
the requests waiting for a final state.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import metrics
from app.channels.base import ChannelContext, ChannelType
from app.channels.http_pool import PooledTransport
from app.channels.outbound import Outbound
from app.channels.registry import ChannelRegistry
from app.clock import SYSTEM_CLOCK, Clock
from app.config import HeraldConfig, RetryPolicy, Settings
from app.console.sessions import Sessions
from app.dedup import DedupConfig, DigestConfig
from app.delivery.circuit import STATE_VALUES, CircuitBreaker, DestinationCircuits
from app.delivery.fleet import FleetCircuits
from app.delivery.listener import Heard, listen_to
from app.delivery.mutes import MuteBook
from app.delivery.orchestrator import Link
from app.delivery.waiters import FinalAnnouncer, Listen, Waiters
from app.delivery.worker import default_worker_id
from app.domain import CHANNEL_EVENTS, CircuitState, HoldPolicy, Strategy
from app.events.circuits import CircuitChanges
from app.events.outbox import Outbox, count_emitted
from app.ratelimit import RateLimiter
from app.receipts import Receipts
from app.security.auth import ApiKeys
from app.security.guard import AddressGuard, GuardedTransport
from app.security.links import AckLinks
from app.store.db import create_engine, is_sqlite, session_factory
from app.store.dedup import DedupStore
from app.store.fleet import ChannelWindow, CircuitRows, RateWindows
from app.store.intake import Intake
from app.store.sql import FINAL_CHANNEL, OutboxRows

HTTP_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50)
ANNOUNCE_GRACE = 2.0
"""At close, how long final states not yet announced to other processes may take to be sent."""


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A route or inline chain, as a notification is accepted with it."""

    name: str | None
    channels: list[str]
    strategy: Strategy
    retry: RetryPolicy
    ttl: float | None
    holds: HoldPolicy | None = None
    dedup: DedupConfig | None = None
    digest: DigestConfig | None = None


@dataclass
class Runtime:
    settings: Settings
    config: HeraldConfig
    registry: ChannelRegistry
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: Outbound
    guard: AddressGuard
    api_keys: ApiKeys
    channels: dict[str, ChannelType]
    links: dict[str, Link]
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    circuit_changes: CircuitChanges | None = None
    """Channel circuit changes waiting for the event dispatcher to write them (``None``: no
    subscription takes ``channel.*`` events)."""
    events_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: Waiters = field(default_factory=Waiters)
    """Requests held until their notification is final (``?wait=``)."""
    announcer: FinalAnnouncer | None = None
    """Tells other processes' waiters of final states (PostgreSQL ``NOTIFY``); ``None`` on
    SQLite, where one process serves and delivers."""
    console: Sessions = field(default_factory=Sessions)
    """The console's signed-in browsers (app/console)."""
    fleet_circuits: FleetCircuits | None = None
    """Shares the channels' circuits with every other process (PostgreSQL); its sync runs
    with the delivery loops. ``None``: this process's circuits are its own."""

    @cached_property
    def intake(self) -> Intake:
        """Where the API stores accepted notifications (the hot path, outside the ORM)."""
        return Intake(self.engine)

    @cached_property
    def dedup(self) -> DedupStore:
        """Where requests with a ``dedup_key`` are decided, and full digest groups released."""
        return DedupStore(self.engine)

    @cached_property
    def mutes(self) -> MuteBook:
        """The route mutes in force, as this process's worker last read them."""
        return MuteBook(self.sessions)

    @cached_property
    def outbox(self) -> Outbox:
        """Who takes which events, and the events of each change."""
        return Outbox(self.config.events)

    @cached_property
    def receipts(self) -> Receipts:
        """Keeps providers' receipts and matches them to attempts."""
        return Receipts(
            self.sessions, self.outbox, emitted=self.emitted, wake_worker=self.wake_worker
        )

    @cached_property
    def ack_links(self) -> AckLinks | None:
        """Signs and checks acknowledgement links (``None``: ``server.public_url`` or
        ``server.secret`` is not set)."""
        return ack_links(self.config)

    def wake_worker(self) -> None:
        """Tell an in-process worker that something is due now."""
        self.wakeup.set()

    def wake_events(self) -> None:
        """Tell an in-process event dispatcher that events were written."""
        self.events_wakeup.set()

    def emitted(self, events: OutboxRows | None) -> None:
        """Once the transaction that wrote ``events`` committed: count them and wake the
        event dispatcher."""
        if events:
            count_emitted(events.events)
            self.wake_events()

    def announce_final(self, notification_id: uuid.UUID) -> None:
        """Wake the requests waiting for ``notification_id``, whose final state has just been
        committed: here at once, in other processes through ``NOTIFY`` (app/delivery/waiters.py)."""
        self.waiters.wake((notification_id,))
        if self.announcer is not None:
            self.announcer.announce(notification_id)


def settle_heap(young: int | None = None) -> None:
    """Take what start-up built out of the cyclic garbage collector's sight (``gc.freeze``).

    A server keeps the objects made at start-up (SQLAlchemy's mappers and caches, pydantic's
    validators, FastAPI's routes) for its whole life; while they are tracked, every full
    collection walks all of them again, stalling every request in flight. Frozen, the API
    serves more requests per second with a shorter tail; the worker's deliveries per second did
    not move (bench/results/levers.md, "`gc.freeze()` after start-up"). For long-running
    processes only (``herald serve``, ``herald worker``): frozen objects are never collected.

    ``young``: allocations between collections of the youngest generation (else Python's
    default). ``herald ingest`` holds batches of entries in flight, each allocating many
    short-lived containers, and collecting at the default walked the batches' live objects
    again and again (bench/results/levers.md, "ingest_stream").
    """
    gc.collect()
    gc.freeze()
    if young is not None:
        gc.set_threshold(young, *gc.get_threshold()[1:])


def _export_circuit(channel: str, state: CircuitState) -> None:
    metrics.channel_circuit_state.labels(channel).set(STATE_VALUES[state])


def build_channels(
    config: HeraldConfig,
    registry: ChannelRegistry,
    context: ChannelContext,
    circuit_changes: CircuitChanges | None = None,
    windows: RateWindows | None = None,
) -> tuple[dict[str, ChannelType], dict[str, Link]]:
    """Each channel with its link; ``circuit_changes`` hears every channel circuit's moves;
    with ``windows``, rate limits are the fleet's (PostgreSQL)."""
    channels: dict[str, ChannelType] = {}
    links: dict[str, Link] = {}
    for name, channel_config in config.channels.items():
        channel_type = registry.get(channel_config.type)
        if channel_type is None:  # parse_config already refused unknown types
            raise LookupError(f"channel type {channel_config.type!r} is not registered")
        channel = channel_type(name, channel_config, context)
        rate = channel_config.rate
        channels[name] = channel
        link = links[name] = Link(
            channel=channel,
            limiter=(
                RateLimiter(
                    *rate,
                    clock=context.clock,
                    shared=ChannelWindow(windows, name, *rate) if windows else None,
                )
                if rate
                else None
            ),
            secrets=tuple(channel.secrets()),
            receipts=channel.sends_receipts,
        )
        # One caller's endpoint must not open the circuit for every caller: when the recipient
        # names the host, the channel has a circuit per destination and none of its own.
        if channel.recipient_addressed:
            link.destinations = DestinationCircuits(
                name, channel_config.circuit, channel.destination
            )
        else:
            breaker = link.circuit = CircuitBreaker(
                name, channel_config.circuit, on_change=_export_circuit
            )
            if circuit_changes is not None:
                breaker.on_change = circuit_changes.hook(
                    breaker, channel.type_name, _export_circuit
                )
        _export_circuit(name, CircuitState.CLOSED)
    return channels, links


def share_circuits(
    engine: AsyncEngine,
    channels: dict[str, ChannelType],
    links: dict[str, Link],
    changes: CircuitChanges | None,
) -> FleetCircuits:
    """The channel-wide breakers, shared with every other process: their moves go through the
    sync (which emits a transition's event in the one process that made it)."""
    breakers = {name: link.circuit for name, link in links.items() if link.circuit is not None}
    fleet = FleetCircuits(
        CircuitRows(engine),
        breakers,
        holder=default_worker_id(),
        channel_types={name: channels[name].type_name for name in breakers},
        timeouts={name: channels[name].config.timeout for name in breakers},
        export=_export_circuit,
        changes=changes,
    )
    for breaker in breakers.values():
        breaker.on_change = fleet.moved
    return fleet


def ack_links(config: HeraldConfig) -> AckLinks | None:
    """Acknowledgement links, when ``server.public_url`` and ``server.secret`` are set."""
    server = config.server
    if server.public_url is None or server.secret is None:
        return None
    return AckLinks(server.public_url, server.secret.get_secret_value(), server.ack_link_ttl)


def _final_listener(database_url: str) -> Listen:
    """How this process's waiters hear other processes' final states."""

    def listen(heard: Heard, stop: asyncio.Event) -> Awaitable[None]:
        return listen_to(database_url, FINAL_CHANNEL, heard, stop)

    return listen


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    config: HeraldConfig,
    registry: ChannelRegistry,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[Runtime]:
    """``clock``: what rate limits and channels wait on (tests pass one that moves at once).

    On PostgreSQL, with the system clock, channels' rate limits and circuits are the fleet's
    (app/store/fleet.py): they keep time on the database's clock, which every process reads
    alike. A clock of a test's own cannot be shared, so under one they stay in the process.
    """
    # httpx logs every request URL at INFO and Apprise logs URL parts at DEBUG; some providers
    # put credentials in the path, so neither may log below WARNING.
    for name in ("httpx", "apprise"):
        logging.getLogger(name).setLevel(logging.WARNING)
    engine = create_engine(settings.database_url)
    guard = AddressGuard(
        allow_private=config.network.allow_private_addresses,
        allowed=config.network.allowed_networks,
    )
    http = Outbound(GuardedTransport(guard, PooledTransport(HTTP_LIMITS)))
    takes_channel_events = any(s.event_types & CHANNEL_EVENTS for s in config.events.subscriptions)
    circuit_changes = CircuitChanges() if takes_channel_events else None
    context = ChannelContext(
        http=http,
        clock=clock,
        public_url=config.server.public_url,
        links=ack_links(config),
    )
    postgres = not is_sqlite(settings.database_url)
    shared = postgres and clock is SYSTEM_CLOCK
    channels, links = build_channels(
        config, registry, context, circuit_changes, RateWindows(engine) if shared else None
    )
    fleet = share_circuits(engine, channels, links, circuit_changes) if shared else None
    runtime = Runtime(
        settings=settings,
        config=config,
        registry=registry,
        engine=engine,
        sessions=session_factory(engine),
        http=http,
        guard=guard,
        api_keys=ApiKeys(config.auth),
        channels=channels,
        links=links,
        circuit_changes=circuit_changes,
        waiters=Waiters(_final_listener(settings.database_url) if postgres else None),
        announcer=FinalAnnouncer(engine) if postgres else None,
        fleet_circuits=fleet,
    )
    try:
        yield runtime
    finally:
        await runtime.waiters.aclose()
        if runtime.announcer is not None:
            await runtime.announcer.aclose(ANNOUNCE_GRACE)
        for channel in channels.values():
            await channel.aclose()
        await http.aclose()
        if "intake" in vars(runtime):  # made (cached_property) by the first accept, if any
            await runtime.intake.close()
        await engine.dispose()
