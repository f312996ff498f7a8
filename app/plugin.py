"""The channel-type API for plugins: everything a third-party channel type imports, in one place.

A plugin imports from ``app.plugin`` only; the modules these names come from are internal and
may move. Register the class under the ``herald.channels`` entry-point group (README, "Writing a
channel type").
"""

from __future__ import annotations

from app.channels.base import (
    ChannelConfig,
    ChannelContext,
    ChannelType,
    DeliveryError,
    DeliveryResult,
    Duration,
    ErrorClass,
    Message,
    Recipient,
)
from app.channels.http_errors import (
    failure_from_response,
    failure_from_transport,
    retry_after_seconds,
)

__all__ = [
    "ChannelConfig",
    "ChannelContext",
    "ChannelType",
    "DeliveryError",
    "DeliveryResult",
    "Duration",
    "ErrorClass",
    "Message",
    "Recipient",
    "failure_from_response",
    "failure_from_transport",
    "retry_after_seconds",
]
