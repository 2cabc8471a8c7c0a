"""Redis memory, Redis time and client CPU per task recorded in the Redis state store.

Why: states are kept ``reliable_state_retention`` (7 days by default) after a
task's last transition, and on Redis that is memory, often in the Redis that is
also the broker; and every transition is a Lua script's work in that Redis,
which the worker's broker and store calls wait behind.  Size the first before
you turn recording on, and know the second.  The third is the worker's own: its
recorder thread shares the GIL with the tasks.

How: N tasks of one name, each with the four transitions of a task that
succeeded the first time (PENDING from the producer, then RECEIVED, STARTED,
SUCCEEDED from a worker), are recorded in batches of ``--batch`` tasks: PENDING
first (``RedisStateStore.record``), then the worker's three through a
``Recorder``, as a solo worker reports them (two calls per task), and the
recorder's ``flush``.  Memory per task is the change of
the server's ``used_memory`` divided by N (server-wide: other load on the
server shows in it), repeated; ``MEMORY USAGE`` of one task's keys and the
encoding of its history are shown beside it.  Redis time per task is the
``INFO commandstats`` time of ``EVALSHA`` over the worker's batches divided by
N (10th percentile and median over batches).  Client CPU per task is this
thread's CPU time putting the worker's transitions in the buffer, and writing
them (median over batches).  ``--worker`` sets the worker name
(its length decides whether a history stays a compact listpack).
Only keys under this run's prefix are written and deleted (never FLUSHDB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._common import REDIS, command_line, delete_matching, emit, machine, table, tag
from celery_reliable.states import State, Transition
from celery_reliable.states.recorder import Recorder
from celery_reliable.states.stores.redis import RedisStateStore
from celery_reliable.stores import open_store
from celery_reliable.stores.redis import RedisStore

NAME = "shop.send_receipt"
RETENTION = 7 * 86400.0
WORKER_STATES = (State.RECEIVED, State.STARTED, State.SUCCEEDED)


def record(states: RedisStateStore, client: redis.Redis, n: int, batch: int,
           worker: str) -> list[Cost]:
    """Record n finished tasks; the cost of each worker batch, per task."""
    recorder = Recorder(states, interval=3600.0, batch_size=3 * batch)  # flushed here only
    costs = []
    try:
        for start in range(0, n, batch):
            tasks = [str(uuid.uuid4()) for _ in range(min(batch, n - start))]
            states.record([Transition(t, NAME, f"receipt:{t[:8]}", State.PENDING,
                                      at=time.time() - 1) for t in tasks])
            written = recorder.counters["written"]
            cpu0 = time.thread_time()
            for t in tasks:  # as a solo worker reports them: at the start, at the end
                recorder.transitions(t, NAME, f"receipt:{t[:8]}", WORKER_STATES[:2],
                                     worker=worker)
                recorder.transitions(t, NAME, f"receipt:{t[:8]}", WORKER_STATES[2:],
                                     worker=worker)
            cpu1, redis0 = time.thread_time(), _evalsha_usec(client)
            recorder.flush()
            cpu2, redis1 = time.thread_time(), _evalsha_usec(client)
            if recorder.counters["written"] - written != 3 * len(tasks):
                raise RuntimeError(f"not every transition was written: {recorder.counters}")
            costs.append(Cost((cpu1 - cpu0) / len(tasks), (cpu2 - cpu1) / len(tasks),
                              (redis1 - redis0) / 1e6 / len(tasks)))
    finally:
        recorder.close()
    return costs


@dataclass(frozen=True)
class Cost:
    """Seconds per task: putting its transitions in the buffer, writing them (the
    client's CPU, both), and the Redis time of the scripts that wrote them."""

    buffer_cpu: float
    write_cpu: float
    redis: float


def _evalsha_usec(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("usec", 0))


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = tag("sm")
    url = f"{REDIS}/{args.db}"
    store = open_store(url, prefix=prefix)
    assert isinstance(store, RedisStore)
    states = RedisStateStore(store, retention=RETENTION)
    client = redis.Redis.from_url(url, decode_responses=True)
    cycles = []
    try:
        record(states, client, 1, 1, args.worker)  # loads the script
        delete_matching(client, f"{{{prefix}*")
        for _ in range(args.repeat):
            before = used(client)
            costs = record(states, client, args.tasks, args.batch, args.worker)
            times = [c.redis for c in costs]
            after = used(client)
            sample = next(client.scan_iter(match=f"{{{prefix}:st:0}}:c:*", count=1000))
            task = sample.rsplit(":c:", 1)[1]
            base = sample[: -len(task) - 2]
            keys = {"current": f"{base}c:{task}", "history": f"{base}h:{task}",
                    "by key": f"{base}k:receipt:{task[:8]}"}
            cycles.append({
                "bytes_per_task": (after - before) / args.tasks,
                "memory_usage": {k: int(client.memory_usage(v, samples=0) or 0)
                                 for k, v in keys.items()},
                "history_encoding": client.object("encoding", keys["history"]),
                "history": client.zrange(keys["history"], 0, -1),
                "redis_us_per_task_p10": sorted(times)[len(times) // 10] * 1e6,
                "redis_us_per_task_median": statistics.median(times) * 1e6,
                "buffer_cpu_us_per_task": statistics.median(c.buffer_cpu for c in costs) * 1e6,
                "write_cpu_us_per_task": statistics.median(c.write_cpu for c in costs) * 1e6,
            })
            delete_matching(client, f"{{{prefix}*")
    finally:
        delete_matching(client, f"{{{prefix}*")
        store.close()
    return {"machine": machine(), "tasks": args.tasks, "batch": args.batch,
            "worker": args.worker, "cycles": cycles}


def report(res: dict[str, Any]) -> str:
    rows = [[i + 1, f"{c['bytes_per_task']:.0f}",
             " / ".join(f"{v}" for v in c["memory_usage"].values()), c["history_encoding"],
             f"{c['redis_us_per_task_p10']:.1f}", f"{c['redis_us_per_task_median']:.1f}",
             f"{c['buffer_cpu_us_per_task']:.1f}", f"{c['write_cpu_us_per_task']:.1f}"]
            for i, c in enumerate(res["cycles"])]
    last = res["cycles"][-1]
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs, Redis {res['machine']['redis']}; "
        f"package {res['machine']['package']}",
        f"{res['tasks']:,} finished tasks per cycle (PENDING, then RECEIVED, STARTED, "
        f"SUCCEEDED in batches of {res['batch']}), worker {res['worker']!r} "
        f"({len(res['worker'])} characters)",
        "a history: " + ", ".join(last["history"]) + "\n",
        table(["cycle", "used_memory delta / task",
               "MEMORY USAGE current / history / by key", "history encoding",
               "Redis us/task p10", "median", "client CPU us/task: buffer",
               "write"], rows),
        f"\nbytes per finished task: {min(c['bytes_per_task'] for c in res['cycles']):.0f} "
        f"at least; a day at 100 tasks/s: "
        f"{min(c['bytes_per_task'] for c in res['cycles']) * 8_640_000 / 1e9:.1f} GB",
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--tasks", type=int, default=50_000, help="tasks per cycle (default 50000)")
    p.add_argument("--repeat", type=int, default=3, help="cycles (default 3)")
    p.add_argument("--batch", type=int, default=100,
                   help="tasks per record() call (default 100)")
    p.add_argument("--worker", default="celery@shop-worker-5d8f7c9b6-x7k2p",
                   help="worker name (default: a Kubernetes pod's, 34 characters)")
    p.add_argument("--db", type=int, default=11, help="dedicated Redis DB (default 11)")
    args = p.parse_args()
    emit(run(args), args.json, report)


if __name__ == "__main__":
    main()
