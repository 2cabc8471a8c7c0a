"""The custom task events: one catalog of names, one function that sends them.

Celery has events for the states it knows (``task-received``, ``task-failed``,
``task-revoked`` ...); the states only this package has are sent as custom
``task-*`` events so monitors such as Flower show them.  Every name is a
:class:`TaskEvent`, and every sender calls :func:`emit`: inside a task through
the task's own dispatcher (its worker's hostname), elsewhere (the rescuer, the
revoke/expiry handler, replay) through the app's default dispatcher.

Only when task events are on (``worker_send_task_events``, what ``celery worker
-E`` sets).  A failure to send is logged and counted (``event_error``) through
the caller's ``count``, never raised: an event is never worth a failure.  This
module sits at the bottom of the layers, so it is handed the counter instead
of asking the runtime for it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

logger = logging.getLogger("celery_reliable")


class TaskEvent(str, enum.Enum):
    """The ``task-*`` custom events; the value is the event's type as sent."""

    DEDUPLICATED = "task-deduplicated"
    DEFERRED = "task-deferred"
    DEAD_LETTERED = "task-dead_lettered"
    EXPIRED = "task-expired"
    RESCUED = "task-rescued"
    REPLAYED = "task-replayed"

    @classmethod
    def of_state(cls, state: str) -> TaskEvent | None:
        """The event of a lifecycle state's name (``"DEAD_LETTERED"``), None when
        Celery has its own (``FAILED``, ``REVOKED``, ...) or nothing is sent."""
        return _BY_STATE.get(state)


#: a state's name -> its event; a dict lookup, as every recorded transition asks
_BY_STATE: dict[str, TaskEvent] = {e.value.removeprefix("task-").upper(): e for e in TaskEvent}


def emit(
    app: Celery, event: TaskEvent, task_id: str, *, count: Callable[[str], object],
    task: Any = None, **fields: Any,
) -> bool:
    """Send ``event`` for ``task_id``; whether it was sent.

    ``task``: the Celery task whose request this is (its ``send_event`` names the
    worker); None outside a task.  ``count`` is called with ``"event_error"`` when
    the event could not be sent.
    """
    if not app.conf.worker_send_task_events:
        return False
    try:
        if task is not None:
            task.send_event(event.value, **fields)
        else:
            with app.events.default_dispatcher() as dispatcher:
                dispatcher.send(event.value, uuid=task_id, **fields)
    # kombu raises many types when the broker is away: an event is never worth a failure
    except Exception as exc:  # noqa: BLE001
        count("event_error")
        logger.warning("could not send the %s event of %s: %s", event.value, task_id, exc)
        return False
    return True


__all__ = ["TaskEvent", "emit"]
