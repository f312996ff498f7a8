"""Fixtures of the ops tests (defined in ``tests.ops.support``)."""

from tests.ops.support import herald_process, sink

__all__ = ["herald_process", "sink"]
