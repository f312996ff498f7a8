"""``log``: writes the notification to Herald's own log. Always delivers.

Useful as a last hop that never fails, and for trying Herald with no provider credentials.
"""

from __future__ import annotations

import logging
from typing import Literal

from app.channels.base import ChannelConfig, ChannelType, DeliveryResult, Message
from app.channels.text import clip

logger = logging.getLogger("herald.channel.log")

BODY_LIMIT = 500
"""Characters of the body on the log line."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class LogConfig(ChannelConfig):
    type: Literal["log"]
    level: Literal["severity", "debug", "info", "warning", "error", "critical"] = "severity"
    """Log level of the line; ``severity`` follows the notification's severity."""


class LogChannel(ChannelType):
    type_name = "log"
    config_model = LogConfig
    config: LogConfig

    async def send(self, message: Message) -> DeliveryResult:
        level = message.severity if self.config.level == "severity" else self.config.level
        body = message.plain_text()
        logger.log(
            _LEVELS.get(level, logging.INFO),
            "notification %s [%s] %s: %s",
            message.id,
            message.severity,
            message.subject or "(no subject)",
            clip(body, BODY_LIMIT),
            extra={"notification_id": str(message.id), "channel": self.name},
        )
        return DeliveryResult.ok(provider_message_id=str(message.id))
