"""Resolved dead letters: left out of ``check``, forgotten after their retention.

They piled up: a replayed entry whose replay succeeded stayed listed forever, and
``check`` kept flagging an entry whose key had succeeded since (another call).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from kombu import Connection

from celery_reliable import PermanentError, ReliableTask
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.publisher import dlq_queue
from celery_reliable.dlq.retention import prune_resolved
from celery_reliable.runtime import runtime
from celery_reliable.worker import rescue
from celery_reliable.worker.rescue import Rescuer


def messages(queue: str) -> list[Any]:
    """Every message of ``queue``, taken off it."""
    out = []
    with Connection("memory://") as conn:
        bound = dlq_queue(queue).bind(conn.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=True)) is not None:
            out.append(message)
    return out


def dlq_ids(app: Celery) -> set[str]:
    taken = messages(app.conf.reliable_dlq_queue)
    with Connection("memory://") as conn:  # put them back
        producer = conn.Producer()
        target = dlq_queue(app.conf.reliable_dlq_queue)
        for m in taken:
            producer.publish(m.body, exchange=target.exchange,
                             routing_key=app.conf.reliable_dlq_queue, headers=m.headers,
                             content_type=m.content_type,
                             content_encoding=m.content_encoding, declare=[target])
    return {m.headers["x-reliable-task-id"] for m in taken}


def three_dead_letters(app: Celery) -> tuple[str, str, str]:
    """Order 1 replayed and succeeded, order 2 succeeded by a second call with its key,
    order 3 still failing: the ids of their dead letters."""
    broken = {"now": True}

    @app.task(base=ReliableTask, shared=False, name="shop.pay", idempotency_key="pay:{order}")
    def pay(order: int) -> str:
        if broken["now"] or order == 3:
            raise PermanentError(f"card of order {order} declined")
        return "paid"

    first, second, third = (pay.apply((n,)).id for n in (1, 2, 3))
    broken["now"] = False
    letters = DeadLetters(app)
    assert letters.replay([first]).replayed == [first]
    [sent] = messages(app.conf.task_default_queue)
    assert pay.apply(*sent.decode()[:2], task_id=first).get() == "paid"  # the worker's run
    assert pay.apply((2,)).get() == "paid"  # another call with order 2's key
    return first, second, third


def test_check_leaves_out_entries_whose_key_has_succeeded_since(app: Celery) -> None:
    first, second, third = three_dead_letters(app)
    letters = DeadLetters(app)
    assert [letters.resolved(t) for t in (first, second, third)] == [True, True, False]
    found = letters.check(0)
    assert found.count == 1 and found.oldest is not None and found.oldest.task_id == third


def test_resolved_entries_are_forgotten_after_their_retention(app: Celery) -> None:
    app.conf.reliable_dlq_resolved_retention = 600
    first, second, third = three_dead_letters(app)
    letters = DeadLetters(app)
    assert dlq_ids(app) == {second, third}  # the replay took the first one's message
    young = prune_resolved(letters, 500)
    assert young.forgotten == [] and young.looked_at == 0
    later = prune_resolved(letters, 500, now=time.time() + 601)
    assert sorted(later.forgotten) == sorted([first, second]) and later.cursor is None
    assert [e.task_id for e in letters.list().entries] == [third]
    assert dlq_ids(app) == {third}


def test_the_sweeping_worker_forgets_resolved_entries(app: Celery) -> None:
    app.conf.reliable_dlq_resolved_retention = 0
    *_, third = three_dead_letters(app)
    sweeper = Rescuer(runtime(app), "test")
    sweeper._dlq_pruned_at = time.monotonic() - rescue.DLQ_PRUNE_EVERY  # a look is due
    sweeper.sweep_once()
    assert [e.task_id for e in DeadLetters(app).list().entries] == [third]
    assert runtime(app).counters["dead_letters_forgotten"] == 2
