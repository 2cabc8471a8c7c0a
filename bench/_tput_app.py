# mypy: disable-error-code="untyped-decorator"
"""The Celery app bench/throughput.py measures, built from ``BENCH_*`` environment variables.

One variant per app, so the plain and hand-written variants run on plain Celery
(no ReliableTask defined, hence no celery_reliable bootstep, rescuer or heartbeat):

* ``plain``: ``@app.task(acks_late=True)`` with an empty body;
* ``hand``: the same, doing the check people write by hand: 3 Redis round trips
  (GET done, SET NX lock, SET done) on a separate "dedupe" DB;
* ``ours``: ``ReliableTask`` with ``idempotency_key="b:{n}"`` and a Redis store.

Results are ignored (no result backend) for every variant alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery

from celery_reliable import ReliableTask

TASK = "bench.noop"


def build(env: Mapping[str, str]) -> Celery:
    variant = env.get("BENCH_VARIANT", "plain")
    app = Celery("bench", broker=env.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/8"))
    app.conf.update(
        task_default_queue=env.get("BENCH_QUEUE", "bench"),
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    if variant == "plain":

        @app.task(name=TASK, shared=False, acks_late=True, ignore_result=True)
        def noop(n: int) -> None:
            return None

    elif variant == "hand":
        client = redis.Redis.from_url(env.get("BENCH_DEDUPE_URL", "redis://127.0.0.1:6379/10"))
        prefix = env.get("BENCH_PREFIX", "bench")

        @app.task(name=TASK, shared=False, acks_late=True, ignore_result=True)
        def noop(n: int) -> None:
            done = f"{prefix}:done:{n}"
            if client.get(done) is not None:  # round trip 1
                return None
            if not client.set(f"{prefix}:lock:{n}", "1", nx=True, px=30_000):  # 2
                return None
            client.set(done, "1", px=86_400_000)  # 3
            return None

    elif variant in ("ours", "ours-nostates"):
        app.conf.update(
            reliable_state_enabled=variant == "ours",
            reliable_store_url=env.get("BENCH_STORE_URL", "redis://127.0.0.1:6379/9"),
            reliable_key_prefix=env.get("BENCH_PREFIX", "bench"),
            reliable_persist_on_publish=env.get("BENCH_PERSIST", "1") == "1",
            reliable_dedupe_on_publish=env.get("BENCH_DEDUPE", "1") == "1",
        )
        if "BENCH_STATE_URL" in env:  # throughput.py --state-url
            app.conf.reliable_state_store_url = env["BENCH_STATE_URL"]
        if "BENCH_STATE_BATCH" in env:  # bench/state_stall.py
            app.conf.reliable_state_batch_size = int(env["BENCH_STATE_BATCH"])
        if "BENCH_SCRIPT_ROWS" in env:  # bench/state_stall.py: not a setting, a constant
            from celery_reliable.states.stores import redis as state_redis

            state_redis.SCRIPT_ROWS = int(env["BENCH_SCRIPT_ROWS"])

        @app.task(name=TASK, shared=False, base=ReliableTask, idempotency_key="b:{n}",
                  ignore_result=True)
        def noop(n: int) -> None:
            return None

    else:
        raise ValueError(
            f"BENCH_VARIANT must be plain, hand, ours or ours-nostates, got {variant!r}"
        )
    return app


def task(app: Celery) -> Any:
    return app.tasks[TASK]


app = build(os.environ)
