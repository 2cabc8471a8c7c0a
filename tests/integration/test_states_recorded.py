"""Every transition recorded (G5), end to end: real worker, real stores."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celery_reliable.states import State, flush_all, queries
from tests.harness import wait_for
from tests.shopfixture import Shop


@pytest.mark.parametrize("store", ["redis", "postgresql"])
def test_timeline_of_a_task_retried_twice_then_succeeding(
    make_shop: Callable[..., Shop], store: str
) -> None:
    shop = make_shop("redis", store)
    handle = shop.task("flaky_send").delay(1, 2)
    flush_all()  # the producer's PENDING
    with shop.worker():
        assert handle.get(timeout=60) == 3

    def complete() -> bool:
        states = [t.state for t in queries.timeline(shop.app, task_id=handle.id)]
        return bool(states) and states[-1] is State.SUCCEEDED

    wait_for(complete, 15, "the timeline to reach SUCCEEDED")
    timeline = queries.timeline(shop.app, task_id=handle.id)
    assert [(t.state, t.attempt) for t in timeline] == [
        (State.PENDING, 1),
        (State.RECEIVED, 1), (State.STARTED, 1), (State.RETRY_SCHEDULED, 1),
        (State.RECEIVED, 2), (State.STARTED, 2), (State.RETRY_SCHEDULED, 2),
        (State.RECEIVED, 3), (State.STARTED, 3), (State.SUCCEEDED, 3),
    ]
    assert [t.at for t in timeline] == sorted(t.at for t in timeline)
    assert timeline[3].error_type == "ConnectionError"
    by_key = queries.timeline(shop.app, key="flaky:1")
    assert [t.state for t in by_key] == [t.state for t in timeline]


def test_stuck_task_shows_up_and_leaves_once_completed(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("redis")
    handle = shop.task("slow_effect").delay(7, 3.0)
    first = shop.new_worker().start()
    wait_for(lambda: shop.counter.get("start", 7) == 1, 30, "the body to start")
    wait_for(lambda: handle.id in {t.task_id for t in queries.timeline(shop.app, key="slow:7")
                                   if t.state is State.STARTED}, 10, "STARTED to be recorded")
    first.kill()  # no worker now: the task sits in STARTED

    def stuck_ids() -> set[str]:
        return {s.task_id for s in queries.stuck(shop.app, 1, [State.STARTED])}

    wait_for(lambda: handle.id in stuck_ids(), 15, "the task to show up as stuck")
    with shop.worker():
        assert handle.get(timeout=60) == 1
        wait_for(lambda: handle.id not in stuck_ids(), 15, "the task to leave the stuck list")
    states = [t.state for t in queries.timeline(shop.app, task_id=handle.id)]
    assert states[-1] is State.SUCCEEDED
    assert State.RESCUED in states


def test_plain_tasks_are_recorded_when_the_app_asks(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("redis", TEST_RECORD_ALL="1")
    handle = shop.task("third_party_add").delay(2, 3)
    flush_all()
    with shop.worker():
        assert handle.get(timeout=30) == 5

    def states() -> list[State]:
        return [t.state for t in queries.timeline(shop.app, task_id=handle.id)]

    wait_for(lambda: State.SUCCEEDED in states(), 15, "the plain task's timeline")
    assert states() == [State.PENDING, State.RECEIVED, State.STARTED, State.SUCCEEDED]
    # keyed by its publish, as a ReliableTask without a declared key
    assert [t.state for t in queries.timeline(shop.app, key=handle.id)] == states()


def test_plain_tasks_are_not_recorded_by_default(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("redis")
    reliable = shop.task("send_receipt").delay(4)
    plain = shop.task("third_party_add").delay(1, 1)
    with shop.worker():
        assert plain.get(timeout=30) == 2
        reliable.get(timeout=30)
    wait_for(lambda: bool(queries.timeline(shop.app, task_id=reliable.id)), 15,
             "the reliable task's timeline")
    assert queries.timeline(shop.app, task_id=plain.id) == []
