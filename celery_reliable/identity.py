"""Telling a reliable task from a plain one, from any layer.

The DLQ, the state observer, the worker's wiring and the beat scheduler each ask
"is this a ReliableTask?".  Importing the task class to ask would make those lower
layers depend on the task layer above them (and once made import cycles); the class
marks itself instead, and this reads the mark.
"""

from __future__ import annotations

from typing import Any

#: Set to True on :class:`celery_reliable.ReliableTask` (and so on every subclass).
MARK = "_celery_reliable_task"


def is_reliable(task: Any) -> bool:
    """Whether ``task`` (a task instance or class, or a Celery task proxy) is a ReliableTask."""
    return task is not None and getattr(task, MARK, False) is True
