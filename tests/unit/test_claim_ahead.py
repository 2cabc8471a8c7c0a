"""Claims sent when a message arrives (solo pool): Celery's own Request, trace and signal
handler, on kombu's memory transport and the memory store."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.worker.request import Request

from celery_reliable import ReliableTask
from celery_reliable.runtime import runtime
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import ClaimStatus, DeadLetterQuery
from celery_reliable.worker.claim_ahead import on_task_received
from celery_reliable.worker.steps import _runs_inline

LIMITED: defaultdict[str, Any] = defaultdict(lambda: object())  # every task has a bucket


def consumer(buckets: defaultdict[str, Any] | None = None) -> Any:
    return SimpleNamespace(
        task_buckets=buckets if buckets is not None else defaultdict(lambda: None)
    )


@pytest.fixture
def receipt(app: Celery) -> Iterator[Any]:
    runs: list[int] = []

    @app.task(base=ReliableTask, shared=False, idempotency_key="receipt:{order_id}")
    def send_receipt(order_id: int) -> int:
        runs.append(order_id)
        return order_id

    runtime(app).claim_ahead.enabled = True  # what the worker step does in a solo worker
    send_receipt.runs = runs
    yield send_receipt


def received(app: Celery, task: Any, *args: Any, **options: Any) -> Request:
    """The worker's Request of a message ``task`` published (taken off the queue)."""
    task.apply_async(args, **options)
    return taken(app, task)


def taken(app: Celery, task: Any) -> Request:
    """The worker's Request of the next message of the task queue (acknowledged)."""
    with app.connection_for_read() as conn:
        message = conn.SimpleQueue(app.conf.task_default_queue).get(timeout=2)
        message.ack()
    return Request(message, app=app, task=task, hostname="w@test")


def no_claim_in_the_body(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def claim(*args: Any) -> Any:
        raise AssertionError("the body claimed again: the claim sent ahead was not used")

    monkeypatch.setattr(store, "claim", claim)


def test_the_claim_is_sent_on_arrival_and_the_body_reads_its_answer(
    app: Celery, receipt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = runtime(app).store
    request = received(app, receipt, 7)
    on_task_received(sender=consumer(), request=request)
    state = store.get_key("receipt:7")
    assert state is not None and state.state == "running" and state.task_id == request.id
    owner = state.owner
    no_claim_in_the_body(store, monkeypatch)
    request.execute()  # what the solo pool does right after the signal
    assert receipt.runs == [7]
    done = store.get_key("receipt:7")
    assert done is not None and done.state == "done" and done.task_id == request.id
    assert owner is not None and owner.startswith("w@test:")


def test_a_duplicate_claimed_ahead_is_skipped(
    app: Celery, receipt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = received(app, receipt, 8)
    on_task_received(sender=consumer(), request=first)
    first.execute()
    copy = received(app, receipt, 8, task_id="copy-of-8")  # named: published, not deduped
    on_task_received(sender=consumer(), request=copy)
    no_claim_in_the_body(runtime(app).store, monkeypatch)
    copy.execute()
    assert receipt.runs == [8]
    assert runtime(app).counters["deduplicated"] == 1


@pytest.mark.parametrize(
    "options, buckets, why",
    [
        ({"countdown": 30}, None, "an ETA: Celery holds it on a timer"),
        ({"headers": {"retries": 1}}, None, "a retry: the retry budget is asked first"),
        ({}, LIMITED, "a rate limit: Celery holds it in a token bucket"),
    ],
)
def test_no_claim_when_the_body_does_not_follow_at_once(
    app: Celery, receipt: Any, options: dict[str, Any], buckets: Any, why: str
) -> None:
    request = received(app, receipt, 9, **options)
    on_task_received(sender=consumer(buckets), request=request)
    assert runtime(app).store.get_key("receipt:9").state == "queued", why  # type: ignore[union-attr]


def test_no_claim_for_a_task_behind_a_circuit_breaker(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, idempotency_key="smtp:{n}", dependency="smtp")
    def call_smtp(n: int) -> None: ...

    runtime(app).claim_ahead.enabled = True
    on_task_received(sender=consumer(), request=received(app, call_smtp, 1))
    assert runtime(app).store.get_key("smtp:1").state == "queued"  # type: ignore[union-attr]


def test_no_claim_when_not_enabled(app: Celery, receipt: Any) -> None:
    runtime(app).claim_ahead.enabled = False  # a prefork or threads worker
    on_task_received(sender=consumer(), request=received(app, receipt, 10))
    assert runtime(app).store.get_key("receipt:10").state == "queued"  # type: ignore[union-attr]


def test_a_claim_whose_task_never_ran_is_given_back(app: Celery, receipt: Any) -> None:
    rt = runtime(app)
    lost = received(app, receipt, 11)
    on_task_received(sender=consumer(), request=lost)  # ... and Celery dropped it
    nxt = received(app, receipt, 12)
    on_task_received(sender=consumer(), request=nxt)
    state = rt.store.get_key("receipt:11")
    assert state is not None and state.state == "queued" and state.task_id == lost.id
    assert rt.store.get_record(lost.id, "receipt:11") is not None  # the rescuer's to bring back
    assert rt.counters["claim_ahead_unused"] == 1
    nxt.execute()
    assert receipt.runs == [12]


def test_a_task_revoked_after_its_claim_is_dead_lettered_and_the_next_one_runs(
    app: Celery, receipt: Any
) -> None:
    from celery_reliable.worker.signals import on_task_revoked

    rt = runtime(app)
    request = received(app, receipt, 13)
    on_task_received(sender=consumer(), request=request)
    on_task_revoked(sender=receipt, request=request._context)  # what Celery sends
    assert rt.store.get_key("receipt:13") is None  # dead-lettered: the key is forgotten
    page = rt.store.list_dead_letters(DeadLetterQuery())
    assert [(d.task_id, d.record.reason) for d in page.entries] == [(request.id, "revoked")]
    nxt = received(app, receipt, 14)
    on_task_received(sender=consumer(), request=nxt)
    assert rt.store.get_key("receipt:13") is None  # giving the claim back wrote nothing
    nxt.execute()
    assert receipt.runs == [14]


def test_the_first_reply_comes_back_to_the_body(
    app: Celery, receipt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is busy when the message arrives: the body skips as it would have.
    rt = runtime(app)
    rt.store.claim("receipt:15", receipt.key_for((15,), {})[1], "other", "elsewhere", 30, 3)
    request = received(app, receipt, 15, task_id="second")
    on_task_received(sender=consumer(), request=request)
    answer = rt.claim_ahead._ahead
    assert answer is not None and answer.answer().status is ClaimStatus.BUSY
    no_claim_in_the_body(rt.store, monkeypatch)
    request.execute()
    assert receipt.runs == []


@pytest.mark.parametrize(
    "pool, inline", [(SoloPool, True), (PreforkPool, False), (ThreadPool, False), (None, False)]
)
def test_only_the_solo_pool_claims_ahead(pool: Any, inline: bool) -> None:
    assert _runs_inline(SimpleNamespace(pool_cls=pool)) is inline


@pytest.mark.parametrize("setting", [True, False])
def test_the_worker_step_turns_it_on_in_a_solo_worker_unless_the_setting_is_off(
    app: Celery, setting: bool
) -> None:
    from celery_reliable.worker.steps import ReliableWorkerStep

    app.conf.reliable_claim_ahead = setting

    @app.task(base=ReliableTask, shared=False)
    def noop() -> None: ...

    ReliableWorkerStep(SimpleNamespace(app=app, pool_cls=SoloPool, hostname="w@test"))
    assert runtime(app).claim_ahead.enabled is setting
