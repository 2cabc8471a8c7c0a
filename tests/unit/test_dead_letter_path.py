"""Every cause that gives a task up takes the one dead-letter path
(celery_reliable/dlq/dead_letter.py) and leaves the same seven effects: the DLQ message,
the index entry, DEAD_LETTERED (with the reason) in the timeline, the
``task-dead_lettered`` event, the ``task_dead_lettered`` signal, the counter and one log
line.  Each cause is driven through its real caller on the memory transport and store."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from celery_reliable import PermanentError, ReliableTask
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.message import H_TASK_ID
from celery_reliable.dlq.poison import dead_letter_message
from celery_reliable.dlq.signals import task_dead_lettered
from celery_reliable.headers import HEADER_FINGERPRINT
from celery_reliable.records import utcnow
from celery_reliable.runtime import runtime
from celery_reliable.states import State, recorder, state_store
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.stores.model import SweepPolicy
from celery_reliable.worker.rescue import Rescuer
from celery_reliable.worker.signals import on_task_revoked
from tests.unit.test_claim_ahead import received
from tests.unit.test_dlq_events import listen
from tests.unit.test_task_outcomes import charged_then_copied

#: a cause: given the app, make one task dead-lettered through its real caller; its id
Cause = Callable[[Celery], str]


def _task(app: Celery, body: Callable[..., Any] | None = None) -> Any:
    """``shop.ship``, keyed by order; ``body`` is what it does (nothing by default)."""
    if body is None and "shop.ship" in app.tasks:  # two causes in one test: one task
        return app.tasks["shop.ship"]

    def ship(order: int) -> None:
        if body is not None:
            body()

    return app.task(base=ReliableTask, shared=False, name="shop.ship",
                    idempotency_key="ship:{order}")(ship)


def final_failure(app: Celery) -> str:
    def fail() -> None:
        raise PermanentError("the address does not exist")

    request = received(app, _task(app, fail), 1)
    request.execute()
    return str(request.id)


def retry_budget_exhausted(app: Celery) -> str:
    app.conf.reliable_retry_budget_ratio = 0
    app.conf.reliable_retry_budget_floor = 0
    app.conf.reliable_on_retry_budget_exhausted = "dead_letter"
    request = received(app, _task(app), 1, retries=1)  # a retry, which the budget refuses
    request.execute()
    return str(request.id)


def key_conflict(app: Celery) -> str:
    _, copy = charged_then_copied(app)
    return str(copy.id)


def worker_lost(app: Celery) -> str:
    app.conf.reliable_max_lost_attempts = 1
    request = received(app, _task(app), 1)
    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    fingerprint = request.request_dict[HEADER_FINGERPRINT]
    assert store.claim("ship:1", fingerprint, request.id, "died:1", 30, 1).runs
    now = store.clock() + 60  # its worker died with it: the lease lapsed
    store.clock = lambda: now
    request.execute()
    return str(request.id)


def revoked(app: Celery) -> str:
    task = _task(app)
    request = received(app, task, 1)
    on_task_revoked(sender=task, request=request._context, terminated=False)
    return str(request.id)


def expired(app: Celery) -> str:
    task = _task(app)
    request = received(app, task, 1)
    on_task_revoked(sender=task, request=request._context, terminated=False, expired=True)
    return str(request.id)


def _sweep(app: Celery, **options: Any) -> str:
    """Publish a task the broker then loses, and let a day pass: the rescuer's turn."""
    handle = _task(app).apply_async((1,), **options)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(app.conf.task_default_queue)
    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    now = store.clock() + 86_400
    store.clock = lambda: now
    rescuer = Rescuer(runtime(app), "test")
    rescuer.policy = SweepPolicy(0.1, 1, 100)
    assert rescuer.sweep_once() == 1
    return str(handle.id)


def never_received(app: Celery) -> str:
    rt = runtime(app)
    rt.settings = replace(rt.settings, max_rescues=0)
    return _sweep(app)


def expired_at_rescue(app: Celery) -> str:
    return _sweep(app, expires=utcnow() - timedelta(seconds=1))


def undecodable_record(app: Celery) -> str:
    return _sweep(app, serializer="pickle")  # a serializer this app does not accept


def poison(app: Celery) -> str:
    queue = app.conf.task_default_queue
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            b"{not json", routing_key=queue, content_type="application/json",
            content_encoding="utf-8", headers={"id": "poison-1"},
            declare=[app.amqp.queues[queue]],
        )
        message = conn.default_channel.basic_get(queue, no_ack=False)
        assert dead_letter_message(app, message, "undecodable", ValueError("bad JSON"),
                                   "w@test")
    return "poison-1"


CAUSES: list[tuple[Cause, str]] = [
    (final_failure, "permanent_error"),
    (retry_budget_exhausted, "retry_budget_exhausted"),
    (key_conflict, "key_conflict"),
    (worker_lost, "worker_lost"),
    (revoked, "revoked"),
    (expired, "expired"),
    (never_received, "never_received"),
    (expired_at_rescue, "expired"),
    (undecodable_record, "undecodable"),
    (poison, "undecodable"),
]


@pytest.fixture
def signals() -> Iterator[list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        sent.append({"sender": sender, **kwargs})

    task_dead_lettered.connect(receiver, weak=False)
    try:
        yield sent
    finally:
        task_dead_lettered.disconnect(receiver)


def dlq_messages(app: Celery) -> list[Any]:
    """The messages in the app's DLQ queue, taken off it undecoded (a poison body is
    kept raw)."""
    out = []
    with app.connection_for_read() as conn:
        while (message := conn.default_channel.basic_get(app.conf.reliable_dlq_queue,
                                                         no_ack=True)) is not None:
            out.append(message)
    return out


@pytest.mark.parametrize(("cause", "reason"), CAUSES, ids=[c.__name__ for c, _ in CAUSES])
def test_every_cause_leaves_the_seven_effects_of_the_one_path(
    app: Celery, cause: Cause, reason: str, signals: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    app.conf.worker_send_task_events = True  # a worker started with -E
    dispatcher = listen(app, monkeypatch)
    with caplog.at_level(logging.INFO):
        task_id = cause(app)
    # 1. published to the DLQ queue
    [message] = dlq_messages(app)
    assert message.headers[H_TASK_ID] == task_id
    # 2. indexed
    entry = DeadLetters(app).get(task_id)
    assert entry is not None and entry.reason == reason
    # 3. DEAD_LETTERED, with the reason, last in its timeline
    recorder(app).flush(force=True)
    last = state_store(app).timeline(task_id)[-1]
    assert last.state is State.DEAD_LETTERED
    assert last.detail is not None and last.detail["reason"] == reason
    # 4. the event
    events = [f for e, f in dispatcher.sent if e == "task-dead_lettered"]
    assert [(f["uuid"], f["reason"]) for f in events] == [(task_id, reason)]
    assert events[0]["dlq_queue"] == app.conf.reliable_dlq_queue
    # 5. the signal
    assert [(s["task_id"], s["reason"]) for s in signals] == [(task_id, reason)]
    # 6. the counter
    assert runtime(app).counters[f"dead_lettered_{reason}"] == 1
    # 7. one log line
    said = [r for r in caplog.records
            if r.name.startswith("celery_reliable") and "dead-lettered" in r.getMessage()]
    assert len(said) == 1 and f"[{task_id}] dead-lettered ({reason})" in said[0].getMessage()


def test_an_expired_task_sends_task_expired_before_task_dead_lettered(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.worker_send_task_events = True
    dispatcher = listen(app, monkeypatch)
    for cause in (expired, expired_at_rescue):
        task_id = cause(app)
        assert [e for e, f in dispatcher.sent if f["uuid"] == task_id] == [
            "task-expired", "task-dead_lettered"]
