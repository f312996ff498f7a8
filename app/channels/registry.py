"""The registry of channel types, keyed by type name.

Built-in types register first; third-party packages add theirs through the entry-point group
``herald.channels`` (each entry point names a ``ChannelType`` subclass). A second type with a
name already taken is refused, so one package cannot silently replace another's adapter.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from app.channels.base import ChannelConfig, ChannelType

ENTRY_POINT_GROUP = "herald.channels"

logger = logging.getLogger("herald.channels")


class DuplicateChannelType(Exception):
    """Two channel types claim the same type name."""


class ChannelRegistry:
    def __init__(self) -> None:
        self._types: dict[str, type[ChannelType]] = {}

    def register(self, channel_type: type[ChannelType], *, origin: str = "built-in") -> None:
        name = getattr(channel_type, "type_name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{channel_type!r} has no type_name")
        if not issubclass(getattr(channel_type, "config_model", object), ChannelConfig):
            raise TypeError(f"{channel_type!r}: config_model must subclass ChannelConfig")
        existing = self._types.get(name)
        if existing is not None and existing is not channel_type:
            raise DuplicateChannelType(
                f"channel type {name!r} from {origin} ({channel_type.__module__}) is already "
                f"registered by {existing.__module__}; uninstall one of them"
            )
        self._types[name] = channel_type

    def get(self, name: str) -> type[ChannelType] | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def load_entry_points(self) -> None:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            loaded = entry.load()
            if not (isinstance(loaded, type) and issubclass(loaded, ChannelType)):
                raise TypeError(
                    f"entry point {entry.name!r} in {ENTRY_POINT_GROUP} "
                    f"is not a ChannelType subclass: {loaded!r}"
                )
            self.register(loaded, origin=f"entry point {entry.value}")


def default_registry() -> ChannelRegistry:
    """The built-in channel types plus every installed ``herald.channels`` entry point."""
    from app.channels.apprise import AppriseChannel
    from app.channels.discord import DiscordChannel
    from app.channels.log import LogChannel
    from app.channels.ntfy import NtfyChannel
    from app.channels.slack import SlackChannel
    from app.channels.smtp import SmtpChannel
    from app.channels.telegram import TelegramChannel
    from app.channels.twilio import TwilioChannel
    from app.channels.webhook import WebhookChannel
    from app.channels.whatsapp import WhatsAppChannel

    registry = ChannelRegistry()
    for channel_type in (
        WebhookChannel,
        SmtpChannel,
        LogChannel,
        TelegramChannel,
        TwilioChannel,
        WhatsAppChannel,
        SlackChannel,
        DiscordChannel,
        NtfyChannel,
        AppriseChannel,
    ):
        registry.register(channel_type)
    registry.load_entry_points()
    return registry
