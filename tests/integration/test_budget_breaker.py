"""Retry budgets and circuit breakers (G3) with real workers sharing one store."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.harness import dead_records, wait_for
from tests.shopfixture import Shop

N = 40


def test_retry_storm_stays_within_the_budget(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop(
        "redis", TEST_BUDGET_RATIO="0.2", TEST_BUDGET_FLOOR="0.1",
        TEST_BUDGET_EXHAUSTED="dead_letter", TEST_BACKOFF="0.3",
    )
    task = shop.task("always_failing")
    handles = [task.delay(n) for n in range(N)]
    started = time.monotonic()
    with shop.worker(), shop.worker():  # two workers share the budget
        wait_for(lambda: len(dead_records(shop.store, limit=1000)) == N, 90,
                 "every task to end dead-lettered")
    elapsed = time.monotonic() - started
    retries = shop.counter.total("start") - N
    budget = 0.2 * N + 0.1 * 10 * max(1.0, elapsed / 10)
    assert 0 < retries <= budget, f"{retries} retries for a budget of {budget:.1f}"
    reasons = {letter.reason for letter in dead_records(shop.store, limit=1000)}
    assert reasons <= {"retry_budget_exhausted", "attempts_exhausted"}
    assert "retry_budget_exhausted" in reasons
    assert {h.id for h in handles} == {r.task_id for r in dead_records(shop.store, limit=1000)}
    assert shop.store.pending_count() == 0


def test_breaker_opens_defers_and_closes_when_the_dependency_recovers(
    make_shop: Callable[..., Shop],
) -> None:
    shop = make_shop(
        "redis", TEST_BREAKER_THRESHOLD="3", TEST_BREAKER_COOL_DOWN="1.5", TEST_BACKOFF="0.2",
        TEST_BUDGET_FLOOR="100",
    )
    down = f"{shop.env['TEST_PREFIX']}:smtp_down"
    shop.counter.client.set(down, 1)
    task = shop.task("call_smtp")
    handles = [task.delay(n) for n in range(20)]
    with shop.worker():
        wait_for(lambda: shop.store.breaker_check("smtp", "test", 0.001).state != "closed",
                 30, "the breaker to open")
        time.sleep(4)  # the outage goes on: the breaker holds the tasks back
        failed_during_outage = shop.counter.total("start")
        shop.counter.client.delete(down)
        results = [h.get(timeout=60) for h in handles]
    assert results == [1] * 20  # every task succeeded, its effect counted once
    assert all(shop.counter.get("effect", n) == 1 for n in range(20))
    # Without the breaker every task would have failed at least once; with it, the
    # threshold plus about one probe per cool-down reached the dependency.
    assert failed_during_outage <= 3 + 4, failed_during_outage
    assert shop.store.breaker_check("smtp", "test", 0.001).state == "closed"
