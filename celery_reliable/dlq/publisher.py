"""Publish dead letters to the DLQ queue, confirmed by the broker.

One dedicated connection per app and process (a prefork child gets its own),
separate from Celery's producer pool so a confirm wait never blocks another
publish.  On RabbitMQ the connection has ``confirm_publish`` on: ``publish``
returns only once the broker has taken the message (into a durable queue, as
a persistent message).  On Redis the LPUSH has returned when it is stored.

A publish that fails after kombu's retries raises :class:`DeadLetterPublishError`:
the caller must not acknowledge the original message then (see
:mod:`celery_reliable.dlq.routing`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from celery_reliable.dlq.message import DeadLetterMessage
from celery_reliable.errors import ReliableError

logger = logging.getLogger("celery_reliable.dlq")

_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5,
                 "interval_max": 1.0}


class DeadLetterPublishError(ReliableError):
    """The DLQ queue did not take a dead letter; the original message must not be acked."""


def dlq_queue(name: str) -> Queue:
    """The DLQ queue: durable, bound to a direct exchange of the same name."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name,
                 durable=True)


def dlq_connection(app: Celery) -> Connection:
    """A new connection to the app's broker, with publisher confirms where they exist."""
    base = app.connection_for_write()
    options: dict[str, Any] = dict(base.transport_options or {})
    if base.transport.driver_type == "amqp":
        options["confirm_publish"] = True
    connection: Connection = base.clone(transport_options=options)
    return connection


class Publisher:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def publish(self, queue: str, message: DeadLetterMessage) -> None:
        self.publish_many(queue, [message])

    def publish_many(self, queue: str, messages: Iterable[DeadLetterMessage]) -> int:
        """Publish in order, each confirmed; how many.  Raises DeadLetterPublishError."""
        target = dlq_queue(queue)
        n = 0
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = dlq_connection(self.app)
                producer = self._connection.Producer()
                for message in messages:
                    body, content_type, encoding = message.body()
                    producer.publish(
                        body, exchange=target.exchange, routing_key=queue, declare=[target],
                        content_type=content_type, content_encoding=encoding,
                        headers=message.headers(), delivery_mode=2, retry=True,
                        retry_policy=_RETRY_POLICY,
                    )
                    n += 1
            # kombu and its transports raise many types; any of them means "not taken"
            except Exception as exc:
                self._reset()
                raise DeadLetterPublishError(
                    f"could not publish to the DLQ queue {queue!r} ({type(exc).__name__}: "
                    f"{exc}); {n} of the messages were published"
                ) from exc
        return n

    def _reset(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception as exc:  # noqa: BLE001 - already broken; we only let go of it
                logger.debug("closing a failed DLQ connection: %s", exc)

    def close(self) -> None:
        with self._lock:
            self._reset()


def publisher(app: Celery) -> Publisher:
    """The app's publisher in this process: kept by its runtime, so a forked child gets
    a new one (the parent's connection is never used there) and ``reset(app)`` closes it."""
    from celery_reliable.runtime import runtime

    return runtime(app).dlq_publisher
