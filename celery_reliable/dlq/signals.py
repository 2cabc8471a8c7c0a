"""The alerting hook: a Celery-style signal sent whenever a task is dead-lettered.

Connect a receiver to page someone, post to a chat, or count::

    from celery_reliable.dlq.signals import task_dead_lettered

    @task_dead_lettered.connect
    def alert(sender, task_id, reason, error, **kwargs):
        ...

``sender`` is the task name.  Keyword arguments: ``task_id``, ``reason``,
``error`` (text or None), ``exc_type``, ``queue`` (the DLQ queue it went to, or
None when the DLQ queue is off), ``app``.  Sent from the process that
dead-lettered the task (a worker child, the rescuer, a signal handler) after
the dead letter is published and indexed; a receiver that raises is logged,
never allowed to fail the task.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

task_dead_lettered = Signal(
    name="task_dead_lettered",
    providing_args={"task_id", "reason", "error", "exc_type", "queue", "app"},
)

__all__ = ["task_dead_lettered"]
