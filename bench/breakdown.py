# mypy: disable-error-code="untyped-decorator"
"""Where ReliableTask's per-task time goes, one piece at a time, in one process.

Why: bench/throughput.py says *how much* slower publish and drain are; this
says *what* the difference is made of, without a broker or a worker, so the
numbers hold even on a busy machine (pieces are interleaved in rounds, medians
reported).  Each line is microseconds per call (wall) and CPU microseconds:

* ``PING``, ``GET``: one plain round trip from redis-py (the unit of "RT");
* ``store.lookup``, ``store.publish``, ``store.claim + complete``: the store's
  Lua round trips, with the same arguments ReliableTask passes;
* ``hand check``: GET + SET NX + SET, the hand-written 3-round-trip check;
* ``key_for``, ``records.encode``: the CPU work a publish adds before its round trip
  (and ``key_for`` of a task without a key template, on a payload of 200 small dicts);
* ``apply (eager)``: the whole body path of plain, hand and ours through
  Celery's tracer (``task.apply``), which runs claim and complete for ours.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._common import REDIS, command_line, delete_matching, emit, machine, table, tag
from bench._tput_app import build, task
from celery_reliable import ReliableTask
from celery_reliable.records import encode
from celery_reliable.runtime import reset, runtime


def pieces(prefix: str, db: int) -> tuple[dict[str, Callable[[int], Any]], Callable[[], None]]:
    """The timed pieces, and what closes their stores."""
    url = f"{REDIS}/{db}"
    env = {"BENCH_PREFIX": prefix, "BENCH_STORE_URL": url, "BENCH_DEDUPE_URL": url,
           "BENCH_QUEUE": prefix}
    apps = {v: build({**env, "BENCH_VARIANT": v}) for v in ("plain", "hand", "ours")}
    ours = task(apps["ours"])
    store = runtime(apps["ours"]).store
    client = redis.Redis.from_url(url)
    ids = [str(uuid.uuid4()) for _ in range(200_000)]
    fp = ours.key_for((1,), {})[1]
    options = {"headers": {"reliable_key": "b:1", "reliable_fp": fp}, "link": None,
               "link_error": None, "shadow": None}

    def record(i: int) -> Any:
        return encode(apps["ours"], name=ours.name, task_id=ids[i], key=f"p:{i}",
                      fingerprint=fp, args=(i,), kwargs={}, options=options)[0]

    def hand(i: int) -> None:
        client.get(f"{prefix}:done:{i}")
        client.set(f"{prefix}:lock:{i}", "1", nx=True, px=30_000)
        client.set(f"{prefix}:done:{i}", "1", px=86_400_000)

    def claim_complete(i: int) -> None:
        store.claim(f"c:{i}", fp, ids[i], "celery@host:1:abcdef12", 30, 3)
        store.complete(f"c:{i}", fp, "celery@host:1:abcdef12", ids[i], "null", 86400)

    @apps["ours"].task(base=ReliableTask, name="bench.payload", shared=False)
    def payload(rows: list[dict[str, Any]]) -> None: ...

    rows = [{"sku": f"s{i}", "qty": i, "price": "9.99"} for i in range(200)]

    def close() -> None:
        for app in apps.values():
            reset(app)

    return {
        "PING": lambda i: client.ping(),
        "GET": lambda i: client.get(f"{prefix}:nothing"),
        "hand check (3 RTs)": hand,
        "store.lookup": lambda i: store.lookup(f"l:{i}", fp),
        "store.publish": lambda i: store.publish(record(i), 60, True),
        "store.claim + complete": claim_complete,
        "key_for": lambda i: ours.key_for((i,), {}),
        "key_for, hash key, 200 rows": lambda i: payload.key_for(([*rows, {"n": i}],), {}),
        "records.encode": record,
        "apply (eager) plain": lambda i: task(apps["plain"]).apply((i,)),
        "apply (eager) hand": lambda i: task(apps["hand"]).apply((i,)),
        "apply (eager) ours": lambda i: task(apps["ours"]).apply((i,)),
    }, close


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = tag("bd")
    funcs, close = pieces(prefix, args.db)
    wall: dict[str, list[float]] = {name: [] for name in funcs}
    cpu: dict[str, list[float]] = {name: [] for name in funcs}
    i = 0
    try:
        for f in funcs.values():  # warm-up: connections, script loading
            for _ in range(20):
                f(i)
                i += 1
        for _ in range(args.rounds):
            for name, f in funcs.items():
                w, c = time.perf_counter(), time.process_time()
                for _ in range(args.n):
                    f(i)
                    i += 1
                wall[name].append((time.perf_counter() - w) / args.n)
                cpu[name].append((time.process_time() - c) / args.n)
    finally:
        close()
        client = redis.Redis.from_url(f"{REDIS}/{args.db}")
        delete_matching(client, f"{{{prefix}*")
        delete_matching(client, f"{prefix}:*")
    return {"machine": machine(), "n": args.n, "rounds": args.rounds,
            "wall_s": {k: statistics.median(v) for k, v in wall.items()},
            "cpu_s": {k: statistics.median(v) for k, v in cpu.items()}}


def report(res: dict[str, Any]) -> str:
    ping = res["wall_s"]["PING"]
    rows = [[name, f"{w * 1e6:.0f}", f"{res['cpu_s'][name] * 1e6:.0f}", f"{w / ping:.2f}"]
            for name, w in res["wall_s"].items()]
    a = {v: res["wall_s"][f"apply (eager) {v}"] for v in ("plain", "hand", "ours")}
    k = 3 * (a["ours"] - a["plain"]) / (a["hand"] - a["plain"])
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs; package {res['machine']['package']}; "
        f"{res['rounds']} rounds x {res['n']} calls, "
        "medians",
        table(["piece", "us (wall)", "CPU us", "in PINGs"], rows),
        f"eager body path, k = 3 x (ours - plain) / (hand - plain) = {k:.2f}",
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("-n", type=int, default=500, help="calls per piece per round (default 500)")
    p.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    p.add_argument("--db", type=int, default=9, help="Redis DB for the store and hand keys (9)")
    args = p.parse_args()
    res = run(args)
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
