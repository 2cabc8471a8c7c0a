"""Celery signals that end a reliable task without running its body.

Celery drops an expired task (``expires`` passed) or a revoked one before the
body is called: it marks it REVOKED and acknowledges the message.  Without us
its task record would be rescued again and again.  Here the record becomes a
dead letter with reason ``expired`` or ``revoked``: visible, and never lost
silently.

:func:`connect` also hooks ``task_received`` for the claims a solo worker sends as
messages arrive (``claim_ahead.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_received, task_revoked, worker_process_shutdown

from celery_reliable.dlq import routing
from celery_reliable.dlq.dead_letter import DeadLetterCause, dead_letter, record_from_request
from celery_reliable.errors import StoreError
from celery_reliable.headers import HEADER_KEY
from celery_reliable.identity import is_reliable
from celery_reliable.states import State, flush_all
from celery_reliable.stores.model import Failure, TaskRecord
from celery_reliable.worker.claim_ahead import on_task_received

logger = logging.getLogger("celery_reliable")


def on_task_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None,
    expired: bool = False, **_: Any,
) -> None:

    if not is_reliable(sender) or request is None:
        return
    headers = getattr(request, "headers", None) or {}
    key = headers.get(HEADER_KEY)
    if key is None:
        return
    reason = "expired" if expired else "revoked"
    detail = f"expired at {request.expires}" if expired else (
        f"revoked{' and terminated' if terminated else ''} by an operator"
    )
    app = sender._get_app()
    attempt = (request.retries or 0) + 1
    try:
        record = _record_of(sender, request, key)
    except StoreError as exc:
        sender.reliable.count("store_error")
        logger.error(
            "%s[%s] %s, but the store could not record it (%s): the rescuer will find it",
            sender.name, request.id, reason, exc,
        )
        return
    failure = Failure(attempts=attempt, worker=request.hostname,
                      queue=routing.queue_of(app, record, request.delivery_info))
    # Celery acknowledges a revoked message whatever we do: index it even when the DLQ
    # queue does not take it (reconcile publishes it later).
    dead_letter(app, DeadLetterCause(
        record, reason, detail, failure,
        before=(State.EXPIRED if expired else State.REVOKED,), attempt=attempt,
        worker=request.hostname, delivery_info=request.delivery_info, require_publish=False,
    ))


def _record_of(task: Any, request: Any, key: str) -> TaskRecord:
    """The task's persisted record, else one built from the request's arguments."""
    stored: TaskRecord | None = task.reliable.store.get_record(request.id, key)
    if stored is not None and stored.name:
        return stored
    return record_from_request(task, request, key)


def connect() -> None:
    """Connect the handlers once per process (signals are process-wide; the handler
    looks the app up from the task, so several apps are fine)."""
    task_revoked.connect(on_task_revoked, dispatch_uid="celery_reliable.task_revoked", weak=False)
    task_received.connect(
        on_task_received, dispatch_uid="celery_reliable.claim_ahead", weak=False
    )
    # Prefork children leave with os._exit, past atexit: flush the recorded states first.
    worker_process_shutdown.connect(
        _flush_states, dispatch_uid="celery_reliable.flush_states", weak=False
    )


def _flush_states(**_: Any) -> None:
    flush_all()
