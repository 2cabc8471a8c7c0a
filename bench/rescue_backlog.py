"""How fast the rescuer republishes a backlog of lost tasks.

Why: a Redis broker restarted without persistence loses every queued message at
once, and only the task records in the store bring them back (DESIGN.md section
8).  The rescuer must then republish them as fast as Celery can send, not one
``reliable_rescue_batch`` per ``reliable_rescue_interval`` (500 per 5 s: 17
minutes for 100,000 tasks).

How: ``--tasks`` ReliableTask calls are published (persist on publish, the
defaults) to a Redis broker and a Redis store, then the broker's queue is
deleted, as a restart without persistence does.  ``rescue_after`` is 1 s, so
after a second every record is due; then ``Rescuer.sweep_once()`` is called in
a loop, as the rescuer thread does every interval, until every task is back on
the queue.  Printed: the seconds from the first sweep until the queue holds
them all, records republished per second, and what one batch per interval
would have taken.  Only this run's queue and key prefix are written, and
deleted afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._common import (
    REDIS,
    cleanup_broker,
    command_line,
    delete_matching,
    emit,
    machine,
    table,
    tag,
)
from bench._tput_app import build, task
from celery_reliable.runtime import reset, runtime
from celery_reliable.worker.rescue import Rescuer


def measure(args: argparse.Namespace) -> dict[str, Any]:
    run_tag = tag("rb")
    broker = redis.Redis.from_url(f"{REDIS}/{args.broker_db}")
    store_url = f"{REDIS}/{args.store_db}"
    app = build({"BENCH_VARIANT": "ours", "BENCH_BROKER_URL": f"{REDIS}/{args.broker_db}",
                 "BENCH_QUEUE": run_tag, "BENCH_STORE_URL": store_url,
                 "BENCH_PREFIX": run_tag})
    app.conf.update(reliable_rescue_after=1.0, reliable_state_enabled=False)
    settings = runtime(app).settings
    try:
        noop = task(app)
        t0 = time.perf_counter()
        for n in range(args.tasks):
            noop.delay(n)
        published = time.perf_counter() - t0
        broker.delete(run_tag)  # what a restart without persistence does to the queue
        time.sleep(1.5)  # every record is due
        rescuer = Rescuer(runtime(app), "bench")
        sweeps, t0 = 0, time.perf_counter()
        while broker.llen(run_tag) < args.tasks:
            rescuer.sweep_once()
            sweeps += 1
            if time.perf_counter() - t0 > args.timeout:
                raise RuntimeError(f"only {broker.llen(run_tag)} of {args.tasks} rescued")
        seconds = time.perf_counter() - t0
    finally:
        reset(app)
        cleanup_broker(broker, run_tag)
        delete_matching(redis.Redis.from_url(store_url), f"{{{run_tag}*")
    per_interval = settings.rescue_batch / settings.rescue_interval
    return {"machine": machine(), "tasks": args.tasks, "publish_s": published,
            "rescue_s": seconds, "sweeps": sweeps, "per_s": args.tasks / seconds,
            "one_batch_per_interval_s": args.tasks / per_interval,
            "rescue_batch": settings.rescue_batch, "rescue_interval": settings.rescue_interval}


def report(res: dict[str, Any]) -> str:
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs, Redis {res['machine']['redis']}; "
        f"package {res['machine']['package']}",
        f"{res['tasks']:,} tasks published ({res['publish_s']:.1f} s), the broker's queue "
        f"deleted, rescue_batch {res['rescue_batch']}, rescue_interval "
        f"{res['rescue_interval']:g} s\n",
        table(["rescued", "seconds", "sweeps", "records/s",
               "one batch per interval would take (s)"],
              [[f"{res['tasks']:,}", f"{res['rescue_s']:.1f}", res["sweeps"],
                f"{res['per_s']:,.0f}", f"{res['one_batch_per_interval_s']:,.0f}"]]),
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--tasks", type=int, default=10_000, help="tasks (default 10000)")
    p.add_argument("--broker-db", type=int, default=8, help="broker Redis DB (default 8)")
    p.add_argument("--store-db", type=int, default=12, help="store Redis DB (default 12)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    args = p.parse_args()
    emit(measure(args), args.json, report)


if __name__ == "__main__":
    main()
