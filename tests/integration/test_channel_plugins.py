"""Third-party channel types through the ``herald.channels`` entry-point group, and rate limits."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
from pathlib import Path
from typing import Literal

import pytest

from app.channels.base import ChannelConfig, ChannelContext, ChannelType, DeliveryResult, Message
from app.channels.registry import DuplicateChannelType, default_registry
from app.cli import main
from tests.support.harness import herald
from tests.support.http_server import serve_http

PLUGIN = """
from typing import Literal

from app.plugin import ChannelConfig, ChannelType, DeliveryResult, Message


class EchoConfig(ChannelConfig):
    type: Literal["echo"]
    prefix: str = "echo"


class EchoChannel(ChannelType):
    type_name = "echo"
    config_model = EchoConfig
    sent: list[str] = []

    async def send(self, message: Message) -> DeliveryResult:
        EchoChannel.sent.append(f"{self.config.prefix}: {message.plain_text()}")
        return DeliveryResult.ok(provider_message_id=f"echo-{len(EchoChannel.sent)}")


class FakeWebhook(EchoChannel):
    type_name = "webhook"
"""


def install_plugin(
    root: Path, entry: str, package: str = "herald_echo", code: str = PLUGIN
) -> None:
    """A real installed distribution: a package and its dist-info on sys.path."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(code))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    name = package.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[herald.channels]\n{entry}\n")


def readme_plugin() -> str:
    """The channel type that README's "Writing a channel type" shows, as written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"```python\n# herald_pager/__init__.py\n(.*?)```", readme, re.DOTALL)
    assert match, "README no longer shows herald_pager/__init__.py"
    return match.group(1)


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys

    for name in [m for m in sys.modules if m.startswith(("herald_echo", "herald_pager"))]:
        del sys.modules[name]


async def test_an_entry_point_channel_type_delivers(db_url: str, plugin_path: Path) -> None:
    install_plugin(plugin_path, "echo = herald_echo:EchoChannel")
    registry = default_registry()
    assert "echo" in registry.names()
    config = {
        "channels": {"shout": {"type": "echo", "prefix": "HEY"}},
        "routes": {"default": {"channels": ["shout"]}},
    }
    async with herald(db_url, config, registry=registry) as h:
        created = await h.send(text="plugged in")
        await h.run_worker()
        body = await h.get(created["id"])
        assert body["status"] == "delivered"
        (attempt,) = await h.attempts(created["id"])
        assert attempt["channel_type"] == "echo"
        assert attempt["provider_message_id"].startswith("echo-")
    channel_type = registry.get("echo")
    assert channel_type is not None
    assert "HEY: plugged in" in channel_type.sent  # type: ignore[attr-defined]


async def test_the_readme_plugin_delivers_through_the_documented_import_path(
    db_url: str, plugin_path: Path
) -> None:
    """README's example imports only ``app.plugin``; installed, it pages through a real server."""
    code = readme_plugin()
    assert re.findall(r"^from app[.\w]* import", code, re.MULTILINE) == ["from app.plugin import"]
    install_plugin(plugin_path, "pager = herald_pager:PagerChannel", "herald_pager", code)
    registry = default_registry()
    async with serve_http() as pager:
        pager.script("/v1/pages", (200, {}, {"id": "page-7"}))
        config = {
            "channels": {"oncall": {"type": "pager", "api_base": pager.base_url, "token": "t0k"}},
            "routes": {"default": {"channels": ["oncall"]}},
        }
        async with herald(db_url, config, registry=registry) as h:
            created = await h.send(text="db-1 down", recipient={"phone": "+15551234567"})
            await h.run_worker()
            assert (await h.get(created["id"]))["status"] == "delivered"
            (attempt,) = await h.attempts(created["id"])
        (request,) = pager.requests_to("/v1/pages")
    assert attempt["provider_message_id"] == "page-7"
    assert request.json() == {"to": "+15551234567", "text": "db-1 down"}
    assert request.headers["authorization"] == "Bearer t0k"


def test_an_entry_point_reusing_a_type_name_is_refused(
    plugin_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_plugin(plugin_path, "webhook = herald_echo:FakeWebhook")
    with pytest.raises(DuplicateChannelType, match=r"'webhook'.*already registered"):
        default_registry()
    config = tmp_path / "herald.yaml"
    config.write_text("channels: {}\n")
    assert main(["check-config", str(config)]) == 2
    assert "already registered" in capsys.readouterr().err


class StampConfig(ChannelConfig):
    type: Literal["stamp"] = "stamp"


class StampChannel(ChannelType):
    """Notes when each send began, on the clock the rate limiter waits on."""

    type_name = "stamp"
    config_model = StampConfig

    def __init__(self, name: str, config: ChannelConfig, context: ChannelContext) -> None:
        super().__init__(name, config, context)
        self.began: list[float] = []

    async def send(self, message: Message) -> DeliveryResult:
        self.began.append(self.context.clock.monotonic())
        await asyncio.sleep(0.01)  # a provider call: the others go on meanwhile
        return DeliveryResult.ok()


async def test_rate_limit_spaces_deliveries_on_the_clock(db_url: str) -> None:
    """Six messages through a 2/s channel, eight at once: no second sees more than two. The
    limiter waits on the test's clock, which moves on at once: the spacing costs no real time."""
    config = {
        "channels": {"slow": {"type": "stamp", "rate_limit": "2/s", "timeout": "5s"}},
        "routes": {"default": {"channels": ["slow"]}},
    }
    registry = default_registry()
    registry.register(StampChannel)
    async with herald(db_url, config, registry=registry, worker_concurrency=8) as h:
        for i in range(6):
            await h.send(text=f"n{i}")
        began = time.monotonic()
        assert await h.run_worker() == 6
        took = time.monotonic() - began
        channel = h.runtime.channels["slow"]
        assert isinstance(channel, StampChannel)
        sends = sorted(channel.began)
    assert len(sends) == 6
    # Any three consecutive sends span at least a second of the limiter's clock. A stamp is
    # read after its admission, by the real time the event loop takes to get to it: on a
    # loaded machine the first of three was seen stamped 6 ms late (0.994 s apart), so 20 ms of
    # slack; without the limit the three would be microseconds apart.
    gaps = [sends[i + 2] - sends[i] for i in range(4)]
    assert min(gaps) >= 0.98, gaps
    assert sends[-1] - sends[0] >= 1.98
    assert sum(h.clock.slept) > 1.9, h.clock.slept  # the waits went through the clock
    assert took < 1.0, "the limiter's waits took no real time"
