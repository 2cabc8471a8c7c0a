"""Crash recovery time with the DEFAULT settings, per broker.

Why: a SIGKILLed worker (OOM, node loss) takes its running task with it.  The
Redis transport gives the message back only after ``visibility_timeout`` (an
hour), the SQLAlchemy transport never; our rescuer republishes it once the
claim's lease lapses.  With the defaults (``reliable_lease_seconds=30``,
``reliable_rescue_interval=5``, ``reliable_rescue_after=60``: none overridden)
the documented bound is about lease + interval; target: <= 60 s from the kill
to the task's completion by a new worker.

How: the example app ``tests/apps/shop.py`` in real worker subprocesses
(``tests/harness.py``): publish ``shop.slow_effect`` (its body runs ``--hold``
seconds), start a worker, wait for the body to start (counted in Redis), SIGKILL
the worker's process group, start a new worker at once, and time until the
body's effect is counted.  The new worker's log says when it rescued the task.
Brokers: Redis, RabbitMQ, and the SQLAlchemy transport on SQLite (with a SQLite
store), each on a fresh queue and key prefix that are removed afterwards.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from kombu.connection import Connection

from bench._common import REDIS, cleanup_broker, command_line, delete_matching, emit, machine, table
from celery_reliable.runtime import reset, runtime
from tests.apps.shop import Counter, build
from tests.harness import Worker, wait_for

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULTS = {"TEST_LEASE": "30", "TEST_RESCUE_INTERVAL": "5", "TEST_RESCUE_AFTER": "60"}
RESCUED = re.compile(rb"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): WARNING/[^\]]*\] rescued ")


def env_for(broker: str, tmp: Path, args: argparse.Namespace) -> dict[str, str]:
    prefix = "rc" + uuid.uuid4().hex[:8]
    urls = {"redis": f"{REDIS}/{args.broker_db}", "rabbitmq": AMQP,
            "sqla": f"sqla+sqlite:///{tmp / 'broker.db'}"}
    store = f"sqlite:///{tmp / 'store.db'}" if broker == "sqla" else f"{REDIS}/{args.db}"
    return {"TEST_PREFIX": prefix, "TEST_QUEUE": f"q-{prefix}", "TEST_BROKER_URL": urls[broker],
            "TEST_BACKEND_URL": f"{REDIS}/{args.db}", "TEST_COUNTER_URL": f"{REDIS}/{args.db}",
            "TEST_STORE_URL": store, **DEFAULTS}


def rescued_at(log: Path) -> float | None:
    """Wall-clock time of the new worker's 'rescued ...' log line."""
    match = RESCUED.search(log.read_bytes()) if log.exists() else None
    if match is None:
        return None
    return datetime.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(broker: str, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-recovery-{broker}-"))
    env = env_for(broker, tmp, args)
    app = build(env)
    runtime(app).store.migrate()
    counter = Counter(env["TEST_PREFIX"], env["TEST_COUNTER_URL"])
    second: Worker | None = None
    task_id: str | None = None
    try:
        handle = app.tasks["shop.slow_effect"].delay(1, args.hold)
        task_id = handle.id
        first = Worker(env, tmp).start()
        wait_for(lambda: counter.get("start", 1) == 1, 60, "the body to start")
        started = time.time()
        first.kill()
        killed, killed_wall = time.monotonic(), time.time()
        second = Worker(env, tmp).start()
        ready = time.monotonic() - killed
        recovered = wait_for(lambda: counter.get("effect", 1) == 1, args.timeout,
                             f"the rescued run (log: {second.log})") + ready
        result = handle.get(timeout=30)
        rescue = rescued_at(second.log)
        return {
            "broker": broker, "store": env["TEST_STORE_URL"].split(":")[0],
            "lease_left_at_kill_s": 30 - (killed_wall - started),
            "new_worker_ready_s": ready,
            "rescued_s": None if rescue is None else rescue - killed_wall,
            "recovered_s": recovered, "result": result,
            "starts": counter.get("start", 1), "effects": counter.get("effect", 1),
        }
    finally:
        if second is not None:
            second.stop()
        reset(app)
        cleanup(broker, env, task_id)


def cleanup(broker: str, env: dict[str, str], task_id: str | None) -> None:
    prefix, queue = env["TEST_PREFIX"], env["TEST_QUEUE"]
    aux = redis.Redis.from_url(env["TEST_COUNTER_URL"])
    delete_matching(aux, f"{prefix}:*")
    delete_matching(aux, f"{{{prefix}*")
    if task_id:
        aux.delete(f"celery-task-meta-{task_id}")
    if broker == "redis":
        client = redis.Redis.from_url(env["TEST_BROKER_URL"])
        cleanup_broker(client, prefix)
        # the killed worker's copy, held until visibility_timeout (1 h): nobody will want it
        for tag_, payload in client.hscan_iter("unacked"):
            if queue.encode() in payload:
                client.hdel("unacked", tag_)
                client.zrem("unacked_index", tag_)
    elif broker == "rabbitmq":
        with Connection(env["TEST_BROKER_URL"]) as conn:
            conn.default_channel.queue_delete(queue)


def report(res: dict[str, Any]) -> str:
    rows = [[r["broker"], r["store"], f"{r['lease_left_at_kill_s']:.1f}",
             f"{r['new_worker_ready_s']:.1f}",
             "?" if r["rescued_s"] is None else f"{r['rescued_s']:.1f}",
             f"{r['recovered_s']:.1f}", f"{r['starts']}/{r['effects']}"]
            for r in res["runs"]]
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs; package {res['machine']['package']}\n"
        "defaults: reliable_lease_seconds=30, "
        f"reliable_rescue_interval=5, reliable_rescue_after=60; body runs {res['hold']} s",
        "times in seconds after the SIGKILL:",
        table(["broker", "store", "lease left at kill", "new worker ready", "rescued",
               "completed", "body starts/effects"], rows),
        "target: completed <= 60 s",
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--brokers", default="redis,rabbitmq,sqla",
                   help="comma-separated: redis, rabbitmq, sqla (default all three)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds the task body runs (3)")
    p.add_argument("--repeat", type=int, default=1, help="runs per broker (default 1)")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after (s, default 120)")
    p.add_argument("--broker-db", type=int, default=7, help="Redis DB of the Redis broker (7)")
    p.add_argument("--db", type=int, default=6,
                   help="Redis DB of the store, results and effect counter (6)")
    args = p.parse_args()
    runs = [measure(b, args) for _ in range(args.repeat) for b in args.brokers.split(",")]
    res = {"machine": machine(), "hold": args.hold, "runs": runs}
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
