"""Eager runs (tests) keep their dead letters off the broker unless asked.

With ``task_always_eager`` and the development broker configured, a test's dead
letter was published to that broker's DLQ queue, and ``reliable-dlq reconcile``
then indexed it as a real, replayable dead letter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Connection

from celery_reliable import PermanentError, ReliableTask
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.publisher import dlq_queue
from celery_reliable.runtime import reset, runtime
from tests.harness import dead_records
from tests.servers import REDIS


@pytest.fixture(params=["memory", "redis"])
def eager_app(request: pytest.FixtureRequest) -> Iterator[Celery]:
    """A test's app: the store in memory, the broker the development one (a real
    Redis) or kombu's memory transport; ``reliable_dlq_publish_eager`` left alone."""
    broker = "memory://" if request.param == "memory" else REDIS.require() + "/14"
    name = uuid.uuid4().hex[:6]
    app = Celery(f"eager{name}", broker=broker, set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    app.conf.reliable_dlq_queue = f"dlq-{name}"
    app.conf.task_default_queue = f"work-{name}"
    yield app
    with app.connection_for_write() as conn:
        dlq_queue(app.conf.reliable_dlq_queue).bind(conn.default_channel).delete()
    reset(app)


def on_the_broker(app: Celery) -> int:
    with Connection(app.conf.broker_url) as conn:
        bound = dlq_queue(app.conf.reliable_dlq_queue).bind(conn.default_channel)
        _, count, _ = bound.queue_declare()
        return int(count)


def refund_task(app: Celery) -> ReliableTask:
    @app.task(base=ReliableTask, shared=False, idempotency_key="refund:{order}")
    def refund(order: int) -> None:
        raise PermanentError(f"order {order} was never paid")

    return refund


def test_an_eager_dead_letter_is_raised_and_indexed_but_not_published(
    eager_app: Celery,
) -> None:
    eager_app.conf.task_always_eager = True
    refund = refund_task(eager_app)
    handle = refund.delay(7)
    with pytest.raises(PermanentError, match="never paid"):
        handle.get()  # the caller sees the failure, as in any eager run
    assert on_the_broker(eager_app) == 0
    entry = DeadLetters(eager_app).get(handle.id)
    assert entry is not None and entry.reason == "permanent_error"
    assert entry.worker == "(eager)"
    assert runtime(eager_app).counters["dlq_indexed_only"] == 1
    # reconcile leaves it in the index: it does not belong on the broker
    assert DeadLetters(eager_app).reconcile().republished == []
    assert on_the_broker(eager_app) == 0


def test_apply_throw_raises_the_failure_and_publishes_nothing(eager_app: Celery) -> None:
    refund = refund_task(eager_app)
    with pytest.raises(PermanentError):
        refund.apply((8,), throw=True)
    assert on_the_broker(eager_app) == 0
    assert len(dead_records(runtime(eager_app).store)) == 1


def test_eager_dead_letters_can_be_published_when_asked(eager_app: Celery) -> None:
    eager_app.conf.reliable_dlq_publish_eager = True
    refund = refund_task(eager_app)
    handle = refund.apply((9,))
    assert on_the_broker(eager_app) == 1
    entry = DeadLetters(eager_app).get(handle.id)
    assert entry is not None and entry.queue == eager_app.conf.task_default_queue
