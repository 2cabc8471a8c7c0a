"""Nothing lost even when the broker loses it (issue 11): persist on publish + rescue."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.harness import wait_for
from tests.shopfixture import Shop


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_queue_lost_after_publish_is_rescued(make_shop: Callable[..., Shop], broker: str) -> None:
    shop = make_shop(broker, "redis", TEST_RESCUE_AFTER="2")
    task = shop.task("send_receipt")
    handles = [task.delay(n) for n in range(50)]
    shop.drop_queue()
    assert shop.store.pending_count() == 50
    with shop.worker(pool="prefork", concurrency=2):
        wait_for(lambda: shop.counter.total("effect") == 50, 90, "all 50 to be rescued")
        assert [h.get(timeout=30)["order"] for h in handles] == list(range(50))
        wait_for(lambda: shop.store.pending_count() == 0, 30, "the records to clear")
    assert all(shop.counter.get("effect", n) == 1 for n in range(50))


def test_long_task_is_never_rescued_while_its_worker_lives(
    make_shop: Callable[..., Shop],
) -> None:
    shop = make_shop("redis", "redis", TEST_LEASE="2", TEST_RESCUE_AFTER="1")
    handle = shop.task("slow_effect").delay(4, 6.0)  # three leases long
    with shop.worker():
        wait_for(lambda: shop.counter.get("start", 4) == 1, 30, "the body to start")
        while shop.counter.get("effect", 4) == 0:
            record = shop.store.get_record(handle.id, "slow:4")
            if record is not None:  # deleted at completion
                assert record.state == "running" and record.rescues == 0, record
            time.sleep(0.1)
        assert handle.get(timeout=10) == 1
    assert shop.counter.get("start", 4) == 1
