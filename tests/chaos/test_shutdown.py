"""Warm shutdown (SIGTERM) mid-batch loses nothing and runs nothing twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import wait_for
from tests.shopfixture import Shop

pytestmark = pytest.mark.chaos

N = 20


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_sigterm_mid_batch_loses_nothing(make_shop: Callable[..., Shop], broker: str) -> None:
    shop = make_shop(broker)
    task = shop.task("send_receipt")
    handles = [task.delay(n, 0.4) for n in range(N)]
    first = shop.new_worker(pool="prefork", concurrency=2).start()
    wait_for(lambda: shop.counter.total("start") >= 4, 60, "a few tasks to start")
    first.stop(timeout=60)  # SIGTERM: running bodies finish, the rest goes back
    assert shop.counter.total("effect") < N, "the batch finished before the shutdown"
    with shop.worker(pool="prefork", concurrency=2):
        wait_for(lambda: shop.counter.total("effect") == N, 90, "every task to complete")
        assert [h.get(timeout=30)["order"] for h in handles] == list(range(N))
    assert all(shop.counter.get("effect", n) == 1 for n in range(N))
    assert shop.store.pending_count() == 0
