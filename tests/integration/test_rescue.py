"""Nothing lost even when the broker loses it (issue 11): persist on publish + rescue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import wait_for
from tests.servers import REDIS, PrivateRedis, free_port
from tests.shopfixture import Shop


@pytest.fixture
def broker_redis() -> Iterator[PrivateRedis]:
    """A Redis broker of this test's own (requested before ``make_shop``, so it still
    runs while the shop's teardown deletes its queues)."""
    REDIS.require()  # the store and the counters are on the shared Redis
    server = PrivateRedis(free_port()).start()
    yield server
    server.stop()


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


def test_a_redis_broker_restarted_without_persistence_loses_nothing(
    broker_redis: PrivateRedis, make_shop: Callable[..., Shop],
) -> None:
    """A real restart, not a queue purge: the broker process is SIGKILLed with 20 tasks
    queued and started again empty, as a Redis without persistence comes back. The task
    records in the store (another Redis) are what brings the tasks back."""
    shop = make_shop("redis", "redis", TEST_BROKER_URL=f"{broker_redis.url}/0",
                     TEST_RESCUE_AFTER="2")
    task = shop.task("send_receipt")
    handles = [task.delay(n) for n in range(20)]
    queue = shop.env["TEST_QUEUE"]
    assert shop.queue_length(queue) == 20
    broker_redis.restart()
    assert shop.queue_length(queue) == 0  # the restart emptied it
    assert shop.store.pending_count() == 20
    with shop.worker():
        wait_for(lambda: shop.counter.total("effect") == 20, 60, "all 20 to be rescued")
        assert [h.get(timeout=30)["order"] for h in handles] == list(range(20))
        wait_for(lambda: shop.store.pending_count() == 0, 30, "the records to clear")
    assert all(shop.counter.get("effect", n) == 1 for n in range(20))
