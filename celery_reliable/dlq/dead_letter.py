"""The one dead-letter path: every cause that gives a task up calls :func:`dead_letter`.

The causes: a final failure (attempts exhausted, a permanent error, rejected),
a retry budget exhausted, a key conflict, a crash loop (``worker_lost``) — from
the task; expiry and revocation — from Celery's ``task_revoked`` signal; the
rescuer's give-ups (``never_received``, ``expired``, ``undecodable``); a poison
message the worker cannot even decode (``undecodable``, ``unknown_task``).
Each builds a :class:`DeadLetterCause` with what differs; the path does the same for
all, in this order, and why:

1. **publish** to the DLQ queue (confirmed on RabbitMQ; an eager run's only with
   ``reliable_dlq_publish_eager``): first, so nothing is indexed that is not kept;
2. **index** it in the store (the record moves to the dead letters, keyed by task
   id; the idempotency key is forgotten so a replay can run);
3. **record the state**: the states before (FAILED, EXPIRED, REVOKED, RECEIVED)
   then DEAD_LETTERED with the reason and the error;
4. send the **event** ``task-dead_lettered`` (and ``task-expired``);
5. fire the :data:`~celery_reliable.dlq.signals.task_dead_lettered` **signal**;
6. **count** it (``dead_lettered_<reason>``, and ``dlq_published`` or
   ``dlq_indexed_only``);
7. **log** one line.

All of it happens before Celery acknowledges the original message.  When the
DLQ queue does not take it and :attr:`DeadLetterCause.require_publish`,
:class:`~celery_reliable.dlq.publisher.DeadLetterPublishError` is raised and
nothing else is done: the caller does not acknowledge (the task raises
``Reject(requeue=True)``, the rescuer tries again at its next sweep, a poison
message is requeued).  Otherwise (a revoked message, which Celery acknowledges
whatever we do) it is indexed only and ``reconcile`` publishes it later.  When
the store cannot index it, that is logged and counted (``store_error``) and the
rest goes on: the message is in the DLQ queue and ``reconcile`` indexes it.

A crash between 1 and the ack delivers the task again: it fails again and
publishes a second copy, which the index keeps as one entry (same task id) and
``reconcile`` removes from the queue.  A crash between 1 and 2 leaves a message
without an entry: the lease lapses and the rescuer runs the task again, or
``reconcile`` indexes the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from celery import Celery

from celery_reliable.dlq.message import DeadLetterMessage, build
from celery_reliable.dlq.publisher import DeadLetterPublishError, publisher
from celery_reliable.dlq.routing import EAGER, announce, publishes, settings_for
from celery_reliable.errors import ReliableError, StoreError
from celery_reliable.events import TaskEvent, emit
from celery_reliable.headers import HEADER_FINGERPRINT
from celery_reliable.records import encode
from celery_reliable.runtime import runtime
from celery_reliable.states import State, recorder
from celery_reliable.stores.model import Failure, TaskRecord

logger = logging.getLogger("celery_reliable.dlq")


@dataclass(frozen=True)
class DeadLetterCause:
    """What one cause knows about the task it gives up; the rest is the path's."""

    #: the task's record: persisted at publish, rebuilt from its request, or a poison
    #: message's (its task id, name and key are the dead letter's)
    record: TaskRecord
    #: why: ``attempts_exhausted``, ``expired``, ``revoked``, ``never_received`` ...
    reason: str
    #: the error as kept in the entry (text), None when there is none
    error: str | None
    #: attempts, worker, queue and the exception's type and traceback
    failure: Failure
    #: the exception, for the state timeline
    exc: BaseException | None = None
    #: the body ran (and failed): FAILED carries the exception, else DEAD_LETTERED does
    started: bool = False
    #: the states recorded before DEAD_LETTERED (FAILED when ``started``)
    before: tuple[State, ...] = ()
    #: the attempt and worker the states are recorded with
    attempt: int = 1
    worker: str | None = None
    #: the original message's delivery info (its exchange and routing key are kept)
    delivery_info: Mapping[str, Any] | None = None
    #: a DLQ queue that does not take it raises (the caller does not acknowledge);
    #: False: indexed only, ``reconcile`` publishes it later
    require_publish: bool = True
    #: the Celery task whose request this is: its events go through its dispatcher
    task: Any = None


def record_from_request(task: Any, request: Any, key: str) -> TaskRecord:
    """The record to keep when none was persisted at publish (persist off): the call
    rebuilt from the task's request; who and why only, when its arguments cannot be
    serialized."""
    headers = getattr(request, "headers", None) or {}
    try:
        record, _ = encode(
            task._get_app(), name=task.name, task_id=request.id, key=key,
            fingerprint=headers.get(HEADER_FINGERPRINT, ""),
            args=getattr(request, "args", ()) or (),
            kwargs=getattr(request, "kwargs", {}) or {}, options={"headers": headers},
            serializer=task.serializer,
        )
    except ReliableError:
        return TaskRecord(request.id, task.name, key, "", "", "", "", "{}")
    return record


def dead_letter(app: Celery, letter: DeadLetterCause) -> str | None:
    """Dead-letter one task, all seven steps; the DLQ queue it went to (None: not
    published).  Raises :class:`DeadLetterPublishError` (see the module's doc)."""
    record, failure = letter.record, letter.failure
    settings = settings_for(app, record.name)
    info = letter.delivery_info or {}
    dead = replace(record, state="dead", reason=letter.reason, error=letter.error,
                   dead_at=time.time())
    message = build(dead, failure, settings.dlq_traceback_max,
                    exchange=str(info.get("exchange") or ""),
                    routing_key=str(info.get("routing_key") or ""))
    queue = settings.dlq_queue if publishes(settings, failure) else None
    if queue is not None:
        queue = _publish(app, letter, queue, message)
    indexed = _index(app, letter, queue, message)
    _record_states(app, letter)
    _send_events(app, letter, queue)
    announce(app, record.name, record.task_id, letter.reason, letter.error,
             failure.exc_type, queue)
    rt = runtime(app)
    if indexed:
        rt.count("dlq_published" if queue else "dlq_indexed_only")
    rt.count(f"dead_lettered_{letter.reason}")
    logger.warning("%s[%s] dead-lettered (%s): %s", record.name, record.task_id,
                   letter.reason, letter.error)
    return queue


def _publish(
    app: Celery, letter: DeadLetterCause, queue: str, message: DeadLetterMessage
) -> str | None:
    """Publish to ``queue``; None when it did not take it and the caller allows that."""
    try:
        publisher(app).publish(queue, message)
    except DeadLetterPublishError as exc:
        runtime(app).count("dlq_publish_error")
        if letter.require_publish:
            raise
        logger.error("%s[%s]: %s; indexed only (run reliable-dlq reconcile to publish it)",
                     letter.record.name, letter.record.task_id, exc)
        return None
    return queue


def _index(
    app: Celery, letter: DeadLetterCause, queue: str | None, message: DeadLetterMessage
) -> bool:
    """Index the entry (with the failure as published); False (logged, counted) when
    the store cannot."""
    record = letter.record
    try:
        runtime(app).store.dead_letter(record.task_id, record.key, letter.reason, letter.error,
                                       fallback=record, failure=message.failure)
    except StoreError as exc:
        runtime(app).count("store_error")
        logger.error(
            "%s[%s]: %s, but the store could not index it (%s); reconcile indexes it, or the "
            "lease lapses and the rescuer takes it from there", record.name, record.task_id,
            "published to the DLQ queue" if queue else "dead-lettered", exc,
        )
        return False
    return True


def _record_states(app: Celery, letter: DeadLetterCause) -> None:
    record, exc = letter.record, letter.exc
    rec = recorder(app)
    detail = {"reason": letter.reason, "error": letter.error}
    common: dict[str, Any] = {"attempt": letter.attempt, "worker": letter.worker}
    if letter.started:
        rec.transitions(record.task_id, record.name, record.key, (*letter.before, State.FAILED),
                        error=exc, **common)
        rec.transition(record.task_id, record.name, record.key, State.DEAD_LETTERED,
                       detail=detail, **common)
    else:
        rec.transitions(record.task_id, record.name, record.key,
                        (*letter.before, State.DEAD_LETTERED), error=exc, detail=detail,
                        **common)


def _send_events(app: Celery, letter: DeadLetterCause, queue: str | None) -> None:
    """``task-expired`` when it expired, then ``task-dead_lettered``; none for an
    eager run (no worker, no event stream)."""
    if letter.failure.worker == EAGER:
        return
    record = letter.record
    count = runtime(app).count
    for state in letter.before:
        event = TaskEvent.of_state(state.value)
        if event is not None:
            emit(app, event, record.task_id, count=count, task=letter.task,
                 idempotency_key=record.key)
    fields: dict[str, Any] = {"idempotency_key": record.key, "reason": letter.reason,
                              "error": letter.error, "dlq_queue": queue}
    if letter.exc is not None:
        fields["exception"] = f"{type(letter.exc).__name__}: {letter.exc}"
    emit(app, TaskEvent.DEAD_LETTERED, record.task_id, count=count, task=letter.task,
         **fields)


__all__ = ["DeadLetterCause", "dead_letter", "record_from_request"]
