"""Where a dead letter goes and what it says: the pieces of the one dead-letter path.

The path itself, which every cause calls, is
:func:`celery_reliable.dlq.dead_letter.dead_letter`; this module answers its
questions: the task's settings (per-task DLQ queue), whether an eager run
publishes, the failure of an exception, the queue a task was published to, and
the :data:`~celery_reliable.dlq.signals.task_dead_lettered` signal.
"""

from __future__ import annotations

import logging
import traceback as tb
from collections.abc import Mapping
from typing import Any

from celery import Celery

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
