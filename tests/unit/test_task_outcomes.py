"""What the worker does with Celery's own control flow in a body (``self.retry()``,
``Ignore``, ``Reject``), a key held with other arguments, and a completion that comes too
late: Celery's Request and trace on kombu's memory transport, the memory store."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from celery import Celery
from celery._state import _set_current_app, get_current_app
from celery.canvas import Signature
from celery.concurrency.solo import TaskPool as SoloPool
from celery.exceptions import Ignore, Reject
from celery.worker.request import Request

from celery_reliable import IdempotencyKeyConflict, PermanentError, ReliableTask, StoreUnavailable
from celery_reliable.headers import HEADER_FINGERPRINT, HEADER_KEY
from celery_reliable.runtime import runtime
from celery_reliable.states import State, Transition, recorder, state_store
from tests.harness import dead_records
from tests.unit.test_claim_ahead import received, taken


def story(app: Celery, task_id: str) -> list[Transition]:
    recorder(app).flush(force=True)
    return state_store(app).timeline(task_id)


def states(app: Celery, task_id: str) -> list[State]:
    return [t.state for t in story(app, task_id)]


def test_self_retry_requeues_the_key_and_the_next_attempt_runs(app: Celery) -> None:
    runs: list[int] = []

    @app.task(base=ReliableTask, bind=True, shared=False, idempotency_key="mail:{n}")
    def mail(self: ReliableTask, n: int) -> str:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "sent"

    first = received(app, mail, 1)
    first.execute()
    store = runtime(app).store
    key = store.get_key("mail:1")
    # released as queued for this very task: the producer still sees it in flight
    assert key is not None and key.state == "queued" and key.task_id == first.id
    assert store.get_record(first.id, "mail:1") is not None  # the rescuer's safety net
    with app.connection_for_read() as conn:
        message = conn.SimpleQueue(app.conf.task_default_queue).get(timeout=2)
        message.ack()
    again = type(first)(message, app=app, task=mail, hostname="w@test")
    assert again.id == first.id and again.request_dict["retries"] == 1
    again.execute()
    assert runs == [0, 1]
    done = store.get_key("mail:1")
    assert done is not None and done.state == "done"
    assert states(app, first.id) == [
        State.PENDING, State.RECEIVED, State.STARTED, State.RETRY_SCHEDULED,
        State.RECEIVED, State.STARTED, State.SUCCEEDED,
    ]


def test_ignore_forgets_the_key_and_the_record(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, idempotency_key="skip:{n}")
    def skip(n: int) -> None:
        raise Ignore()

    request = received(app, skip, 1)
    request.execute()
    store = runtime(app).store
    assert store.get_key("skip:1") is None  # a later copy may run
    assert store.get_record(request.id, "skip:1") is None  # and nothing rescues this one
    last = story(app, request.id)[-1]
    assert last.state is State.SUCCEEDED and last.detail == {"ignored": True}


def test_reject_without_requeue_is_dead_lettered(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, idempotency_key="bad:{n}")
    def bad(n: int) -> None:
        raise Reject("malformed order", requeue=False)

    request = received(app, bad, 1)
    request.execute()
    store = runtime(app).store
    [letter] = dead_records(store)
    assert letter.task_id == request.id and letter.reason == "rejected"
    assert store.get_key("bad:1") is None
    assert states(app, request.id)[-2:] == [State.FAILED, State.DEAD_LETTERED]


def test_reject_with_requeue_gives_the_key_back(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, idempotency_key="later:{n}")
    def later(n: int) -> None:
        raise Reject("not now", requeue=True)

    request = received(app, later, 1)
    request.execute()
    store = runtime(app).store
    key = store.get_key("later:1")
    assert key is not None and key.state == "queued"
    assert dead_records(store) == []


def charged_then_copied(app: Celery) -> tuple[list[int], Request]:
    """``charge(7, 10)`` ran and holds key ``charge:7``; then a copy under that key with
    other arguments ran, sent as a producer that does not ask the store sends it (by
    name, another client).  The amounts the body charged, and the copy's request."""
    runs: list[int] = []

    @app.task(base=ReliableTask, shared=False, idempotency_key="charge:{order}")
    def charge(order: int, amount: int) -> int:
        runs.append(amount)
        return amount

    received(app, charge, 7, 10).execute()
    fingerprint = charge.key_for((7, 99), {})[1]
    app.send_task(charge.name, (7, 99),
                  headers={HEADER_KEY: "charge:7", HEADER_FINGERPRINT: fingerprint})
    copy = taken(app, charge)
    copy.execute()
    return runs, copy


def test_a_key_held_with_other_arguments_is_dead_lettered_at_the_worker(app: Celery) -> None:
    runs, copy = charged_then_copied(app)
    assert runs == [10]
    [letter] = dead_records(runtime(app).store)
    assert letter.task_id == copy.id and letter.reason == "key_conflict"
    assert IdempotencyKeyConflict.__name__ in (letter.error or "")


def test_a_key_held_with_other_arguments_is_skipped_when_told_to(app: Celery) -> None:
    app.conf.reliable_on_key_conflict = "skip"
    runs, copy = charged_then_copied(app)
    assert runs == [10]
    assert dead_records(runtime(app).store) == []
    told = story(app, copy.id)
    assert [t.state for t in told] == [State.RECEIVED, State.DEDUPLICATED]
    assert told[-1].detail is not None and told[-1].detail["key_conflict"]


def test_a_completion_after_the_lease_was_taken_over_is_reported(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(base=ReliableTask, bind=True, shared=False, idempotency_key="slow:{n}")
    def slow(self: ReliableTask, n: int) -> None:
        # Meanwhile the lease lapsed and another worker took the key over (what a body
        # that outlives its lease with a stalled heartbeat meets), without the wait.
        store = runtime(app).store
        held = store.get_key("slow:1")
        assert held is not None and held.owner is not None
        assert store.release("slow:1", held.owner, self.request.id, requeued=False)
        fingerprint = self.request.headers[HEADER_FINGERPRINT]
        assert store.claim("slow:1", fingerprint, "other-task", "other:1", 30, 3).runs

    with caplog.at_level(logging.ERROR, logger="celery_reliable"):
        received(app, slow, 1).execute()
    assert runtime(app).counters["lease_lost"] == 1
    assert "had lapsed and another worker took it over" in caplog.text
    held = runtime(app).store.get_key("slow:1")
    assert held is not None and held.state == "running" and held.owner == "other:1"


@pytest.mark.parametrize("failures, done", [(2, True), (10**6, False)])
def test_a_completion_the_store_refuses_is_tried_again_then_reported(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    failures: int, done: bool,
) -> None:
    """The body ran: completing is tried again for reliable_complete_timeout (1 s here,
    backoff shortened); when the store never takes it, the failure is counted and
    logged, and the key stays running so that its lease lapses and the task is rescued
    (never lost, maybe run again)."""
    app.conf.reliable_complete_timeout = 1.0

    @app.task(base=ReliableTask, shared=False, idempotency_key="once:{n}")
    def once(n: int) -> int:
        return n

    store = runtime(app).store
    complete_soon = store.complete_soon
    refused: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> None:
        if len(refused) < failures:
            refused.append(1)
            raise StoreUnavailable("store is unreachable")
        complete_soon(*args, **kwargs)

    monkeypatch.setattr(store, "complete_soon", flaky)
    monkeypatch.setattr("celery_reliable.task.execution._sleep_backoff",
                        lambda attempt: time.sleep(0.05))
    with caplog.at_level(logging.WARNING, logger="celery_reliable"):
        received(app, once, 1).execute()
    key = store.get_key("once:1")
    assert key is not None and key.state == ("done" if done else "running")
    assert runtime(app).counters["store_error"] == len(refused)
    assert len(refused) == failures if done else len(refused) > 5  # tried for the whole second
    assert runtime(app).counters["complete_failed"] == (0 if done else 1)
    if not done:
        assert "the store could not record it" in caplog.text


def run_in_solo_pool(app: Celery, task: Any, *args: Any) -> int:
    """Publish a call and run its message the way a solo worker does (the pool's tracer,
    the strategy's ack and reject); the messages in the task queue afterwards."""
    queue = app.conf.task_default_queue
    with app.connection_for_write() as conn:
        task.apply_async(args)
        message = conn.default_channel.basic_get(queue, no_ack=False)
        request = Request(message, app=app, task=task, hostname="w@test",
                          on_ack=message.ack_log_error, on_reject=message.reject_log_error)
        pool = SoloPool()
        pool.start()
        previous = get_current_app()
        app.set_current()  # the pool's tracer finds the task in the current app
        try:
            request.execute_using_pool(pool)
        finally:
            _set_current_app(previous)
        return int(conn.default_channel._size(queue))


def test_a_final_failure_the_dlq_queue_refuses_is_requeued_not_acknowledged(
    app: Celery, dlq_down: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure is never acknowledged unrecorded: with the DLQ queue down, the message
    goes back to its queue and the next delivery fails (and dead-letters) again."""
    @app.task(base=ReliableTask, shared=False, idempotency_key="pay:{n}")
    def pay(n: int) -> None:
        raise PermanentError("card declined")

    with caplog.at_level(logging.ERROR, logger="celery_reliable"):
        assert run_in_solo_pool(app, pay, 1) == 1  # requeued
    assert "not dead-lettered" in caplog.text and "requeued" in caplog.text
    assert dead_records(runtime(app).store) == []


def test_store_and_broker_both_down_requeue_the_message(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: the store cannot guard the run, so the task is deferred; when its
    deferred copy cannot be published either, this copy goes back to the queue."""
    runs: list[int] = []

    @app.task(base=ReliableTask, shared=False, idempotency_key="ship:{n}")
    def ship(n: int) -> None:
        runs.append(n)

    store = runtime(app).store

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("store is unreachable")

    def broker_down(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker is down")

    monkeypatch.setattr(store, "claim", down)
    monkeypatch.setattr(Signature, "apply_async", broker_down)
    with caplog.at_level(logging.ERROR, logger="celery_reliable"):
        assert run_in_solo_pool(app, ship, 1) == 1  # requeued, not lost
    assert runs == []  # never run unguarded
    assert "failing closed" in caplog.text and "could not be published again" in caplog.text


def test_a_redelivery_of_a_running_task_is_absorbed_not_run_twice(app: Celery) -> None:
    """Its first delivery still runs (or its worker died: the rescuer brings it back when
    the lease lapses): the second copy is acknowledged without running."""
    runs: list[int] = []

    @app.task(base=ReliableTask, shared=False, idempotency_key="ship:{n}")
    def ship(n: int) -> None:
        runs.append(n)

    request = received(app, ship, 1)
    store = runtime(app).store
    fingerprint = request.request_dict[HEADER_FINGERPRINT]
    assert store.claim("ship:1", fingerprint, request.id, "first-worker:1", 30, 3).runs
    request.execute()  # the broker delivered the same message again
    assert runs == []
    assert runtime(app).counters["busy"] == 1
    held = store.get_key("ship:1")
    assert held is not None and held.owner == "first-worker:1"
    assert store.get_record(request.id, "ship:1") is not None  # the rescuer's safety net


def test_an_event_that_cannot_be_sent_never_fails_the_task(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.worker_send_task_events = True  # a worker started with -E
    runs: list[int] = []

    @app.task(base=ReliableTask, shared=False, idempotency_key="ship:{n}")
    def ship(n: int) -> int:
        runs.append(n)
        return n

    received(app, ship, 1).execute()
    copy = received(app, ship, 1, task_id="copy-of-1")  # named: published, deduped at claim

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("event connection lost")

    monkeypatch.setattr(ship, "send_event", broken)
    copy.execute()  # DEDUPLICATED has a custom event; sending it fails
    assert runs == [1]
    assert runtime(app).counters["event_error"] == 1
    assert states(app, "copy-of-1")[-1] is State.DEDUPLICATED
