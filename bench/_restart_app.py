"""The plain Celery app ``bench/broker_restarts.py`` compares ours with.

Same broker, queue, prefetch and transport options as ``tests/apps/shop.py``;
one task that counts its run in Redis.  ``BENCH_ACKS_LATE=1`` makes it late-ack
(as a ReliableTask is), ``BENCH_WORKAROUND=1`` installs our kombu workaround in
the worker (``celery_reliable/worker/kombu_compat.py``) to show it is the
difference.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_init

env = os.environ
app = Celery("restart_plain", broker=env.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/14"))
app.conf.update(
    task_default_queue=env.get("TEST_QUEUE", "celery"),
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_acks_late=env.get("BENCH_ACKS_LATE") == "1",
    task_reject_on_worker_lost=True,
)
counter = redis.Redis.from_url(env.get("TEST_COUNTER_URL", "redis://127.0.0.1:6379/13"))
prefix = env.get("TEST_PREFIX", "plain")


@app.task(name="shop.send_receipt")
def send_receipt(order_id: int, hold: float = 0.0) -> None:
    """The shop's task name and arguments, counted as its 'effect'."""
    import time

    time.sleep(hold)
    counter.incr(f"{prefix}:effect:{order_id}")


@worker_init.connect(weak=False)
def workaround(sender: Any = None, **_: Any) -> None:
    if env.get("BENCH_WORKAROUND") == "1" and getattr(sender, "app", None) is app:
        from celery_reliable.worker import kombu_compat

        kombu_compat.apply(app)
