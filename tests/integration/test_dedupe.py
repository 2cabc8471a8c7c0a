"""Effectively once (G2) with real workers on real brokers."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from celery_reliable.runtime import runtime
from tests.shopfixture import Shop

BROKERS = ["redis", "rabbitmq"]


@pytest.mark.parametrize("broker", BROKERS)
def test_same_key_twenty_times_publishes_once(make_shop: Callable[..., Shop], broker: str) -> None:
    shop = make_shop(broker)
    task = shop.task("send_receipt")
    handles = [task.delay(1) for _ in range(20)]
    assert len({h.id for h in handles}) == 1  # 19 answered by the producer-side check
    assert runtime(shop.app).counters["deduplicated_on_publish"] == 19
    with shop.worker():
        results = [h.get(timeout=30) for h in handles]
    assert results == [{"order": 1, "key": "receipt:1"}] * 20
    assert shop.counter.get("effect", 1) == 1
    assert shop.counter.get("start", 1) == 1


@pytest.mark.parametrize("broker, pool", [(b, "prefork") for b in BROKERS] + [("redis", "solo")])
def test_twenty_copies_reach_workers_and_run_once(
    make_shop: Callable[..., Shop], broker: str, pool: str
) -> None:
    # solo: each copy is claimed as its message arrives (worker/claim_ahead.py)
    shop = make_shop(broker)
    task = shop.task("send_receipt_consumer_dedupe")
    handles = [task.apply_async((2,), {"hold": 0.3}) for _ in range(20)]
    assert len({h.id for h in handles}) == 20  # every copy is its own message
    with shop.worker(pool=pool, concurrency=4 if pool == "prefork" else 1):
        results = [h.get(timeout=60) for h in handles]
    assert results == [{"order": 2, "key": "receipt:2"}] * 20
    assert shop.counter.get("start", 2) == 1
    assert shop.counter.get("effect", 2) == 1


def test_canvas_with_duplicate_members_completes_and_runs_each_key_once(
    make_shop: Callable[..., Shop],
) -> None:
    from celery import chain, chord, group

    shop = make_shop("redis")
    task = shop.task("send_receipt")
    first = task.delay(7)
    # Canvas freezes its members' ids before publishing: each gets its message, and
    # the claim, not the producer, answers the duplicates (with the first result).
    members = group(task.s(7), task.s(8), task.s(8)).apply_async()
    assert len({r.id for r in members.results} | {first.id}) == 4
    with shop.worker(pool="prefork", concurrency=2):
        assert members.get(timeout=30) == [
            {"order": 7, "key": "receipt:7"}, {"order": 8, "key": "receipt:8"},
            {"order": 8, "key": "receipt:8"},
        ]
        chained = chain(task.si(9), task.si(9)).apply_async()
        assert chained.get(timeout=30) == {"order": 9, "key": "receipt:9"}
        assert first.get(timeout=30) == {"order": 7, "key": "receipt:7"}
        # two processes take the two copies at once: one runs, the other is deferred
        # until it is done, then skipped with its result; the callback fires once both are
        both = chord([task.s(10, hold=1.0), task.s(10, hold=1.0)], shop.task("orders_of").s())
        assert both.apply_async().get(timeout=60) == [10, 10]
    for order in (7, 8, 9, 10):
        assert shop.counter.get("effect", order) == 1, f"order {order}"


def test_two_workers_two_copies_at_once_never_both(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("redis")
    task = shop.task("send_receipt_consumer_dedupe")
    with shop.worker(), shop.worker():
        handles = []
        for order in range(10):
            handles += [task.apply_async((order,), {"hold": 0.5}) for _ in range(2)]
        results = [h.get(timeout=60) for h in handles]
    for order in range(10):
        assert shop.counter.get("start", order) == 1, f"order {order} ran twice"
        assert results[2 * order] == results[2 * order + 1]


def test_per_call_key_travels_in_headers_over_rabbitmq(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("rabbitmq")
    task = shop.task("send_receipt_consumer_dedupe")
    key = f"manual-{uuid.uuid4().hex}"
    handles = [task.apply_async((n,), idempotency_key=key) for n in (3, 3)]
    with shop.worker():
        results = [h.get(timeout=30) for h in handles]
    assert results[0]["key"] == key == results[1]["key"]
    assert shop.counter.get("effect", 3) == 1


def test_a_task_with_a_countdown_is_not_claimed_while_it_waits(
    make_shop: Callable[..., Shop],
) -> None:
    # A solo worker claims tasks as their messages arrive, but not one Celery holds
    # on its timer: until the countdown ends the key stays queued, so nothing looks
    # running and no lease runs out while it waits.
    import time

    shop = make_shop("redis")
    task = shop.task("send_receipt_consumer_dedupe")
    with shop.worker():
        handle = task.apply_async((3,), countdown=4)
        seen = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            state = shop.store.get_key("receipt:3")
            seen.add(state.state if state is not None else None)
            time.sleep(0.05)
        assert handle.get(timeout=30) == {"order": 3, "key": "receipt:3"}
    assert seen == {"queued"}
    assert shop.counter.get("effect", 3) == 1
