"""Dedup and digest pieces with no I/O: the count mark, a digest's lines and message, the group
key, and the config's bounds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app.channels.base import Recipient
from app.dedup import (
    DIGEST_ITEM_LIMIT,
    DedupConfig,
    DigestConfig,
    digest_key,
    digest_line,
    digest_message,
    marked,
)
from app.domain import DedupMode

TIMES = "\N{MULTIPLICATION SIGN}"


def test_a_collapsed_notification_is_marked_with_its_count() -> None:
    assert marked("Disk full", 50) == f"Disk full ({TIMES}50)"
    assert marked("Disk full", 1) == "Disk full"
    assert marked(None, 50) is None


def test_a_digest_line_is_one_bounded_line() -> None:
    assert digest_line("Job", "done", 1) == "- Job: done"
    assert digest_line(None, "done", 3) == f"- done ({TIMES}3)"
    assert digest_line(None, None, 1) == "- (no text)"
    long = digest_line("S", "word\n" * 1000, 1)
    assert "\n" not in long and len(long) == len("- ") + DIGEST_ITEM_LIMIT
    assert long.endswith("…")


def test_a_digest_message_counts_lists_and_takes_the_worst_severity() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    digest_id = uuid.uuid4()
    items = [
        (ids[0], "a", "one", "info", 1),
        (ids[1], "b", "two", "critical", 1),
        (ids[2], None, "three", "warning", 2),
    ]
    created = datetime(2026, 12, 4, tzinfo=UTC)
    message = digest_message(digest_id, "daily", Recipient(), items, created)
    assert message.id == digest_id
    assert message.subject == "3 notifications (daily)"
    assert message.text == f"- a: one\n- b: two\n- three ({TIMES}2)"
    assert message.severity == "critical"
    assert message.metadata["herald:digest"] == {
        "id": str(digest_id),
        "count": 3,
        "notifications": [str(i) for i in ids],
    }


def test_a_digest_group_is_one_api_key_route_and_recipient() -> None:
    one = digest_key("alpha", "daily", {"email": "a@example.com"})
    assert one == digest_key("alpha", "daily", {"email": "a@example.com"})
    assert len(one) == 64
    others = {
        digest_key("beta", "daily", {"email": "a@example.com"}),
        digest_key("alpha", "weekly", {"email": "a@example.com"}),
        digest_key("alpha", "daily", {"email": "b@example.com"}),
        digest_key(None, "daily", {"email": "a@example.com"}),
    }
    assert one not in others and len(others) == 4


def test_the_config_bounds() -> None:
    assert DedupConfig.model_validate({"window": "10m"}).mode is DedupMode.DROP
    assert DedupConfig.model_validate({"window": "10m", "mode": "collapse"}).window == 600
    assert DigestConfig.model_validate({"window": "1h"}).max_items == 50
    for bad in ({"window": 0}, {"window": "8d"}, {"window": "1m", "mode": "merge"}):
        with pytest.raises(ValidationError):
            DedupConfig.model_validate(bad)
    for bad in ({"window": "1h", "max_items": 1}, {"window": "1h", "max_items": 201}):
        with pytest.raises(ValidationError):
            DigestConfig.model_validate(bad)
