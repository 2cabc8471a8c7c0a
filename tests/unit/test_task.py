"""ReliableTask without servers: eager mode, and publishing to kombu's memory transport."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable import (
    ARGUMENTS,
    ConfigurationError,
    IdempotencyKeyConflict,
    IdempotencyKeyError,
    PermanentError,
    ReliableTask,
    StoreUnavailable,
    UnpersistableTask,
)
from celery_reliable.records import decode
from celery_reliable.runtime import reset, runtime
from celery_reliable.stores.memory import MemoryStore
from tests.harness import dead_records


def test_eager_runs_once_per_key_and_skips_with_the_first_result(app: Celery) -> None:
    calls: list[tuple[int, str]] = []

    @app.task(base=ReliableTask, bind=True, idempotency_key="receipt:{order_id}", shared=False)
    def send_receipt(self: ReliableTask, order_id: int) -> dict[str, int]:
        calls.append((order_id, self.idempotency_key))
        return {"order": order_id}

    assert send_receipt.apply((1,)).get() == {"order": 1}
    assert send_receipt.apply(kwargs={"order_id": 1}).get() == {"order": 1}
    assert send_receipt.apply((2,)).get() == {"order": 2}
    assert calls == [(1, "receipt:1"), (2, "receipt:2")]
    assert runtime(app).counters["deduplicated"] == 1


def test_always_eager_apply_async(app: Celery) -> None:
    app.conf.task_always_eager = True
    calls = []

    @app.task(base=ReliableTask, idempotency_key=ARGUMENTS, shared=False)
    def add(x: int, y: int) -> int:
        calls.append((x, y))
        return x + y

    assert add.delay(1, 2).get() == 3
    assert add.delay(1, 2).get() == 3
    assert add.delay(x=1, y=2).get() == 3
    assert calls == [(1, 2)]


def test_direct_call_is_a_plain_function_call(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False)
    def double(x: int) -> int:
        return x * 2

    assert double(2) == 4 and double(2) == 4
    assert runtime(app).counters["deduplicated"] == 0


def test_permanent_failure_releases_the_key_and_records_a_dead_letter(app: Celery) -> None:
    attempts = []

    @app.task(base=ReliableTask, idempotency_key="flaky:{n}", shared=False)
    def flaky(n: int) -> str:
        attempts.append(n)
        if len(attempts) == 1:
            raise PermanentError("mailer said no")
        return "ok"

    with pytest.raises(PermanentError):
        flaky.apply((1,), throw=True)
    store = runtime(app).store
    assert store.get_key("flaky:1") is None  # released: a replay can run
    [letter] = dead_records(store)
    assert letter.reason == "permanent_error" and "mailer said no" in (letter.error or "")
    assert flaky.apply((1,)).get() == "ok"
    assert attempts == [1, 1]


def test_a_stale_copy_of_a_dead_letter_is_absorbed_until_a_replay(app: Celery) -> None:
    runs = []

    @app.task(base=ReliableTask, idempotency_key="pay:{n}", shared=False)
    def pay(n: int) -> str:
        runs.append(n)
        if len(runs) == 1:
            raise PermanentError("card declined")
        return "paid"

    task_id = str(uuid.uuid4())
    with pytest.raises(PermanentError):
        pay.apply((1,), task_id=task_id, throw=True)
    stale = pay.apply((1,), task_id=task_id)  # a redelivered copy of the same message
    assert stale.state == "IGNORED" and runs == [1]
    assert runtime(app).counters["dead_letter_copy_absorbed"] == 1
    assert runtime(app).store.claim_replays([task_id], force=False) == [task_id]
    assert pay.apply((1,), task_id=task_id).get() == "paid"
    assert runs == [1, 1]


def test_transient_failures_are_retried_then_succeed_once(app: Celery) -> None:
    app.conf.reliable_retry_backoff_base = 0
    effects: list[int] = []
    attempts: list[int] = []

    @app.task(base=ReliableTask, bind=True, retry_on=(ConnectionError,),
              idempotency_key=ARGUMENTS, shared=False)
    def send(self: ReliableTask, n: int) -> int:
        attempts.append(self.request.retries + 1)
        if len(attempts) <= 3:
            raise ConnectionError("smtp timeout")
        effects.append(n)
        return self.request.retries + 1

    assert send.apply((1,)).get() == 4
    assert attempts == [1, 2, 3, 4] and effects == [1]
    assert runtime(app).counters["retried"] == 3
    assert send.apply((1,)).get() == 4  # done: skipped, the first result
    assert effects == [1]


def test_apply_neither_spends_nor_is_refused_by_the_shared_retry_budget(app: Celery) -> None:
    # No retry is ever granted to a worker: the budget is spent before it starts.
    app.conf.reliable_retry_backoff_base = 0
    app.conf.reliable_retry_budget_ratio = 0
    app.conf.reliable_retry_budget_floor = 0
    attempts: list[int] = []

    @app.task(base=ReliableTask, bind=True, max_attempts=2, shared=False)
    def down(self: ReliableTask, n: int) -> None:
        attempts.append(self.request.retries + 1)
        raise TimeoutError(f"down {n}")

    for n in range(3):  # the task's own error every time, whatever the calls before did
        result = down.apply((n,))
        assert isinstance(result.result, TimeoutError), result.result
    assert attempts == [1, 2] * 3
    assert runtime(app).counters["retry_budget_exhausted"] == 0


def test_attempts_are_bounded(app: Celery) -> None:
    app.conf.reliable_retry_backoff_base = 0
    attempts: list[int] = []

    @app.task(base=ReliableTask, bind=True, max_attempts=3, shared=False)
    def down(self: ReliableTask) -> None:
        attempts.append(self.request.retries + 1)
        raise TimeoutError("still down")

    result = down.apply()
    assert isinstance(result.result, TimeoutError)
    assert attempts == [1, 2, 3]
    [letter] = dead_records(runtime(app).store)
    assert letter.reason == "attempts_exhausted"


def test_per_task_key_callable_and_subclass(app: Celery) -> None:
    class ChargeTask(ReliableTask):
        lease_seconds = 5

        def idempotency_key(self, customer: str, amount: int) -> str:  # type: ignore[override]
            return f"charge:{customer}:{amount}"

    @app.task(base=ChargeTask, bind=True, shared=False)
    def charge(self: ReliableTask, customer: str, amount: int) -> str:
        return str(self.idempotency_key)

    assert charge.apply(("c1", 10)).get() == "charge:c1:10"
    assert charge.reliable_settings().lease_seconds == 5


def test_template_naming_an_unknown_argument_fails_at_definition(app: Celery) -> None:
    with pytest.raises(IdempotencyKeyError, match=r"names 'order'.*takes \(order_id\)"):

        @app.task(base=ReliableTask, idempotency_key="receipt:{order}", shared=False)
        def send_receipt(order_id: int) -> None: ...

        app.finalize()  # the worker's start-up: every task is created


def test_turning_off_late_acks_is_refused(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="acks_late=True"):

        @app.task(base=ReliableTask, acks_late=False, shared=False)
        def fragile() -> None: ...

        app.finalize()


def test_publish_persists_then_dedupes(app: Celery) -> None:
    @app.task(base=ReliableTask, idempotency_key="receipt:{order_id}", shared=False,
              name="shop.send_receipt")
    def send_receipt(order_id: int) -> None: ...

    first = send_receipt.apply_async((7,), countdown=30, queue="mail")
    again = send_receipt.delay(7)
    assert again.id == first.id
    store = runtime(app).store
    record = store.get_record(first.id, "receipt:7")
    assert record is not None and record.name == "shop.send_receipt"
    args, kwargs, options = decode(app, record)
    assert (args, kwargs) == ([7], {})
    assert options["queue"] == "mail" and "eta" in options
    assert options["headers"]["reliable_key"] == "receipt:7"


def _trace_publishes(
    app: Celery, task: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], Any]:
    """(events, disconnect): when the store's answer is read, and Celery's
    before/after_task_publish signals of ``task``."""
    from celery.signals import after_task_publish, before_task_publish

    events: list[str] = []
    store = runtime(app).store
    publish_soon = store.publish_soon

    def traced(*args: Any, **kwargs: Any) -> Any:
        answer = publish_soon(*args, **kwargs)

        def read() -> Any:
            events.append("answer read")
            return answer()

        return read

    monkeypatch.setattr(store, "publish_soon", traced)

    def built(**_: Any) -> None:
        events.append("message built")

    def sent(**_: Any) -> None:
        events.append("sent")

    before_task_publish.connect(built, sender=task.name, weak=False)
    after_task_publish.connect(sent, sender=task.name, weak=False)

    def disconnect() -> None:
        before_task_publish.disconnect(built, sender=task.name)
        after_task_publish.disconnect(sent, sender=task.name)

    return events, disconnect


def test_the_store_answers_once_the_message_is_built(
    app: Celery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    @app.task(base=ReliableTask, shared=False)
    def task(n: int) -> None: ...

    events, disconnect = _trace_publishes(app, task, monkeypatch)
    try:
        task.delay(1)
    finally:
        disconnect()
    # without a declared key nothing can stop the publish: the round trip overlaps it
    assert events == ["message built", "answer read", "sent"]


def test_a_duplicate_is_decided_before_publishing_and_fires_no_publish_signal(
    app: Celery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    @app.task(base=ReliableTask, idempotency_key="order:{n}", shared=False,
              ignore_result=True)
    def task(n: int) -> None: ...

    events, disconnect = _trace_publishes(app, task, monkeypatch)
    try:
        first, second = task.delay(1), task.delay(1)
    finally:
        disconnect()
    assert second.id == first.id
    # before_task_publish fires only for the message that is sent, after_task_publish too
    assert events == ["answer read", "message built", "sent", "answer read"]
    assert _queued(app) == 1
    # as Celery's own handle of an ignore_result task: .get() returns at once
    assert first.ignored is True and second.ignored is True
    assert second.get(timeout=1) is None


def _queued(app: Celery) -> int:
    with app.connection_for_write() as connection:
        return int(connection.default_channel.queue_declare(
            app.conf.task_default_queue, passive=True
        ).message_count)


def test_canvas_publishes_through_the_gate(app: Celery) -> None:
    from celery import chain, group

    @app.task(base=ReliableTask, idempotency_key="order:{n}", shared=False)
    def step(n: int) -> int:
        return n

    result = chain(step.s(1), step.s()).apply_async()
    record = runtime(app).store.get_record(result.parent.id, "order:1")
    assert record is not None and "chain" in decode(app, record)[2]  # the rest of the chain
    assert _queued(app) == 1
    # members have frozen ids, promised to the group's result: each is sent (and the
    # claim answers the duplicate), while a call without an id is answered at once
    members = group(step.s(2), step.s(3), step.s(2)).apply_async()
    assert len({r.id for r in members.results}) == 3
    assert _queued(app) == 4
    assert step.delay(2).id == members.results[0].id
    assert _queued(app) == 4
    with_callback = step.apply_async((2,), link=step.s())  # its callback must run
    assert with_callback.id != members.results[0].id
    assert _queued(app) == 5


def test_threads_publishing_at_once_each_get_their_own_answer(app: Celery, prefix: str) -> None:
    """Each thread's store calls go on its own connection, read back by its own gate."""
    import threading

    from tests.servers import REDIS

    app.conf.reliable_store_url = REDIS.require() + "/14"
    app.conf.reliable_key_prefix = prefix
    app.conf.reliable_state_enabled = False  # nothing written after the clean-up below

    @app.task(base=ReliableTask, idempotency_key="order:{n}", shared=False)
    def task(n: int) -> None: ...

    ids: dict[int, set[str]] = {n: set() for n in range(40)}
    lock = threading.Lock()

    def publish(offset: int) -> None:
        for i in range(60):
            n = (i + offset) % 40
            task_id = task.delay(n).id
            with lock:
                ids[n].add(task_id)

    threads = [threading.Thread(target=publish, args=(k * 7,)) for k in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(len(found) == 1 for found in ids.values()), ids  # one task per key
        assert _queued(app) == 40
    finally:
        client = redis.Redis.from_url(app.conf.reliable_store_url)
        for name in client.scan_iter(match=f"{{{prefix}*", count=1000):
            client.delete(name)


def test_a_connection_given_per_call_is_used(app: Celery) -> None:
    @app.task(base=ReliableTask, idempotency_key=ARGUMENTS, shared=False)
    def task(n: int) -> None: ...

    with app.connection_for_write() as connection:
        first = task.apply_async((1,), connection=connection)
        again = task.apply_async((1,), connection=connection)
    assert again.id == first.id
    assert _queued(app) == 1


def test_same_key_other_arguments_is_refused_at_publish(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False)
    def charge(customer: str, amount: int) -> None: ...

    charge.apply_async(("c1", 10), idempotency_key="charge-1")
    with pytest.raises(IdempotencyKeyConflict, match="different arguments"):
        charge.apply_async(("c1", 99), idempotency_key="charge-1")


def test_unserializable_arguments_are_a_clear_error(app: Celery) -> None:
    @app.task(base=ReliableTask, idempotency_key="obj:{n}", shared=False)
    def takes(n: int, thing: Any) -> None: ...

    with pytest.raises(UnpersistableTask, match="cannot be serialized"):
        takes.delay(1, object())


def test_the_record_is_written_with_the_tasks_own_serializer(app: Celery) -> None:
    """A task declared ``serializer="pickle"`` has its record written with pickle, so a
    rescue republishes the call it made (JSON, the app's default, made a tuple a list)."""
    app.conf.accept_content = ["json", "pickle"]

    @app.task(base=ReliableTask, idempotency_key="pair:{n}", serializer="pickle", shared=False)
    def takes(n: int, pair: tuple[int, int]) -> None: ...

    result = takes.delay(1, (1, 2))
    record = runtime(app).store.get_record(result.id, "pair:1")
    assert record is not None and record.content_type == "application/x-python-serialize"
    args, kwargs, options = decode(app, record)
    assert (args, kwargs) == ([1, (1, 2)], {})
    assert options["serializer"] == "pickle"  # a republish and a replay's record use it too


def test_store_down_at_publish_raises_by_default(app: Celery) -> None:
    app.conf.reliable_store_url = "redis://127.0.0.1:1/0"

    @app.task(base=ReliableTask, shared=False)
    def task(n: int) -> None: ...

    with pytest.raises(StoreUnavailable, match="unreachable"):
        task.delay(1)


def test_store_down_at_publish_can_publish_anyway(app: Celery) -> None:
    app.conf.reliable_store_url = "redis://127.0.0.1:1/0"
    app.conf.reliable_on_store_down_at_publish = "publish"

    @app.task(base=ReliableTask, shared=False)
    def task(n: int) -> None: ...

    assert task.delay(1).id
    assert runtime(app).counters["published_unrecorded"] == 1


def test_rescuer_republishes_a_lost_record_to_its_queue(app: Celery) -> None:
    from celery_reliable.stores.model import SweepPolicy
    from celery_reliable.worker.rescue import Rescuer

    @app.task(base=ReliableTask, shared=False, name="shop.lost")
    def lost(n: int) -> None: ...

    app.conf.reliable_rescue_after = 0.1
    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    handle = lost.apply_async((5,), queue="lostq")
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("lostq")  # the broker lost it
        store.clock = lambda: 10**10  # far in the future: every deadline passed
        rescuer = Rescuer(runtime(app), "test")
        rescuer.policy = SweepPolicy(0.1, 1, 100)
        assert rescuer.sweep_once() == 1
        message = conn.SimpleQueue("lostq").get(timeout=1)
        assert message.headers["id"] == handle.id
        assert message.headers["reliable_key"] == lost.key_for((5,), {}, task_id=handle.id)[0]
        assert message.headers["reliable_key"] == handle.id  # no key declared: its publish
        assert json.loads(message.body)[0] == [5]


def test_app_wide_task_cls_makes_every_task_reliable() -> None:
    app = Celery(f"wide{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False,
                 task_cls="celery_reliable:ReliableTask")
    app.conf.reliable_store_url = "memory://"
    calls: list[int] = []

    @app.task(shared=False)
    def charge(n: int) -> int:
        calls.append(n)
        return n

    try:
        assert isinstance(charge._get_current_object(), ReliableTask)
        assert charge.acks_late and charge.reject_on_worker_lost
        first = charge.apply((1,))
        assert first.get() == 1
        assert charge.apply((1,), task_id=first.id).get() == 1  # a copy: skipped
        assert calls == [1]
        assert charge.apply((1,)).get() == 1  # a second call: runs (no key declared)
        assert calls == [1, 1]
    finally:
        reset(app)


def test_a_hash_key_and_the_fingerprint_share_one_serialization(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serializing the arguments is a publish's largest cost for a big payload: done once,
    with the same key and fingerprint as when each is derived on its own."""
    from celery_reliable import keys

    @app.task(base=ReliableTask, idempotency_key=ARGUMENTS, shared=False,
              name="shop.import_batch")
    def import_batch(rows: list[dict[str, Any]]) -> None: ...

    rows = [{"sku": f"s{i}", "qty": i} for i in range(50)]
    arguments = {"rows": rows}
    expected = (keys.derive_key("shop.import_batch", ARGUMENTS, arguments, (rows,), {}),
                keys.fingerprint(arguments))
    canonical, calls = keys.canonical, []

    def counted(arguments: Any) -> str:
        calls.append(1)
        return canonical(arguments)

    monkeypatch.setattr(keys, "canonical", counted)
    assert import_batch.key_for((rows,), {}) == expected
    assert len(calls) == 1


def test_a_retry_is_published_after_its_lease_is_released(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Published first, the next attempt could reach another worker while this one
    still holds the lease: it would be absorbed as a copy of a running task."""
    from celery_reliable.task.outcomes import Outcomes

    app.conf.reliable_retry_backoff_base = 0
    seen: list[str | None] = []
    republish = Outcomes._republish

    def watching(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = runtime(app).store.get_key("flaky:1")
        seen.append(state.state if state is not None else None)
        return republish(self, *args, **kwargs)

    monkeypatch.setattr(Outcomes, "_republish", watching)
    runs: list[int] = []

    @app.task(base=ReliableTask, retry_on=(ConnectionError,), idempotency_key="flaky:{n}",
              shared=False)
    def flaky(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            raise ConnectionError("timeout")
        return n

    assert flaky.apply((1,)).get() == 1
    assert seen == ["queued"]  # released (requeued) when the next attempt went out


def test_self_retry_releases_the_lease_before_celery_publishes_the_next_attempt(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.app.task import Task

    seen: list[str | None] = []
    celery_retry = Task.retry

    def watching(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = runtime(app).store.get_key("poll:1")
        seen.append(state.state if state is not None else None)
        return celery_retry(self, *args, **kwargs)

    monkeypatch.setattr(Task, "retry", watching)
    runs: list[int] = []

    @app.task(base=ReliableTask, bind=True, idempotency_key="poll:{n}", shared=False)
    def poll(self: ReliableTask, n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            raise self.retry(countdown=0)
        return n

    assert poll.apply((1,)).get() == 1
    assert runs == [1, 1] and seen == ["queued"]
