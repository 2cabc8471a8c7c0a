# mypy: disable-error-code="untyped-decorator"
"""The app of bench/retry_storm.py: one task whose dependency is always down.

Each run is counted per wall-clock second and per kind (first attempt or
retry) in Redis, so the benchmark can read the retry rate across all workers.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from celery_reliable import ReliableTask

PREFIX = os.environ.get("STORM_PREFIX", "storm")
app = Celery("storm", broker=os.environ.get("STORM_BROKER", "redis://127.0.0.1:6379/12"))
app.conf.update(
    task_default_queue=os.environ.get("STORM_QUEUE", "storm"),
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    reliable_store_url=os.environ.get("STORM_STORE", "redis://127.0.0.1:6379/11"),
    reliable_key_prefix=PREFIX,
    reliable_max_attempts=1000,  # only the budget bounds the retries here
    reliable_retry_backoff_base=0.5,
    reliable_retry_backoff_cap=2.0,
    reliable_retry_budget_ratio=float(os.environ.get("STORM_RATIO", "0.2")),
    reliable_retry_budget_floor=float(os.environ.get("STORM_FLOOR", "1")),
    reliable_retry_budget_window=float(os.environ.get("STORM_WINDOW", "10")),
    # the breaker would stop the storm first; --breaker-threshold sets it
    reliable_breaker_threshold=int(os.environ.get("STORM_BREAKER_THRESHOLD", "5")),
)
_counter = redis.Redis.from_url(os.environ.get("STORM_COUNTER", "redis://127.0.0.1:6379/11"))


@app.task(base=ReliableTask, bind=True, name="storm.call", dependency="flaky-api",
          idempotency_key="storm:{n}", retry_on=(ConnectionError,))
def call(self: ReliableTask, n: int) -> None:
    kind = "retry" if self.request.retries else "first"
    _counter.incr(f"{PREFIX}:runs:{kind}:{int(time.time())}")
    raise ConnectionError("the dependency is down")
