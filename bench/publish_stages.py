"""Where the time of one ``ReliableTask.delay()`` goes, stage by stage, on a real broker.

Why: bench/throughput.py says a publish with persist and dedupe costs about two
round trips more than plain Celery's; this says which stages of the call that
time is spent in, and whether the store's round trip is hidden behind Celery
building the message (it should be: the answer is read only at the gate).

How: ``--n`` tasks are published one by one on a Redis broker and a Redis store
(the defaults: persist and dedupe on publish), and the clock is read at four
points of each call, by wrapping (in this process only) the store's
``ScriptCaller.send`` and ``ReliableTask._judge``:

* before the call: ``apply_async`` up to the store call (key, fingerprint,
  record encoding, settings);
* store call written: packing the script call and ``sendall``;
* Celery builds the message: from there to the producer gate (the store
  answers meanwhile);
* answer read at the gate: what waiting for and parsing the store's reply adds;
* broker publish and after: kombu's publish to Redis and recording PENDING.

Medians and 10th percentiles of each stage, in microseconds; a plain
``@app.task`` publish is timed in the same run, alternating, for scale.
Writes only under its own prefix and queue, and deletes them.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
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
from celery_reliable import task as task_module
from celery_reliable.runtime import reset
from celery_reliable.stores import redis_calls

STAGES = ("before the store call", "store call written", "Celery builds the message",
          "answer read at the gate", "broker publish and after")


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_tag = tag("ps")
    env = {"BENCH_BROKER_URL": f"{REDIS}/{args.broker_db}", "BENCH_QUEUE": run_tag,
           "BENCH_STORE_URL": f"{REDIS}/{args.store_db}", "BENCH_PREFIX": run_tag}
    plain = task(build({**env, "BENCH_VARIANT": "plain"}))
    ours_app = build({**env, "BENCH_VARIANT": "ours"})
    ours = task(ours_app)
    marks: dict[str, float] = {}
    send, judge = redis_calls.ScriptCaller.send, task_module.ReliableTask._judge

    def timed(method: Callable[..., Any], start: str, end: str) -> Callable[..., Any]:
        """``method``, reading the clock into ``marks`` before and after it."""
        def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
            marks[start] = time.perf_counter()
            try:
                return method(self, *a, **kw)
            finally:
                marks[end] = time.perf_counter()

        return wrapper

    redis_calls.ScriptCaller.send = timed(send, "send", "sent")  # type: ignore[method-assign]
    task_module.ReliableTask._judge = timed(  # type: ignore[method-assign]
        judge, "gate", "judged")
    stages: list[list[float]] = [[] for _ in STAGES]
    plain_us: list[float] = []
    try:
        for i in range(args.warmup + args.n):
            t0 = time.perf_counter()
            plain.delay(i)
            t1 = time.perf_counter()
            marks.clear()
            ours.delay(i)
            t2 = time.perf_counter()
            if i < args.warmup:
                continue
            plain_us.append((t1 - t0) * 1e6)
            points = [t1, marks["send"], marks["sent"], marks["gate"], marks["judged"], t2]
            for stage, (a, b) in enumerate(itertools.pairwise(points)):
                stages[stage].append((b - a) * 1e6)
    finally:
        redis_calls.ScriptCaller.send = send  # type: ignore[method-assign]
        task_module.ReliableTask._judge = judge  # type: ignore[method-assign]
        reset(ours_app)
        delete_matching(redis.Redis.from_url(f"{REDIS}/{args.store_db}"), f"{{{run_tag}*")
        cleanup_broker(redis.Redis.from_url(f"{REDIS}/{args.broker_db}"), run_tag)
    return {"machine": machine(), "n": args.n, "plain_us": plain_us,
            "stages_us": dict(zip(STAGES, stages, strict=True))}


def report(res: dict[str, Any]) -> str:
    def p10(values: list[float]) -> float:
        return sorted(values)[len(values) // 10]

    rows = [[name, f"{statistics.median(v):.0f}", f"{p10(v):.0f}"]
            for name, v in res["stages_us"].items()]
    total = [sum(parts) for parts in zip(*res["stages_us"].values(), strict=True)]
    rows.append(["ours, whole call", f"{statistics.median(total):.0f}", f"{p10(total):.0f}"])
    rows.append(["plain, whole call", f"{statistics.median(res['plain_us']):.0f}",
                 f"{p10(res['plain_us']):.0f}"])
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs, Redis {res['machine']['redis']}; "
        f"package {res['machine']['package']}",
        f"{res['n']:,} publishes of each, alternating; microseconds per publish\n",
        table(["stage of ours", "median", "p10"], rows),
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--n", type=int, default=3000, help="publishes of each (default 3000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed first publishes (200)")
    p.add_argument("--broker-db", type=int, default=8, help="broker Redis DB (default 8)")
    p.add_argument("--store-db", type=int, default=9, help="store Redis DB (default 9)")
    args = p.parse_args()
    emit(run(args), args.json, report)


if __name__ == "__main__":
    main()
