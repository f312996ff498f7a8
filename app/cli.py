"""``herald``: serve | worker | events | ingest | migrate | check-config | openapi."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from app import __version__, logs
from app.channels.registry import ChannelRegistry, DuplicateChannelType, default_registry
from app.config import ConfigError, HeraldConfig, Settings, listing, load_config
from app.store.db import normalize_database_url

if TYPE_CHECKING:
    from app.runtime import Runtime

logger = logging.getLogger("herald")


def _fail(message: str, code: int = 2) -> int:
    print(f"herald: {message}", file=sys.stderr)
    return code


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"HERALD_{'_'.join(str(p) for p in e['loc']).upper()}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise SystemExit(_fail(listing("invalid environment", lines))) from None


def _registry() -> ChannelRegistry:
    try:
        return default_registry()
    except (DuplicateChannelType, TypeError) as exc:
        raise SystemExit(_fail(str(exc))) from None


def _config(path: str | None, registry: ChannelRegistry, *, code: int = 2) -> HeraldConfig:
    """The config at ``path`` (the option, else ``HERALD_CONFIG``); its problems end the
    command, one line each, with exit status ``code``."""
    if not path:
        raise SystemExit(_fail("no config file: pass --config PATH or set HERALD_CONFIG", code))
    try:
        return load_config(path, registry)
    except ConfigError as exc:
        raise SystemExit(_fail(str(exc), code)) from None


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (bracketed or IPv4-mapped forms too)."""
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # any other name may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def bind_refusal(host: str, config: HeraldConfig) -> str | None:
    """Why ``herald serve`` must not bind ``host`` with this config, or ``None`` if it may.

    With no API keys auth is off, so anyone who can reach the port could send notifications
    through every channel and read every message: only loopback is allowed then.
    """
    if config.auth.api_keys or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host}: no API keys are configured, so authentication is off "
        "and anyone who can reach this address could send notifications through your channels "
        "and read every message. Either bind a loopback address (--host 127.0.0.1) or "
        "configure auth.api_keys in herald.yaml, for example:\n"
        "  auth:\n"
        "    api_keys:\n"
        '      - {name: backend, key: "${HERALD_API_KEY}", scopes: [send, read]}'
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = _settings()
    registry = _registry()
    config = _config(args.config or settings.config, registry)
    host = args.host or settings.host
    refusal = bind_refusal(host, config)
    if refusal is not None:
        return _fail(refusal)
    logs.configure(settings.log_level, settings.log_format)
    port = args.port if args.port is not None else settings.port
    ingest = not args.no_ingest and bool(config.ingest.streams) and config.ingest.serve
    app = create_app(settings, config, registry, run_worker=not args.no_worker, run_ingest=ingest)
    logger.info(
        "herald %s serving on http://%s:%d (%s, delivery loop %s, ingest %s)",
        __version__,
        host,
        port,
        _database_kind(settings.database_url),
        "off" if args.no_worker else "on",
        "on" if ingest else "off",
    )

    class Server(uvicorn.Server):
        """Graceful on the first SIGTERM/SIGINT (exit 0 once drained), immediate on a second.

        uvicorn would re-raise the signal after shutting down, ending the process with -15
        instead of the 0 that process supervisors expect from a clean stop.
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:
                logger.warning("second %s: exiting at once", signal.Signals(sig).name)
                os._exit(1)
            logger.info("%s: draining, then stopping", signal.Signals(sig).name)
            self.should_exit = True

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """Answer the requests waiting for a final state (``?wait=``) now: the drain
            would otherwise last as long as the longest of them."""
            runtime: Runtime | None = getattr(app.state, "runtime", None)
            if runtime is not None:
                runtime.waiters.stop_waiting()
            await super().shutdown(sockets)

    server = Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
        )
    )
    server.run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app.loops import delivery_loops

    def loops(runtime: Runtime, stop: asyncio.Event) -> list[Awaitable[None]]:
        return delivery_loops(runtime, stop, events=not args.no_events)

    return _run_loops(args, "worker", loops)


def cmd_events(args: argparse.Namespace) -> int:
    from app.events.dispatcher import OWN_PROCESS_CONCURRENCY, Dispatcher

    def loops(runtime: Runtime, stop: asyncio.Event) -> list[Awaitable[None]]:
        return [Dispatcher(runtime, concurrency=OWN_PROCESS_CONCURRENCY).run(stop)]

    return _run_loops(args, "events", loops, refuse=_nothing_to_dispatch)


def _nothing_to_dispatch(config: HeraldConfig) -> str | None:
    if config.events.subscriptions or config.events.callback is not None:
        return None
    return (
        "nothing to dispatch: the config has no events.subscriptions and no events.callback_secret"
    )


INGEST_GC_YOUNG = 20_000
"""``herald ingest``'s threshold for the youngest generation of the garbage collector
(``settle_heap``)."""


def cmd_ingest(args: argparse.Namespace) -> int:
    def loops(runtime: Runtime, stop: asyncio.Event) -> list[Awaitable[None]]:
        from app.ingest.consumer import Ingest  # the worker needs none of the API's

        return [Ingest(runtime).run(stop)]

    return _run_loops(args, "ingest", loops, refuse=_nothing_to_ingest, young=INGEST_GC_YOUNG)


def _nothing_to_ingest(config: HeraldConfig) -> str | None:
    if config.ingest.streams:
        return None
    return "nothing to ingest: the config has no ingest.streams (see examples/herald.yaml)"


def _run_loops(
    args: argparse.Namespace,
    role: str,
    loops: Callable[[Runtime, asyncio.Event], list[Awaitable[None]]],
    *,
    refuse: Callable[[HeraldConfig], str | None] | None = None,
    young: int | None = None,
) -> int:
    """Run ``loops`` (``herald worker``, ``herald events``, ``herald ingest``) until SIGTERM or
    SIGINT, with ``--metrics-port`` served, in one runtime; exit 0 once they stopped. ``refuse``
    says why the config gives the command nothing to do, if it does not; ``young`` is
    ``settle_heap``'s."""
    from app.runtime import open_runtime, settle_heap

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    registry = _registry()
    config = _config(args.config or settings.config, registry)
    refusal = refuse(config) if refuse is not None else None
    if refusal is not None:
        return _fail(refusal)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from app.metrics import REGISTRY

        try:
            start_http_server(args.metrics_port, addr=args.metrics_host, registry=REGISTRY)
        except OSError as exc:
            return _fail(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}")
        logger.info(
            "%s metrics on http://%s:%d/metrics", role, args.metrics_host, args.metrics_port
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                logger.warning("second %s: exiting at once", signal.Signals(signum).name)
                os._exit(1)
            logger.info("%s: finishing what is in flight", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        async with open_runtime(settings, config, registry) as runtime:
            settle_heap(young)
            await asyncio.gather(*loops(runtime, stop))

    asyncio.run(run())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.store.migrate import head_revision, upgrade

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        url = normalize_database_url(args.database_url or settings.database_url)
    except ValueError as exc:
        return _fail(f"--database-url: {exc}")
    try:
        upgrade(url)
    except Exception as exc:
        return _fail(f"migration failed on {_database_kind(url)}: {exc}", 1)
    print(f"database ({_database_kind(url)}) is at migration {head_revision()}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    registry = _registry()
    path = args.file or _settings().config
    config = _config(path, registry, code=1)
    print(
        f"{path}: ok ({len(config.channels)} channels, {len(config.routes)} routes, "
        f"{len(config.auth.api_keys)} API keys, {len(config.templates)} templates compiled)"
    )
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from app.main import create_app

    spec = create_app().openapi()
    sys.stdout.write(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100))
    return 0


def _database_kind(url: str) -> str:
    if url.startswith("sqlite"):
        return "SQLite " + (url.split("///", 1)[-1] or ":memory:")
    return "PostgreSQL"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="herald", description="Herald: HTTP notifications with ordered fallback delivery."
    )
    root.add_argument("--version", action="version", version=f"herald {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the API (and, by default, deliver)")
    serve.add_argument("--config", help="herald.yaml (default: $HERALD_CONFIG)")
    serve.add_argument("--host", help="bind address (default: $HERALD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $HERALD_PORT or 8000)")
    serve.add_argument(
        "--no-worker", action="store_true", help="API only; run `herald worker` to deliver"
    )
    serve.add_argument(
        "--no-ingest",
        action="store_true",
        help="do not consume ingest.streams here; run `herald ingest` for them",
    )
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser(
        "worker",
        help="run the delivery loop (and, unless --no-events, the event dispatcher)",
    )
    worker.add_argument(
        "--no-events",
        action="store_true",
        help="delivery loop only; run `herald events` to send events and callbacks",
    )
    _loop_options(worker, "worker")
    worker.set_defaults(func=cmd_worker)

    events = commands.add_parser(
        "events",
        help="run the event dispatcher only (events and callbacks; beside `worker --no-events`)",
    )
    _loop_options(events, "dispatcher")
    events.set_defaults(func=cmd_events)

    ingest = commands.add_parser(
        "ingest", help="consume the configured Redis Streams into notifications"
    )
    _loop_options(ingest, "process")
    ingest.set_defaults(func=cmd_ingest)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--database-url", help="default: $HERALD_DATABASE_URL")
    migrate.set_defaults(func=cmd_migrate)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", nargs="?", help="herald.yaml (default: $HERALD_CONFIG)")
    check.set_defaults(func=cmd_check_config)

    openapi = commands.add_parser("openapi", help="print the OpenAPI spec (openapi.yaml)")
    openapi.set_defaults(func=cmd_openapi)
    return root


def _loop_options(command: argparse.ArgumentParser, role: str) -> None:
    command.add_argument("--config", help="herald.yaml (default: $HERALD_CONFIG)")
    command.add_argument(
        "--metrics-port", type=int, help=f"serve this {role}'s Prometheus metrics on this port"
    )
    command.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (127.0.0.1)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SystemExit as exc:  # a refusal already printed (_fail): its status
        return exc.code if isinstance(exc.code, int) else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
