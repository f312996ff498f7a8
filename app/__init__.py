"""Herald: a standalone HTTP notification service with ordered fallback delivery."""

from __future__ import annotations

__version__ = "0.1.0"
