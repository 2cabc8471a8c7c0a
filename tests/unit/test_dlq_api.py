"""The DLQ without servers: eager tasks, kombu's memory transport, the memory store."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from celery_reliable import PermanentError, ReliableTask, records
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.publisher import dlq_queue
from celery_reliable.dlq.signals import task_dead_lettered
from celery_reliable.errors import ConfigurationError, StoreUnavailable
from celery_reliable.runtime import runtime
from celery_reliable.states import State, queries, recorder, state_store
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.stores.model import DeadLetterQuery


def drain(app: Celery, queue: str) -> list[Any]:
    """Every message of ``queue`` (taken off it)."""
    out = []
    with Connection("memory://") as conn:
        bound = dlq_queue(queue).bind(conn.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=True)) is not None:
            out.append(message)
    return out


def shop(app: Celery) -> Any:
    @app.task(base=ReliableTask, idempotency_key="pay:{order}", shared=False, name="shop.pay")
    def pay(order: int, amount: int = 1) -> None:
        raise PermanentError(f"card of order {order} declined")

    return pay


def test_a_final_failure_is_published_indexed_and_announced(app: Celery) -> None:
    pay = shop(app)
    heard: list[dict[str, Any]] = []

    def receiver(sender: str, **kwargs: Any) -> None:
        heard.append({"sender": sender, **kwargs})

    task_dead_lettered.connect(receiver, weak=False)
    try:
        handle = pay.apply((7,), {"amount": 3})
    finally:
        task_dead_lettered.disconnect(receiver)
    [message] = drain(app, app.conf.reliable_dlq_queue)
    assert message.headers["x-reliable-task-id"] == handle.id
    assert message.headers["x-reliable-reason"] == "permanent_error"
    assert message.headers["x-reliable-exception-type"] == "PermanentError"
    assert "declined" in message.headers["x-reliable-traceback"]
    assert message.decode() == [[7], {"amount": 3}]
    entry = DeadLetters(app).get(handle.id)
    assert entry is not None and entry.exc_type == "PermanentError" and entry.attempts == 1
    assert entry.queue == app.conf.task_default_queue
    assert [(h["sender"], h["task_id"], h["reason"]) for h in heard] == [
        ("shop.pay", handle.id, "permanent_error")]


def test_dlq_can_be_turned_off_per_task(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, dlq_enabled=False)
    def quiet() -> None:
        raise PermanentError("no")

    handle = quiet.apply()
    assert drain(app, app.conf.reliable_dlq_queue) == []
    assert DeadLetters(app).get(handle.id) is not None  # indexed all the same


def test_replay_publishes_once_and_leaves_the_queue(app: Celery) -> None:
    pay = shop(app)
    handles = [pay.apply((n,)) for n in range(3)]
    letters = DeadLetters(app)
    result = letters.replay([handles[0].id, "nope"])
    assert result.replayed == [handles[0].id] and result.missing == ["nope"]
    assert result.removed_from_queue == 1
    [sent] = drain(app, app.conf.task_default_queue)
    assert sent.headers["id"] == handles[0].id and sent.headers["retries"] == 0
    assert sent.headers["reliable_key"] == "pay:0"
    again = letters.replay([handles[0].id])
    assert again.replayed == [] and again.skipped == [handles[0].id]
    assert drain(app, app.conf.task_default_queue) == []
    forced = letters.replay([handles[0].id], force=True, to_queue="elsewhere")
    assert forced.replayed == [handles[0].id]
    assert [m.headers["id"] for m in drain(app, "elsewhere")] == [handles[0].id]
    left = {m.headers["x-reliable-task-id"] for m in drain(app, app.conf.reliable_dlq_queue)}
    assert left == {handles[1].id, handles[2].id}


def test_dry_run_and_filters(app: Celery) -> None:
    pay = shop(app)
    handles = [pay.apply((n,)) for n in range(4)]
    letters = DeadLetters(app)
    dry = letters.replay(query=DeadLetterQuery(text="order 2"), dry_run=True)
    assert dry.would_replay == [handles[2].id] and dry.replayed == []
    purged = letters.purge(query=DeadLetterQuery(name="shop.pay"), limit=2)
    assert len(purged.purged) == 2 and purged.removed_from_queue == 2
    assert len(letters.list().entries) == 2
    with pytest.raises(ConfigurationError):
        letters.replay()
    with pytest.raises(ConfigurationError):
        letters.list(cursor="garbage")


def test_reconcile_indexes_dedupes_and_republishes(app: Celery) -> None:
    pay = shop(app)
    a, b, c = (pay.apply((n,)) for n in range(3))
    queue = app.conf.reliable_dlq_queue
    messages = drain(app, queue)
    with Connection("memory://") as conn:
        producer = conn.Producer()
        target = dlq_queue(queue)
        for m in [*messages, messages[0]]:  # a duplicate of a's dead letter
            if m.headers["x-reliable-task-id"] == c.id:
                continue  # c's message is lost
            producer.publish(m.body, exchange=target.exchange, routing_key=queue,
                             headers=m.headers, content_type=m.content_type,
                             content_encoding=m.content_encoding, declare=[target])
        producer.publish(b"\x00not ours", exchange=target.exchange, routing_key=queue,
                         content_type="application/octet-stream",
                         content_encoding="binary", headers={"foo": "bar"})
    store = runtime(app).store
    store.delete_dead_letters([b.id])  # b's entry is lost
    letters = DeadLetters(app)
    result = letters.reconcile()
    assert result.indexed == [b.id]
    assert result.republished == [c.id]
    assert result.duplicates_removed == 1
    [(foreign_id, problem)] = result.unreadable.items()
    assert foreign_id.startswith("foreign-") and "foreign" in problem
    foreign = letters.get(foreign_id)
    assert foreign is not None and foreign.reason == "foreign"
    assert letters.replay([foreign_id]).refused[foreign_id].startswith("not a task message")
    assert letters.show(foreign_id) is not None
    assert not letters.reconcile().changed  # agreed now
    ids = sorted(m.headers.get("x-reliable-task-id", "foreign") for m in drain(app, queue))
    assert ids == sorted([a.id, b.id, c.id, "foreign"])


def test_reconcile_indexes_a_message_with_its_own_dead_letter_time(app: Celery) -> None:
    pay = shop(app)
    handle = pay.apply((1,))
    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    entry = store.get_dead_letter(handle.id)
    assert entry is not None
    store.delete_dead_letters([handle.id])  # the index lost it; the queue has the message
    clock = store.clock
    store.clock = lambda: clock() + 3600  # reconcile runs an hour later
    assert DeadLetters(app).reconcile().indexed == [handle.id]
    again = store.get_dead_letter(handle.id)
    assert again is not None and again.dead_at == pytest.approx(entry.dead_at, abs=1)


def test_check_finds_old_unresolved_entries(app: Celery) -> None:
    pay = shop(app)
    handle = pay.apply((1,))
    letters = DeadLetters(app)
    assert letters.check(3600).ok
    old = letters.check(0)
    assert old.count == 1 and old.oldest is not None and old.oldest.task_id == handle.id
    letters.replay([handle.id])
    assert letters.check(0).ok


def test_replay_of_an_entry_without_state_history_starts_at_pending(app: Celery) -> None:
    shop(app)
    record, _ = records.encode(app, name="shop.pay", task_id="old-1", key="pay:9",
                               fingerprint="", args=[9], kwargs={}, options={})
    runtime(app).store.dead_letter("old-1", "pay:9", "permanent_error", "pruned long ago",
                                   fallback=record)
    assert DeadLetters(app).replay(["old-1"]).replayed == ["old-1"]
    [transition] = queries.timeline(app, task_id="old-1")
    assert transition.state is State.PENDING and transition.detail == {"replay": 1}


def test_replay_writes_replayed_before_publishing(app: Celery) -> None:
    pay = shop(app)
    handle = pay.apply((3,))
    recorder(app).flush(force=True)
    DeadLetters(app).replay([handle.id])
    states = [t.state for t in queries.timeline(app, task_id=handle.id)]
    assert states[-2:] == [State.DEAD_LETTERED, State.REPLAYED]


def test_a_replay_sooner_than_the_workers_flush_waits_for_the_final_failure(
    app: Celery,
) -> None:
    import threading

    from celery_reliable.states import state_store

    shop(app)
    record, _ = records.encode(app, name="shop.pay", task_id="early-1", key="pay:5",
                               fingerprint="", args=[5], kwargs={}, options={})
    rec = recorder(app)
    for state in (State.PENDING, State.RECEIVED, State.STARTED):
        rec.transition("early-1", "shop.pay", "pay:5", state)
    rec.flush(force=True)
    # The worker indexed the dead letter; its FAILED and DEAD_LETTERED are still buffered.
    runtime(app).store.dead_letter("early-1", "pay:5", "permanent_error", "declined",
                                   fallback=record)
    failed = rec.__class__(state_store(app))
    failed.transition("early-1", "shop.pay", "pay:5", State.FAILED)
    failed.transition("early-1", "shop.pay", "pay:5", State.DEAD_LETTERED)
    late_flush = threading.Timer(0.15, failed.flush, kwargs={"force": True})
    late_flush.start()
    try:
        assert DeadLetters(app).replay(["early-1"]).replayed == ["early-1"]
    finally:
        late_flush.join()
        failed.close()
    states = [t.state for t in queries.timeline(app, task_id="early-1")]
    assert states[-3:] == [State.FAILED, State.DEAD_LETTERED, State.REPLAYED]


def test_a_replay_the_broker_refuses_is_taken_back_and_can_be_made_again(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    pay = shop(app)
    handle = pay.apply((1,))
    recorder(app).flush(force=True)  # its run is recorded (else the replay finds nothing)
    letters = DeadLetters(app)

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker is down")

    monkeypatch.setattr(app, "send_task", down)
    failed = letters.replay([handle.id])
    assert failed.replayed == [] and "broker is down" in failed.failed[handle.id]
    assert failed.removed_from_queue == 0  # its DLQ message stays
    monkeypatch.undo()
    entry = letters.get(handle.id)
    assert entry is not None and not entry.replayed  # taken back: not "already replayed"
    recorder(app).flush(force=True)
    last = queries.timeline(app, handle.id)[-1]
    assert last.state is State.DEAD_LETTERED and "broker is down" in last.detail["replay_failed"]
    again = letters.replay([handle.id])
    assert again.replayed == [handle.id]
    assert [m.headers["id"] for m in drain(app, app.conf.task_default_queue)] == [handle.id]


def test_a_replay_whose_record_cannot_be_stored_is_not_published(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Persist before publish holds for replays too: no record, no message."""
    pay = shop(app)
    handle = pay.apply((2,))
    store = runtime(app).store

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("store is unreachable")

    monkeypatch.setattr(store, "publish_many", down)
    failed = DeadLetters(app).replay([handle.id])
    assert list(failed.failed) == [handle.id] and failed.replayed == []
    assert drain(app, app.conf.task_default_queue) == []
    monkeypatch.undo()
    entry = DeadLetters(app).get(handle.id)
    assert entry is not None and not entry.replayed


def test_a_state_store_down_never_stops_a_replay(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    pay = shop(app)
    handle = pay.apply((3,))
    recorder(app).flush(force=True)

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("state store is unreachable")

    monkeypatch.setattr(state_store(app), "record", down)
    result = DeadLetters(app).replay([handle.id])
    assert result.replayed == [handle.id]
    assert runtime(app).counters["state_error"] == 1
