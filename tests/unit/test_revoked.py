"""A revoked or expired ReliableTask (worker/signals.py ``on_task_revoked``): what is kept
when its record was never persisted, and when the store is down at that moment."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ReliableTask, StoreUnavailable
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.signals import task_dead_lettered
from celery_reliable.records import decode
from celery_reliable.runtime import runtime
from celery_reliable.states import State, recorder, state_store
from celery_reliable.worker.signals import on_task_revoked
from tests.unit.test_claim_ahead import received


@pytest.fixture
def refund(app: Celery) -> Any:
    @app.task(base=ReliableTask, shared=False, idempotency_key="refund:{order}")
    def refund(order: int, amount: int) -> None: ...

    return refund


def revoke(task: Any, request: Any, expired: bool = False) -> None:
    """The signal as Celery sends it: with the request's Context (worker/request.py,
    ``_announce_revoked``), whose ``headers`` hold the message's custom headers."""
    on_task_revoked(sender=task, request=request._context, terminated=False, expired=expired)


def test_a_revoked_task_without_a_record_is_dead_lettered_from_its_message(
    app: Celery, refund: Any
) -> None:
    app.conf.reliable_persist_on_publish = False
    request = received(app, refund, 5, 30)
    store = runtime(app).store
    assert store.get_record(request.id, "refund:5") is None
    revoke(refund, request)
    letter = store.get_dead_letter(request.id)
    assert letter is not None and letter.record.reason == "revoked"
    # built from the request: a replay republishes the same call
    args, kwargs, _ = decode(app, letter.record)
    assert (list(args), kwargs) == ([5, 30], {})
    recorder(app).flush(force=True)
    assert [t.state for t in state_store(app).timeline(request.id)][-2:] == [
        State.REVOKED, State.DEAD_LETTERED
    ]
    assert runtime(app).counters["dead_lettered_revoked"] == 1


def test_an_expired_task_seen_while_the_store_is_down_is_counted_and_logged(
    app: Celery, refund: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    request = received(app, refund, 6, 10)
    store = runtime(app).store

    def down(*args: Any) -> None:
        raise StoreUnavailable("store is unreachable")

    monkeypatch.setattr(store, "get_record", down)
    with caplog.at_level(logging.ERROR, logger="celery_reliable"):
        revoke(refund, request, expired=True)  # must not raise
    assert runtime(app).counters["store_error"] == 1
    assert "expired, but the store could not record it" in caplog.text
    monkeypatch.undo()
    # nothing indexed; the persisted record is still there for the rescuer
    assert store.get_dead_letter(request.id) is None
    assert store.get_record(request.id, "refund:6") is not None


def test_a_revoked_task_is_indexed_when_the_dlq_queue_is_down_and_published_later(
    app: Celery, refund: Any, dlq_down: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery acknowledges a revoked message whatever we do: the entry is indexed without
    its DLQ message, and ``reconcile`` publishes it once the queue takes it."""
    request = received(app, refund, 7, 20)
    revoke(refund, request)
    monkeypatch.undo()  # the DLQ queue is back
    counters = runtime(app).counters
    assert counters["dlq_publish_error"] == 1 and counters["dlq_indexed_only"] == 1
    letters = DeadLetters(app)
    assert [e.task_id for e in letters.list().entries] == [request.id]
    assert letters.reconcile().republished == [request.id]
    assert not letters.reconcile().changed


def test_a_failing_dead_letter_receiver_is_counted_and_changes_nothing(
    app: Celery, refund: Any
) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("pager service down")

    task_dead_lettered.connect(broken, weak=False)
    try:
        request = received(app, refund, 8, 20)
        revoke(refund, request)
    finally:
        task_dead_lettered.disconnect(broken)
    assert runtime(app).counters["signal_error"] == 1
    assert runtime(app).store.get_dead_letter(request.id) is not None
