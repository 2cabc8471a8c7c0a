"""The history is right when processes record one task at once (G5), end to end.

A real worker records a task's states while the producer still holds its PENDING;
two workers share retries; copies are delivered and published again.  Whatever
order the processes' flushes reach the store in, each task's timeline is its true
history, its current state is its last, nothing finished is listed as stuck, and
no process logs an "illegal state transition" (counted in the producer's recorder
and in the workers' logs, where the recorder writes that line).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery.result import AsyncResult
from celery.signals import after_task_publish

from celery_reliable.states import TERMINAL, State, flush_all, queries, recorder
from tests.harness import Worker, wait_for
from tests.shopfixture import Shop

S = State
ILLEGAL_LINE = "illegal state transition"


@contextmanager
def held_after_publish(until: Callable[[str], bool]) -> Iterator[None]:
    """The producer waits after each publish (before ``apply_async`` returns, so before
    it records PENDING) until ``until(task_id)``."""
    def hold(headers: Any = None, **_: Any) -> None:
        task_id = (headers or {}).get("id")
        if task_id:
            wait_for(lambda: until(task_id), 30, f"the worker to get on with {task_id}")

    after_task_publish.connect(hold, weak=False, dispatch_uid="test_states_concurrency")
    try:
        yield
    finally:
        after_task_publish.disconnect(dispatch_uid="test_states_concurrency")


def _states(shop: Shop, task_id: str) -> list[tuple[State, int]]:
    return [(t.state, t.attempt) for t in queries.timeline(shop.app, task_id=task_id)]


def _illegal_lines(*workers: Worker) -> int:
    return sum(w.output().count(ILLEGAL_LINE) for w in workers)


@pytest.mark.parametrize("first", ["worker", "producer"])
def test_a_worker_faster_than_its_producer_leaves_the_true_history(
    make_shop: Callable[..., Shop], first: str,
) -> None:
    """The worker runs the task to SUCCEEDED before ``apply_async`` has returned.
    ``worker``: its states are in the store before the producer records PENDING (before,
    that PENDING was refused).  ``producer``: the worker flushes late, the PENDING lands
    first (before, the worker's states were then refused and the task stayed PENDING,
    listed as stuck, though it had succeeded)."""
    shop = make_shop("redis", "redis",
                     TEST_STATE_FLUSH_INTERVAL="0.2" if first == "worker" else "1.5")

    def succeeded(task_id: str) -> bool:
        current = queries.current(shop.app, task_id)
        return current is not None and current.state is S.SUCCEEDED

    def ran(task_id: str) -> bool:
        return bool(AsyncResult(task_id, app=shop.app).ready())

    with shop.worker() as worker:
        with held_after_publish(succeeded if first == "worker" else ran):
            handle = shop.task("send_receipt").delay(5)
        flush_all()  # the producer's PENDING
        expected = [(S.PENDING, 1), (S.RECEIVED, 1), (S.STARTED, 1), (S.SUCCEEDED, 1)]
        wait_for(lambda: _states(shop, handle.id) == expected, 15,
                 f"the whole history (now {_states(shop, handle.id)})")
    current = queries.current(shop.app, handle.id)
    assert current is not None and current.state is S.SUCCEEDED
    assert handle.id not in {t.task_id for t in queries.stuck(shop.app, 0)}
    assert recorder(shop.app).counters["rejected_illegal"] == 0
    assert _illegal_lines(worker) == 0


def test_no_illegal_transition_in_a_clean_run_of_mixed_tasks(
    make_shop: Callable[..., Shop],
) -> None:
    """Successes, retries shared by two workers, a duplicate deduplicated by the claim
    and then delivered again, a duplicate refused at publish, a finished task id
    published again: every history true, and not one illegal transition."""
    shop = make_shop("redis", "postgresql")
    receipt, flaky = shop.task("send_receipt"), shop.task("flaky_send")
    consumer_dedupe = shop.task("send_receipt_consumer_dedupe")
    with shop.worker() as one, shop.worker() as two:
        plain = [receipt.delay(n) for n in range(1, 5)]
        retried = [flaky.delay(100 + n, 2) for n in range(3)]
        original = consumer_dedupe.delay(200)
        assert all(h.get(timeout=60) for h in [*plain, *retried, original])
        duplicate = consumer_dedupe.delay(200)  # published: the claim dedupes it
        duplicate.get(timeout=30)
        # The broker hands the deduplicated copy over again (as after its worker died
        # before the ack): the same message, published by name so nothing records it.
        again = shop.app.send_task("shop.send_receipt_consumer_dedupe", (200,),
                                   task_id=duplicate.id)
        again.get(timeout=30)
        refused = receipt.delay(1)  # deduplicated at publish: the first task's handle
        assert refused.id == plain[0].id
        republished = receipt.apply_async((2,), task_id=plain[1].id)  # the same id again
        republished.get(timeout=30)
        flush_all()
    # The workers have stopped (a warm shutdown writes what their recorders buffered).
    assert recorder(shop.app).counters["rejected_illegal"] == 0
    assert _illegal_lines(one, two) == 0
    tasks = [h.id for h in [*plain, *retried, original, duplicate]]
    stuck = {s.task_id for s in queries.stuck(shop.app, 0)}
    for task_id in tasks:
        current = queries.current(shop.app, task_id)
        assert current is not None and current.state in TERMINAL, (task_id, current)
        assert task_id not in stuck
    for handle in retried:
        # The runs, attempt by attempt (a copy may also have been deferred or rescued on
        # its way: its key was still held for a moment by the attempt before).
        runs = [(s, a) for s, a in _states(shop, handle.id)
                if s in (S.PENDING, S.STARTED, S.RETRY_SCHEDULED, S.SUCCEEDED)]
        assert runs == [(S.PENDING, 1), (S.STARTED, 1), (S.RETRY_SCHEDULED, 1),
                        (S.STARTED, 2), (S.RETRY_SCHEDULED, 2), (S.STARTED, 3),
                        (S.SUCCEEDED, 3)]
    assert [s for s, _ in _states(shop, duplicate.id)] == [
        S.PENDING, S.RECEIVED, S.DEDUPLICATED, S.RECEIVED, S.DEDUPLICATED]
    assert [s for s, _ in _states(shop, plain[1].id)] == [
        S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED, S.PENDING]
