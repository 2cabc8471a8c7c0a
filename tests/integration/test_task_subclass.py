"""A ReliableTask subclass with its own ``__call__`` (Flask's pattern), in a real worker."""

from __future__ import annotations

from collections.abc import Callable

from celery_reliable.states import State, flush_all, queries
from tests.harness import wait_for
from tests.shopfixture import Shop


def test_flasks_call_override_keeps_every_guarantee(make_shop: Callable[..., Shop]) -> None:
    shop = make_shop("redis")
    task = shop.task("flask_receipt")
    handles = [task.apply_async((2,), {"hold": 0.3}) for _ in range(3)]  # three messages
    flush_all()  # the producer's PENDINGs
    with shop.worker(pool="prefork", concurrency=2):
        results = [h.get(timeout=60) for h in handles]
        # Every record is settled: nothing is left for the rescuer to republish later.
        wait_for(lambda: shop.store.pending_count() == 0, 30, "the task records to clear")
    assert results == [f"shop-{shop.env['TEST_PREFIX']}"] * 3  # each ran in the app context
    assert shop.counter.get("start", 2) == 1
    assert shop.counter.get("effect", 2) == 1

    def last_states() -> list[State]:
        return [timeline[-1].state for timeline in
                (queries.timeline(shop.app, task_id=h.id) for h in handles) if timeline]

    wait_for(lambda: len(last_states()) == 3 and State.STARTED not in last_states()
             and State.RECEIVED not in last_states() and State.PENDING not in last_states(),
             15, "every timeline to reach its end")
    assert sorted(s.value for s in last_states()) == ["DEDUPLICATED", "DEDUPLICATED",
                                                       "SUCCEEDED"]
    for handle in handles:
        states = [t.state for t in queries.timeline(shop.app, task_id=handle.id)]
        assert states[0] is State.PENDING and State.RESCUED not in states, states
