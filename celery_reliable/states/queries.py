"""The read side of the states: what the CLI and the DLQ call.

Thin on purpose: each answers one question from the app's state store.
Store errors propagate (``StoreUnavailable`` when unreachable), bad arguments
raise :class:`~celery_reliable.errors.ReliableError` subclasses.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from celery_reliable.errors import ConfigurationError
from celery_reliable.states.machine import State, parse_many
from celery_reliable.states.model import Stats, TaskState, Transition
from celery_reliable.states.runtime import state_store


def timeline(app: Celery, task_id: str | None = None, key: str | None = None) -> list[Transition]:
    """A task's transitions (or every task's of an idempotency key) in the order they
    happened (attempt by attempt, by time within one); empty when nothing is recorded."""
    if (task_id is None) == (key is None):
        raise ConfigurationError("timeline needs a task id or an idempotency key (not both)")
    store = state_store(app)
    return store.timeline(task_id) if task_id is not None else store.timeline_by_key(str(key))


def current(app: Celery, task_id: str) -> TaskState | None:
    return state_store(app).current(task_id)


def stuck(
    app: Celery, older_than: float, states: Iterable[str | State] | None = None,
    limit: int = 100,
) -> list[TaskState]:
    """Tasks in a non-terminal state (or one of ``states``, names accepted in any case)
    for longer than ``older_than`` seconds, oldest first."""
    if older_than < 0 or limit < 1:
        raise ConfigurationError(
            f"stuck needs older_than >= 0 and limit >= 1, got {older_than} and {limit}"
        )
    return state_store(app).stuck(older_than, parse_many(states), limit)


def stats(app: Celery, window: float) -> Stats:
    """Transitions per task name and state over the last ``window`` seconds."""
    if window <= 0:
        raise ConfigurationError(f"stats needs a window > 0 seconds, got {window}")
    return state_store(app).stats(window)
