"""ReliableTask: persist → publish on the producer, claim → run → complete on the worker.

The class is assembled from one part per job, each in its own module:

* :mod:`~celery_reliable.task.base`: the task's options, its settings, and how a
  call's idempotency key is derived;
* :mod:`~celery_reliable.task.publishing`: ``apply_async``: key, persist, dedupe,
  then publish;
* :mod:`~celery_reliable.task.execution`: a delivery in a worker: claim, run
  the body, complete or release;
* :mod:`~celery_reliable.task.guard`: why that lives in ``run`` (a subclass may
  override ``__call__``, as Flask's pattern does, without losing it);
* :mod:`~celery_reliable.task.outcomes`: what does not simply run and succeed:
  duplicates, deferrals, retries, dead letters, a store that is down.
"""

from __future__ import annotations

from celery_reliable.task.execution import Execution
from celery_reliable.task.publishing import Publishing


class ReliableTask(Publishing, Execution):
    """Base class of tasks that are durable, effectively-once and tracked.

    Use it as ``@app.task(base=ReliableTask, idempotency_key="receipt:{order_id}")``,
    as a subclass, or app-wide with ``Celery(..., task_cls="celery_reliable:ReliableTask")``.
    Per-task settings (``lease_seconds``, ``retention``, ``max_lost_attempts``,
    ``persist_on_publish``, ``dedupe_on_publish``, ``on_key_conflict``) are
    decorator options or class attributes; ``apply_async(idempotency_key=...)``
    overrides the key per call.
    """


__all__ = ["ReliableTask"]
