"""Repeated work runs every time it should: without a declared key, one publish is one
outcome; the same arguments are the same outcome only when the task opts in."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_reliable.runtime import runtime
from tests.harness import wait_for
from tests.shopfixture import Shop

BROKERS = ["redis", "rabbitmq"]


@pytest.mark.parametrize("broker", BROKERS)
def test_a_second_call_with_the_same_arguments_runs_again(
    make_shop: Callable[..., Shop], broker: str
) -> None:
    shop = make_shop(broker)
    refresh = shop.task("refresh")
    with shop.worker():
        first = refresh.delay(7)
        assert first.get(timeout=30) == 1
        second = refresh.delay(7)  # after the first completed: a deliberate second call
        assert second.id != first.id
        assert second.get(timeout=30) == 2
    assert shop.counter.get("effect", 7) == 2
    assert runtime(shop.app).counters["deduplicated_on_publish"] == 0


def test_a_copy_of_one_publish_is_still_skipped(make_shop: Callable[..., Shop]) -> None:
    """Canvas and callers that re-send a frozen id send copies of one publish."""
    shop = make_shop("redis")
    refresh = shop.task("refresh")
    with shop.worker():
        first = refresh.delay(8)
        assert first.get(timeout=30) == 1
        again = refresh.apply_async((8,), task_id=first.id)
        assert again.get(timeout=30) == 1  # skipped: the first run's result
    assert shop.counter.get("effect", 8) == 1


def test_twenty_publishes_of_opted_in_argument_keys_have_one_effect(
    make_shop: Callable[..., Shop],
) -> None:
    shop = make_shop("redis")
    unique = shop.task("refresh_unique")
    handles = [unique.delay(3) for _ in range(20)]
    assert len({h.id for h in handles}) == 1  # answered at the source: a declared key
    with shop.worker(pool="prefork", concurrency=2):
        assert [h.get(timeout=30) for h in handles] == [1] * 20
        # and copies that reach the broker anyway are absorbed by the claim
        copies = [unique.apply_async((3,), dedupe_on_publish=False, task_id=f"c{i}")
                  for i in range(5)]
        assert [c.get(timeout=30) for c in copies] == [1] * 5
    assert shop.counter.get("effect", 3) == 1


def test_a_replayed_per_publish_task_runs_once_however_often_it_is_replayed(
    make_shop: Callable[..., Shop],
) -> None:
    from celery_reliable import DeadLetters

    shop = make_shop("redis")
    handle = shop.task("refresh_gated").delay(21)
    dlq = DeadLetters(shop.app)
    with shop.worker():
        wait_for(lambda: dlq.show(handle.id) is not None, 30, "the dead letter")
        assert dlq.show(handle.id).entry.key == handle.id  # type: ignore[union-attr]
        shop.counter.client.set(f"{shop.env['TEST_PREFIX']}:refresh_fixed", 1)
        assert dlq.replay([handle.id]).replayed == [handle.id]
        wait_for(lambda: shop.counter.get("effect", 21) == 1, 30, "the replayed run")
        # A forced second replay publishes another copy of the same publish: absorbed.
        assert dlq.replay([handle.id], force=True).replayed == [handle.id]
        wait_for(lambda: shop.store.pending_count() == 0, 30, "the second copy to settle")
    assert shop.counter.get("effect", 21) == 1
    assert shop.counter.get("start", 21) == 2  # the failure, then the one replayed run


def test_a_task_sent_by_name_is_keyed_by_its_publish(make_shop: Callable[..., Shop]) -> None:
    """``send_task`` carries none of our headers: the worker keys the call by its task id,
    as the producer would have."""
    from celery_reliable.states import State, queries

    shop = make_shop("redis")
    with shop.worker():
        first = shop.app.send_task("shop.refresh", (9,), queue=shop.env["TEST_QUEUE"])
        assert first.get(timeout=30) == 1
        second = shop.app.send_task("shop.refresh", (9,), queue=shop.env["TEST_QUEUE"])
        assert second.get(timeout=30) == 2  # a second publish runs again
        again = shop.app.send_task("shop.refresh", (9,), task_id=first.id,
                                   queue=shop.env["TEST_QUEUE"])
        assert again.get(timeout=30) == 1  # a copy of the first publish: skipped
    assert shop.counter.get("effect", 9) == 2
    wait_for(lambda: State.SUCCEEDED in {t.state for t in queries.timeline(
        shop.app, key=first.id)}, 15, "the timeline under the task id")
