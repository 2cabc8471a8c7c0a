"""Poison messages: what a worker cannot even decode goes to the DLQ, not to the log.

Celery's consumer acknowledges a message it cannot decode (``on_decode_error``)
and rejects one without a task name, for an unregistered task, or of a content
type it does not accept (``on_unknown_message``, ``on_unknown_task``,
``on_invalid_task``); either way the message is gone and only a log line says
so.  :class:`PoisonStep`, a consumer bootstep, wraps those four callbacks on
the consumer instance (Celery 5.x: ``celery/worker/consumer/consumer.py``; the
callbacks are bound when the task handler is created, after the bootsteps are
constructed) so each message is first published to the DLQ queue and indexed,
with reason ``undecodable`` or ``unknown_task``, then handed to Celery's own
callback.

The body is kept raw (never deserialized here, except a well-formed message
of an unknown task in an accepted content type, kept as ``[args, kwargs]`` so
it can be replayed once the task exists).  If the DLQ queue does not take the
message, it is requeued instead of dropped, and the failure is counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, bootsteps
from kombu import serialization

from celery_reliable.dlq import routing
from celery_reliable.dlq.dead_letter import DeadLetterCause, dead_letter
from celery_reliable.dlq.message import body_text
from celery_reliable.dlq.publisher import DeadLetterPublishError
from celery_reliable.headers import HEADER_FINGERPRINT, HEADER_KEY
from celery_reliable.records import serializer_of
from celery_reliable.states import State
from celery_reliable.stores.model import TaskRecord

logger = logging.getLogger("celery_reliable.dlq")


class PoisonStep(bootsteps.Step):  # type: ignore[misc]
    """Consumer bootstep: dead-letter the messages Celery would drop."""

    label = "celery_reliable.poison"

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        wrap(consumer)


def wrap(consumer: Any) -> None:
    """Wrap the consumer's four callbacks for messages that never become a task."""
    app: Celery = consumer.app
    hostname = getattr(consumer, "hostname", None)
    decode_error = consumer.on_decode_error
    unknown_message = consumer.on_unknown_message
    unknown_task = consumer.on_unknown_task
    invalid_task = consumer.on_invalid_task

    def on_decode_error(message: Any, exc: Exception) -> None:
        if dead_letter_message(app, message, "undecodable", exc, hostname):
            decode_error(message, exc)

    def on_unknown_message(body: Any, message: Any) -> None:
        error = ValueError("the message has no task name: not a Celery task message")
        if dead_letter_message(app, message, "undecodable", error, hostname):
            unknown_message(body, message)

    def on_unknown_task(body: Any, message: Any, exc: Exception) -> None:
        if dead_letter_message(app, message, "unknown_task", exc, hostname):
            unknown_task(body, message, exc)

    def on_invalid_task(body: Any, message: Any, exc: Exception) -> None:
        if dead_letter_message(app, message, "undecodable", exc, hostname):
            invalid_task(body, message, exc)

    consumer.on_decode_error = on_decode_error
    consumer.on_unknown_message = on_unknown_message
    consumer.on_unknown_task = on_unknown_task
    consumer.on_invalid_task = on_invalid_task


def dead_letter_message(
    app: Celery, message: Any, reason: str, exc: BaseException, hostname: str | None,
) -> bool:
    """Publish and index ``message``; False when it was requeued instead (DLQ down)."""
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    delivery = message.delivery_info if isinstance(message.delivery_info, Mapping) else {}
    record = _record(app, message, headers)
    failure = routing.failure_of(exc, attempts=0, worker=hostname,
                                 queue=str(delivery.get("routing_key") or "") or None)
    error = f"{type(exc).__name__}: {exc}"[:2000]
    try:
        dead_letter(app, DeadLetterCause(record, reason, error, failure, exc=exc,
                                    before=(State.RECEIVED,), worker=hostname,
                                    delivery_info=delivery))
    except DeadLetterPublishError as err:
        logger.error("a %s message could not be dead-lettered (%s); requeued", reason, err)
        message.reject(requeue=True)
        return False
    return True


def _record(app: Celery, message: Any, headers: Mapping[str, Any]) -> TaskRecord:
    raw = message.body
    body = raw if isinstance(raw, bytes) else str(raw).encode()
    task_id, name = headers.get("id"), headers.get("task")
    if not isinstance(task_id, str) or not task_id:
        task_id = "poison-" + hashlib.sha256(body).hexdigest()[:24]
    text, content_type, encoding = _call_body(app, message, body)
    key = headers.get(HEADER_KEY)
    return TaskRecord(
        task_id=task_id,
        name=name if isinstance(name, str) and name else "(undecodable)",
        key=key if isinstance(key, str) else "",
        fingerprint=str(headers.get(HEADER_FINGERPRINT) or ""),
        body=text, content_type=content_type, content_encoding=encoding,
        options=json.dumps({"headers": dict(headers)}, default=repr),
    )


def _call_body(app: Celery, message: Any, body: bytes) -> tuple[str, str, str]:
    """``[args, kwargs]`` of a well-formed task message in an accepted content type,
    else the raw body (base64 when it is not text)."""
    content_type = message.content_type or ""
    encoding = message.content_encoding or "binary"
    accepted = serialization.prepare_accept_content(app.conf.accept_content)
    if content_type in accepted:
        try:
            payload = serialization.loads(body, content_type, encoding, accept=accepted)
            if isinstance(payload, list | tuple) and len(payload) == 3:
                args, kwargs, _ = payload
                if isinstance(args, list | tuple) and isinstance(kwargs, dict):
                    ct, enc, data = serialization.dumps((list(args), kwargs),
                                                        serializer_of(content_type))
                    if isinstance(data, str):
                        return data, ct, enc
        # a poison body fails in any number of ways: keep it raw, that is the point
        except Exception:
            logger.debug("message body kept raw", exc_info=True)
    text, kept_encoding = body_text(body, encoding)
    return text, content_type, kept_encoding


__all__ = ["PoisonStep", "dead_letter_message", "wrap"]

