"""Custom task events (celery_reliable/events.py ``emit``) sent from outside a task: only
with task events on, never raising."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery

from celery_reliable import PermanentError, ReliableTask
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.events import TaskEvent, emit
from celery_reliable.runtime import runtime


class Dispatcher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    def send(self, event: str, **fields: Any) -> None:
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append((event, fields))


def listen(app: Celery, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> Dispatcher:
    dispatcher = Dispatcher(fail)

    @contextmanager
    def default_dispatcher(*_: Any, **__: Any) -> Iterator[Dispatcher]:
        yield dispatcher

    monkeypatch.setattr(app.events, "default_dispatcher", default_dispatcher)
    return dispatcher


def test_only_when_task_events_are_on(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher = listen(app, monkeypatch)
    count = runtime(app).count
    assert not emit(app, TaskEvent.RESCUED, "t1", count=count)
    app.conf.worker_send_task_events = True
    assert emit(app, TaskEvent.RESCUED, "t1", count=count, why="worker_died")
    assert dispatcher.sent == [("task-rescued", {"uuid": "t1", "why": "worker_died"})]


def test_a_failure_is_counted_not_raised(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    listen(app, monkeypatch, fail=True)
    app.conf.worker_send_task_events = True
    assert not emit(app, TaskEvent.REPLAYED, "t1", count=runtime(app).count)
    assert runtime(app).counters["event_error"] == 1


def test_replay_sends_task_replayed(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.pay")
    def pay(n: int) -> None:
        raise PermanentError("no")

    handle = pay.apply((1,))
    dispatcher = listen(app, monkeypatch)
    app.conf.worker_send_task_events = True
    assert DeadLetters(app).replay([handle.id]).replayed == [handle.id]
    assert [(e, f["uuid"], f["replay"]) for e, f in dispatcher.sent] == [
        ("task-replayed", handle.id, 1)]


def test_the_rescuer_sends_rescued_expired_and_dead_lettered(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_reliable.stores import SweepPolicy
    from celery_reliable.stores.memory import MemoryStore
    from celery_reliable.worker.rescue import Rescuer

    @app.task(base=ReliableTask, shared=False, name="shop.lost")
    def lost(n: int) -> None: ...

    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    rescued = lost.apply_async((1,), queue="lostq")
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    expired = lost.apply_async((2,), queue="lostq", expires=past)
    dispatcher = listen(app, monkeypatch)
    app.conf.worker_send_task_events = True
    store.clock = lambda: 10**10  # every deadline passed
    rescuer = Rescuer(runtime(app), "test")
    rescuer.policy = SweepPolicy(0.1, 1, 100)
    assert rescuer.sweep_once() == 2
    events = {(e, f["uuid"]) for e, f in dispatcher.sent}
    assert events == {("task-rescued", rescued.id), ("task-expired", expired.id),
                      ("task-dead_lettered", expired.id)}
    entry = DeadLetters(app).get(expired.id)
    assert entry is not None and entry.reason == "expired" and entry.queue == "lostq"
