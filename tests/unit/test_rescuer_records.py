"""What the rescuer does with a lost record it must not simply republish: one it cannot
decode, one past its expiry, one republished too often and never received; and a
republish the broker refuses.  Each ends once, never in a loop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.records import utcnow
from celery_reliable.runtime import runtime
from celery_reliable.states import State, recorder, state_store
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.stores.model import SweepPolicy
from celery_reliable.worker.rescue import Rescuer

QUEUE = "lostq"


@pytest.fixture
def lost(app: Celery) -> Any:
    @app.task(base=ReliableTask, shared=False, name="shop.lost", idempotency_key="lost:{n}")
    def lost(n: int) -> None: ...

    return lost


@pytest.fixture
def sweeper(app: Celery) -> Iterator[Rescuer]:
    rescuer = Rescuer(runtime(app), "test")
    rescuer.policy = SweepPolicy(0.1, 1, 100)
    yield rescuer


def queued(app: Celery, queue: str = QUEUE) -> int:
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            return int(simple.qsize())
        finally:
            simple.close()


def lose(app: Celery) -> None:
    """The broker loses what was published, and every record's deadline passes."""
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)
    later(app)


def later(app: Celery) -> None:
    """A day passes on the store's clock: every deadline it set is behind it."""
    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    now = store.clock() + 86_400
    store.clock = lambda: now


def test_a_record_it_cannot_decode_is_dead_lettered_once(
    app: Celery, lost: Any, sweeper: Rescuer
) -> None:
    # written by a producer whose serializer this app does not accept
    handle = lost.apply_async((1,), queue=QUEUE, serializer="pickle")
    lose(app)
    assert sweeper.sweep_once() == 1
    assert queued(app) == 0  # not republished
    letter = runtime(app).store.get_dead_letter(handle.id)
    assert letter is not None and letter.record.reason == "undecodable"
    assert queued(app, app.conf.reliable_dlq_queue) == 1
    assert sweeper.sweep_once() == 0  # and never again
    assert runtime(app).counters["dead_lettered_undecodable"] == 1


def test_a_record_past_its_expiry_is_dead_lettered_not_republished(
    app: Celery, lost: Any, sweeper: Rescuer
) -> None:
    handle = lost.apply_async((2,), queue=QUEUE, expires=utcnow() - timedelta(seconds=1))
    lose(app)
    assert sweeper.sweep_once() == 1
    assert queued(app) == 0
    letter = runtime(app).store.get_dead_letter(handle.id)
    assert letter is not None and letter.record.reason == "expired"
    recorder(app).flush(force=True)
    assert [t.state for t in state_store(app).timeline(handle.id)] == [
        State.PENDING, State.EXPIRED, State.DEAD_LETTERED
    ]


def test_a_record_never_received_is_dead_lettered_after_its_rescues(
    app: Celery, lost: Any, sweeper: Rescuer
) -> None:
    rt = runtime(app)
    rt.settings = replace(rt.settings, max_rescues=2)  # reliable_max_rescues = 2
    handle = lost.apply_async((3,), queue=QUEUE)
    lose(app)
    swept = []
    for _ in range(3):
        swept.append(sweeper.sweep_once())
        later(app)
    assert swept == [1, 1, 1]
    assert queued(app) == 2  # republished twice, then given up on
    letter = runtime(app).store.get_dead_letter(handle.id)
    assert letter is not None and letter.record.reason == "never_received"
    assert f"is a worker consuming queue {QUEUE!r}" in (letter.record.error or "")
    assert sweeper.sweep_once() == 0


def test_a_republish_the_broker_refuses_is_counted_and_tried_at_the_next_sweep(
    app: Celery, lost: Any, sweeper: Rescuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost.apply_async((4,), queue=QUEUE)
    lose(app)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker is down")

    monkeypatch.setattr(app, "send_task", refused)
    assert sweeper.sweep_once() == 1
    assert runtime(app).counters["rescue_publish_error"] == 1
    monkeypatch.undo()
    assert sweeper.sweep_once() == 0  # its deadline moved on
    later(app)
    assert sweeper.sweep_once() == 1
    assert queued(app) == 1
    assert runtime(app).counters["rescued"] == 1


def test_a_dead_letter_the_dlq_queue_refuses_is_tried_again_at_the_next_sweep(
    app: Celery, lost: Any, sweeper: Rescuer, dlq_down: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = lost.apply_async((5,), queue=QUEUE, expires=utcnow() - timedelta(seconds=1))
    lose(app)
    assert sweeper.sweep_once() == 1
    store = runtime(app).store
    assert store.get_dead_letter(handle.id) is None
    assert store.get_record(handle.id, "lost:5") is not None  # still pending: not lost
    monkeypatch.undo()  # the DLQ queue is back
    later(app)
    assert sweeper.sweep_once() == 1
    letter = store.get_dead_letter(handle.id)
    assert letter is not None and letter.record.reason == "expired"


def test_a_rescue_republishes_with_the_serializer_the_call_was_made_with(
    app: Celery, sweeper: Rescuer
) -> None:
    """A ``serializer="pickle"`` task's record is pickle, and so is its rescued message:
    sent with the app's default (JSON), its tuple would arrive as a list."""
    app.conf.accept_content = ["json", "pickle"]

    @app.task(base=ReliableTask, shared=False, name="shop.pair", idempotency_key="pair:{n}",
              serializer="pickle")
    def pair(n: int, both: tuple[int, int]) -> None: ...

    pair.apply_async((1, (1, 2)), queue=QUEUE)
    lose(app)
    assert sweeper.sweep_once() == 1
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(QUEUE, accept=["json", "pickle"])
        try:
            message = simple.get(timeout=2)
        finally:
            simple.close()
    assert message.content_type == "application/x-python-serialize"
    args, _, _ = message.decode()
    assert list(args) == [1, (1, 2)]  # a list [1, 2] would not compare equal
