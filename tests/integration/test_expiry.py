"""Expired tasks are dead-lettered with reason 'expired', never dropped silently."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from celery import states

from tests.harness import dead_records, wait_for
from tests.shopfixture import Shop


def test_task_published_past_its_deadline_is_dead_lettered(
    make_shop: Callable[..., Shop],
) -> None:
    shop = make_shop("redis")
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    handle = shop.task("send_receipt").apply_async((5,), expires=past)
    with shop.worker():
        wait_for(lambda: bool(dead_records(shop.store)), 30, "the dead letter")
    [letter] = dead_records(shop.store)
    assert letter.task_id == handle.id and letter.reason == "expired"
    assert handle.state == states.REVOKED
    assert shop.counter.get("start", 5) == 0
    assert shop.store.pending_count() == 0
    assert shop.store.get_key("receipt:5") is None  # a new publish runs
