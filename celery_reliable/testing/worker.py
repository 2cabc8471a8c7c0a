"""A real Celery worker in a thread of the test process, started and stopped per test.

Built on :mod:`celery.contrib.testing.worker` (its ``TestWorkController`` and
``setup_app_for_worker``, what ``start_worker`` and the ``celery_worker`` fixture
use).  Two differences, both for speed: no ping task round trip at start (the
user's app may have no result backend), and a fast stop.  Celery stops a test
worker by setting ``should_terminate`` and waiting for the consumer loop to look at
it; on a polling transport (kombu's ``memory://``) that loop sits in
``drain_events(timeout=2.0)`` and looks twice, so every stop took 2-4 s.  Here, once
``should_terminate`` is set, ``celery.ping`` messages wake the loop (it runs them:
they return "pong"); the stop takes about 0.1 s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
from celery.worker import state

logger = logging.getLogger("celery_reliable.testing")

#: kombu's memory transport polls every second by default; a test waits less.
MEMORY_POLLING_INTERVAL = 0.05


@contextmanager
def running_worker(
    app: Celery, *, pool: str = "solo", concurrency: int = 1, loglevel: str = "WARNING",
    shutdown_timeout: float = 10.0, **options: Any,
) -> Iterator[TestWorkController]:
    """A worker consuming ``app``'s queues (``queues=[...]`` to choose) in a thread."""
    import celery.contrib.testing.tasks  # noqa: F401  (registers celery.ping: the wake-up)

    setup_app_for_worker(app, loglevel, None)
    worker = TestWorkController(
        app=app, pool=pool, concurrency=concurrency, loglevel=loglevel, logfile=None,
        ready_callback=None, without_heartbeat=True, without_mingle=True, without_gossip=True,
        **options,
    )
    thread = threading.Thread(target=worker.start, name="celery-reliable-test-worker",
                              daemon=True)
    thread.start()
    worker.ensure_started()
    _allow_result_get()
    try:
        yield worker
    finally:
        _stop(app, worker, thread, shutdown_timeout)


def _stop(app: Celery, worker: TestWorkController, thread: threading.Thread,
          timeout: float) -> None:
    state.should_terminate = 0
    try:
        queue = _first_queue(app, worker)
        ping = app.tasks["celery.ping"]
        for _ in range(int(timeout / 0.1)):
            if not thread.is_alive():
                break
            ping.apply_async(queue=queue)
            thread.join(0.1)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(
                f"the test worker did not stop within {timeout} s: a task is still running "
                "(give the worker a larger shutdown_timeout, or make the task return)"
            )
    finally:
        state.should_terminate = None
    if app.conf.broker_url and str(app.conf.broker_url).startswith("memory://"):
        _purge_memory_broker(app, worker)


def _first_queue(app: Celery, worker: TestWorkController) -> str:
    consumer = getattr(worker, "consumer", None)
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or []
    return str(queues[0].name) if queues else str(app.conf.task_default_queue)


def _purge_memory_broker(app: Celery, worker: TestWorkController) -> None:
    """kombu's memory transport is one per process: what this test left in a queue (a
    task nobody ran, a wake-up ping) must not reach the next test's worker."""
    names = {q.name for q in app.amqp.queues.consume_from.values()}
    names.add(_first_queue(app, worker))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in names:
            channel.queue_purge(name)


def _allow_result_get() -> None:
    """A worker in this process marks ``result.get()`` as blocking within a task (Celery
    5.x, ``celery.result._set_task_join_will_block``); the test's own thread is not a task:
    ``start_worker`` clears the mark the same way."""
    from celery.result import _set_task_join_will_block

    _set_task_join_will_block(False)
