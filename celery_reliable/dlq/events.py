"""Custom task events sent from outside a task body.

Inside a task, :meth:`ReliableTask._send_state_event` uses the worker's own
dispatcher.  The rescuer, the revoke/expiry handler and replay have no task
request, so they send ``task-dead_lettered``, ``task-expired``, ``task-rescued``
and ``task-replayed`` through the app's default dispatcher.  Only when task
events are on (``worker_send_task_events``, what ``celery worker -E`` sets);
a failure to send is logged and counted (``event_error``), never raised.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

logger = logging.getLogger("celery_reliable.dlq")


def send_task_event(app: Celery, event: str, task_id: str, **fields: Any) -> bool:
    """Send ``task-<event>`` for ``task_id``; whether it was sent."""
    if not app.conf.worker_send_task_events:
        return False
    from celery_reliable.runtime import runtime

    try:
        with app.events.default_dispatcher() as dispatcher:
            dispatcher.send(f"task-{event}", uuid=task_id, **fields)
    # kombu raises many types when the broker is away: an event is never worth a failure
    except Exception as exc:  # noqa: BLE001
        runtime(app).count("event_error")
        logger.warning("could not send the task-%s event of %s: %s", event, task_id, exc)
        return False
    return True
