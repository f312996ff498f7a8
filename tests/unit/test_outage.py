"""How a loop waiting out a database outage backs off and what it logs."""

from __future__ import annotations

import logging

import pytest

from app.delivery.outage import Outage


def test_the_cause_once_a_short_line_per_step_and_one_line_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.outage")
    outage = Outage(logger, first=0.5, cap=4.0)
    refused = ConnectionRefusedError("connection refused\n(a second line)")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        waits = [outage.failed(refused) for _ in range(5)]
        outage.failed(OSError("no route to host"))
        outage.recovered()
        outage.recovered()
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable: connection refused; retrying in 0.5s",
        "database still unavailable; retrying in 1s",
        "database still unavailable; retrying in 2s",
        "database still unavailable; retrying in 4s",
        "database still unavailable; retrying in 4s",
        "database still unavailable, now: no route to host; retrying in 4s",
        "database reachable again after 0s",
    ]
    assert not any(r.exc_info for r in caplog.records)  # tracebacks are for DEBUG
    assert outage.failed(refused) == 0.5  # a new outage starts from the first wait again


def test_the_traceback_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(logging.getLogger("test.outage"), step_level=logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger="test.outage"):
        outage.failed(ConnectionRefusedError("refused"))
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [
        (logging.WARNING, False),
        (logging.DEBUG, True),
    ]
