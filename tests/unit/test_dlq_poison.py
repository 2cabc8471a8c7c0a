"""Poison messages (dlq/poison.py) on kombu's memory transport: kept in the DLQ, requeued
when the DLQ queue does not take them, counted when the store cannot index them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.poison import dead_letter_message
from celery_reliable.errors import StoreUnavailable
from celery_reliable.runtime import runtime


@pytest.fixture
def connection(app: Celery) -> Iterator[Any]:
    with app.connection_for_write() as conn:
        yield conn


def poison(app: Celery, conn: Any) -> Any:
    """A message the worker cannot decode, taken off its queue undecoded as the consumer
    hands it over (SimpleQueue would decode it)."""
    queue = app.conf.task_default_queue
    conn.Producer().publish(
        b"{not json", routing_key=queue, content_type="application/json",
        content_encoding="utf-8", headers={"foo": "bar"}, declare=[app.amqp.queues[queue]],
    )
    message = conn.default_channel.basic_get(queue, no_ack=False)
    assert message is not None
    return message


def queued(app: Celery, conn: Any) -> int:
    """Messages ready in the task queue (not counting the unacknowledged one)."""
    return int(conn.default_channel._size(app.conf.task_default_queue))


def test_a_poison_message_is_published_and_indexed_with_its_raw_body(
    app: Celery, connection: Any
) -> None:
    message = poison(app, connection)
    assert dead_letter_message(app, message, "undecodable", ValueError("bad JSON"), "w@test")
    [entry] = DeadLetters(app).list().entries
    assert entry.reason == "undecodable" and entry.task_id.startswith("poison-")
    detail = DeadLetters(app).show(entry.task_id)
    assert detail is not None and detail.raw_body == "{not json" and detail.args is None
    assert runtime(app).counters["dead_lettered_undecodable"] == 1


def test_a_poison_message_the_dlq_queue_refuses_is_requeued_not_dropped(
    app: Celery, connection: Any, dlq_down: None
) -> None:
    message = poison(app, connection)
    assert queued(app, connection) == 0
    assert not dead_letter_message(app, message, "undecodable", ValueError("bad"), "w@test")
    assert queued(app, connection) == 1  # back in its queue: the next delivery tries again
    assert DeadLetters(app).list().entries == []


def test_a_poison_message_the_store_cannot_index_is_published_and_counted(
    app: Celery, connection: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = poison(app, connection)

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("store is unreachable")

    monkeypatch.setattr(runtime(app).store, "dead_letter", down)
    assert dead_letter_message(app, message, "undecodable", ValueError("bad"), "w@test")
    assert runtime(app).counters["store_error"] == 1
    monkeypatch.undo()
    # in the DLQ queue without an entry: reconcile indexes it
    assert len(DeadLetters(app).reconcile().indexed) == 1
