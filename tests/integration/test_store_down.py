"""A store that is down fails closed (G6): the body waits, nothing is lost or run twice."""

from __future__ import annotations

from collections.abc import Callable

from celery_reliable.runtime import runtime
from tests.harness import wait_for
from tests.servers import free_port, private_redis
from tests.shopfixture import Shop


def test_claim_with_store_down_defers_then_runs_once(make_shop: Callable[..., Shop]) -> None:
    port = free_port()
    shop = make_shop("redis", TEST_STORE_URL=f"redis://127.0.0.1:{port}/0")
    with private_redis(port):
        handle = shop.task("send_receipt").delay(1)
    with shop.worker():
        # The worker cannot claim: the task is deferred (state RETRY), the body not run.
        wait_for(lambda: handle.state == "RETRY", 30, "the task to be deferred")
        assert shop.counter.get("start", 1) == 0
        with private_redis(port):
            wait_for(lambda: shop.counter.get("effect", 1) == 1, 30, "the task to run")
            assert handle.get(timeout=10) == {"order": 1, "key": "receipt:1"}
    assert shop.counter.get("start", 1) == 1
    assert runtime(shop.app).counters["store_error"] == 0  # the producer saw the store up


def test_state_store_down_loses_no_task(make_shop: Callable[..., Shop]) -> None:
    port = free_port()
    shop = make_shop("redis", TEST_STATE_STORE_URL=f"redis://127.0.0.1:{port}/0")
    task = shop.task("send_receipt")
    with private_redis(port):
        handles = [task.delay(n) for n in range(10)]
    # The state store is gone for the whole run: every task still completes, once.
    with shop.worker() as worker:
        assert [h.get(timeout=60)["order"] for h in handles] == list(range(10))
        wait_for(lambda: "could not record task states" in worker.output(), 15,
                 "the gap in the history to be logged")
    assert all(shop.counter.get("effect", n) == 1 for n in range(10))
    assert shop.store.pending_count() == 0
