"""Bounded retries (G3) with a real worker: transient failures retried, permanent ones not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import states

from celery_reliable import PermanentError
from tests.harness import dead_records, wait_for
from tests.shopfixture import Shop


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_three_transient_failures_then_success_runs_the_effect_once(
    make_shop: Callable[..., Shop], broker: str
) -> None:
    shop = make_shop(broker)
    handle = shop.task("flaky_send").delay(1, 3)
    with shop.worker():
        assert handle.get(timeout=60) == 4  # the fourth attempt succeeded
    assert handle.state == states.SUCCESS
    assert shop.counter.get("start", 1) == 4
    assert shop.counter.get("effect", 1) == 1
    assert shop.store.pending_count() == 0


def test_permanent_error_is_not_retried(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("redis")
    handle = shop.task("reject_input").delay(2)
    with shop.worker():
        with pytest.raises(PermanentError, match="no e-mail address"):
            handle.get(timeout=30)
        wait_for(lambda: bool(dead_records(shop.store)), 10, "the dead letter")
    [letter] = dead_records(shop.store)
    assert letter.task_id == handle.id and letter.reason == "permanent_error"
    assert shop.counter.get("start", 2) == 1
    assert shop.store.get_key("reject:2") is None  # released, so a replay can run
