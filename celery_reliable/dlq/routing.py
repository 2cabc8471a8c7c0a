"""Dead-lettering: the one path every final failure takes.

Who calls it: the task itself (attempts exhausted, permanent error, retry
budget spent, key conflict, rejected, lost too often), the rescuer
(never received, expired, undecodable) and the revoke/expiry signal handler.

Order, and why:

1. publish the dead letter to the DLQ queue (confirmed on RabbitMQ);
2. index it in the store (the record moves to the dead letters, keyed by task
   id; the idempotency key is forgotten so a replay can run);
3. tell the world: the :data:`~celery_reliable.dlq.signals.task_dead_lettered`
   signal (and, outside a task, a ``task-dead_lettered`` event).

All of it happens before Celery acknowledges the original message.  If the
DLQ publish fails, nothing is indexed and the caller does not acknowledge
(the task raises ``Reject(requeue=True)``; the rescuer tries again at its next
sweep).  A crash between 1 and the ack delivers the task again: it fails
again and publishes a second copy, which the index keeps as one entry (same
task id) and ``reconcile`` removes from the queue.  A crash between 1 and 2
leaves a message without an entry: the lease lapses and the rescuer runs the
task again, or ``reconcile`` indexes the message.
"""

from __future__ import annotations

import logging
import time
import traceback as tb
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from celery import Celery

from celery_reliable.dlq.message import build
from celery_reliable.dlq.publisher import DeadLetterPublishError, publisher
from celery_reliable.dlq.signals import task_dead_lettered
from celery_reliable.identity import is_reliable
from celery_reliable.runtime import runtime
from celery_reliable.settings import Settings
from celery_reliable.stores.model import Failure, TaskRecord, record_queue

logger = logging.getLogger("celery_reliable.dlq")


#: the ``worker`` of a dead letter made by an eager run (``task.apply()``,
#: ``task_always_eager``): no worker, and, unless ``reliable_dlq_publish_eager``,
#: no DLQ message either, so ``reconcile`` leaves the entry in the index only
EAGER = "(eager)"


def settings_for(app: Celery, name: str) -> Settings:
    """The settings of task ``name`` (its per-task dlq_queue/dlq_enabled), else the app's."""
    task = app.tasks.get(name)
    if is_reliable(task):
        settings: Settings = task.reliable_settings()
        return settings
    return runtime(app).settings


def publishes(settings: Settings, failure: Failure) -> bool:
    """Whether a dead letter goes to the DLQ queue: ``dlq_enabled``, and for an eager
    run's only with ``dlq_publish_eager``."""
    return settings.dlq_enabled and (failure.worker != EAGER or settings.dlq_publish_eager)


def failure_of(
    exc: BaseException | None, *, attempts: int, worker: str | None, queue: str | None,
) -> Failure:
    """The failure of an exception (its type and full traceback; cut when published)."""
    if exc is None:
        return Failure(attempts=attempts, worker=worker, queue=queue)
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return Failure(type(exc).__name__, text, attempts, worker, queue)


def queue_of(app: Celery, record: TaskRecord, delivery_info: Mapping[str, Any] | None) -> str:
    """Where the task was published: its options' queue, its routing key, or the default."""
    routing_key = (delivery_info or {}).get("routing_key")
    return str(record_queue(record.options) or routing_key or app.conf.task_default_queue)


def dead_letter(
    app: Celery, record: TaskRecord, key: str, reason: str, error: str | None,
    failure: Failure, *, delivery_info: Mapping[str, Any] | None = None,
    require_publish: bool = True,
) -> str | None:
    """Publish, index and announce one dead letter; the DLQ queue it went to (None: off).

    Raises :class:`DeadLetterPublishError` when the DLQ queue did not take it and
    ``require_publish`` (nothing is indexed then), and the store's errors.
    Without ``require_publish`` a failed publish is logged and counted and the
    entry is indexed anyway (``reconcile`` publishes it later from the index).
    An eager dead letter (``failure.worker`` is :data:`EAGER`) is indexed only,
    unless ``reliable_dlq_publish_eager``.
    """
    settings = settings_for(app, record.name)
    rt = runtime(app)
    dead = replace(record, state="dead", reason=reason, error=error, dead_at=time.time())
    message = build(dead, failure, settings.dlq_traceback_max,
                    exchange=str((delivery_info or {}).get("exchange") or ""),
                    routing_key=str((delivery_info or {}).get("routing_key") or ""))
    queue: str | None = settings.dlq_queue if publishes(settings, failure) else None
    if queue is not None:
        try:
            publisher(app).publish(queue, message)
        except DeadLetterPublishError as exc:
            rt.count("dlq_publish_error")
            if require_publish:
                raise
            logger.error("%s[%s]: %s; indexed only (run reliable-dlq reconcile to publish it)",
                         record.name, record.task_id, exc)
            queue = None
    rt.store.dead_letter(record.task_id, key, reason, error, fallback=record,
                         failure=message.failure)
    rt.count("dlq_published" if queue else "dlq_indexed_only")
    announce(app, record.name, record.task_id, reason, error, failure.exc_type, queue)
    return queue


def announce(
    app: Celery, name: str, task_id: str, reason: str, error: str | None,
    exc_type: str | None, queue: str | None,
) -> None:
    """Send :data:`task_dead_lettered`; a receiver that raises is logged and counted."""
    responses = task_dead_lettered.send_robust(
        sender=name, task_id=task_id, reason=reason, error=error, exc_type=exc_type,
        queue=queue, app=app,
    )
    for receiver, response in responses:
        if isinstance(response, Exception):
            runtime(app).count("signal_error")
            logger.error("a task_dead_lettered receiver (%r) failed for %s[%s]: %s",
                         receiver, name, task_id, response)
