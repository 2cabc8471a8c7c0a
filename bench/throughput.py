"""Throughput of ReliableTask against plain Celery and a hand-written idempotency check.

Why: every store round trip on the hot path shows in throughput, and a ratio
depends on the machine's round-trip time, so (DESIGN.md section 8) three
variants run side by side, alternating, on a real Redis broker and workers:

* plain  ``@app.task(acks_late=True)``, empty body;
* hand   the same doing GET done / SET NX lock / SET done itself (3 round trips);
* ours   ``ReliableTask`` with a Redis store (persist + dedupe on publish, claim,
  complete: the defaults).

Publish: tasks/s of the single-threaded ``.delay()`` loop, only the calls timed.
All producers (also ours with persist/dedupe on publish off) take turns,
``--chunk`` tasks at a time, so load from elsewhere hits them alike; N tasks
each per round, medians over rounds.  Extra round trips per publish =
(1/ours - 1/plain) / RTT, RTT = median of redis-py PINGs before, after and once per
round (a single reading can land in a burst of load).

Drain: one warmed-up worker per variant waits (idle, in BRPOP).  A round's
tasks go to a staging list, RENAMEd onto the worker's queue in one step; the
clock runs from the first message leaving the queue until the queue is empty
*and* nothing is unacknowledged (acks_late: after the body and, for ours, after
complete), polled every 5 ms: nothing is counted per task.  Overhead in
round-trip equivalents: k = 3 x (plain/ours - 1) / (plain/hand - 1).  The
workers' CPU time per task and the machine's CPU use (/proc/stat) are recorded
too: on a shared machine, others' load shows there.  The workers' CPU is also
split by thread: their main threads (the consumer, the tasks) and the others
(ours: the state recorder, heartbeat, rescuer), which share the main threads'
GIL; the solo worker here is CPU-bound, so CPU time is throughput.

Spread: on a noisy machine one run's median is not the answer, so k and the
publish ratios also get a 90 % interval, from the rounds drawn again with
replacement (2,000 times, a fixed seed; a round's variants stay together, as
they ran back to back).  A target inside the interval is not settled by the run.
The interval covers the noise from round to round, not the drift of the machine
from one run to the next: two runs of one commit, ten minutes apart, gave k 2.48
(2.12 to 3.19) and 1.58 (1.33 to 2.21).  Compare runs, not intervals alone.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from celery import Celery

from bench._common import (
    REDIS,
    Drainer,
    cleanup_broker,
    command_line,
    delete_matching,
    emit,
    machine,
    redis_rtt,
    table,
    tag,
)
from bench._tput_app import build, task
from celery_reliable.runtime import reset
from celery_reliable.stores import open_store

#: "ours" records every state transition (the default); "ours-nostates" does not
DRAIN_VARIANTS = ("plain", "hand", "ours", "ours-nostates")
#: publish-only variants of ours: name -> extra env
PUBLISH_ONLY = {
    "ours persist=off dedupe=off": {"BENCH_VARIANT": "ours", "BENCH_PERSIST": "0",
                                    "BENCH_DEDUPE": "0"},
    "ours persist=off dedupe=on": {"BENCH_VARIANT": "ours", "BENCH_PERSIST": "0",
                                   "BENCH_DEDUPE": "1"},
}
WARMUP = 20
T = TypeVar("T")


def publish(producers: dict[str, Celery], first: int, n: int, chunk: int
            ) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Publish n tasks per producer, interleaved in chunks so that load from elsewhere
    hits every variant alike; per producer: tasks/s and CPU s per publish of the timed
    ``.delay()`` loops, and the number of its last task."""
    tasks = {name: task(app) for name, app in producers.items()}
    wall, cpu = dict.fromkeys(tasks, 0.0), dict.fromkeys(tasks, 0.0)
    last: dict[str, int] = {}
    i = first
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        for name in rotated(tuple(tasks), start // chunk):
            noop = tasks[name]
            w, c = time.perf_counter(), time.process_time()
            for j in range(i, i + size):
                noop.delay(j)
            wall[name] += time.perf_counter() - w
            cpu[name] += time.process_time() - c
            i += size
            last[name] = i - 1
    return ({k: n / v for k, v in wall.items()}, {k: v / n for k, v in cpu.items()}, last)


class Proofs:
    """A variant's proof that its task n ran: its key is done (plain leaves no trace).
    One store and one client for the whole run; :meth:`close` at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.prefix = env["BENCH_PREFIX"]
        self.store = open_store(env["BENCH_STORE_URL"], prefix=self.prefix)
        self.client = redis.Redis.from_url(env["BENCH_DEDUPE_URL"])

    def of(self, variant: str, n: int) -> Callable[[], bool] | None:
        if variant.startswith("ours"):
            def key_done() -> bool:
                state = self.store.get_key(f"b:{n}")
                return state is not None and state.state == "done"

            return key_done
        if variant == "hand":
            return lambda: bool(self.client.exists(f"{self.prefix}:done:{n}"))
        return None

    def close(self) -> None:
        self.store.close()
        self.client.close()


def rotated(items: Sequence[T], r: int) -> list[T]:
    """Round r starts with a different variant: no variant always runs first."""
    r %= len(items)
    return [*items[r:], *items[:r]]


def add(tree: dict[str, Any], value: float, *path: str) -> None:
    """Append ``value`` to the list at ``tree[path[0]][path[1]]...``."""
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree.setdefault(path[-1], []).append(value)


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_tag, base = tag("tp"), f"{REDIS}/"
    env0 = {"BENCH_BROKER_URL": base + str(args.broker_db), "BENCH_PREFIX": run_tag,
            "BENCH_STORE_URL": base + str(args.store_db),
            "BENCH_DEDUPE_URL": base + str(args.dedupe_db)}
    if args.state_url:
        env0["BENCH_STATE_URL"] = args.state_url
    broker = redis.Redis.from_url(env0["BENCH_BROKER_URL"])
    res: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "chunk": args.chunk,
                           "rtt_s": [redis_rtt()], "loadavg_1m": [machine()["loadavg_1m"]]}
    producers = {v: build({**env0, "BENCH_VARIANT": v, "BENCH_QUEUE": f"{run_tag}-stage-{v}"})
                 for v in DRAIN_VARIANTS}
    producers.update({name: build({**env0, **extra, "BENCH_QUEUE": f"{run_tag}-scratch",
                                   "BENCH_PREFIX": run_tag + "x"})
                      for name, extra in PUBLISH_ONLY.items()})
    logdir = Path(tempfile.mkdtemp(prefix="bench-tput-"))
    counter, drainers = 0, []
    proofs = Proofs(env0)
    try:
        for pool in args.pools.split(","):
            concurrency = args.concurrency if pool == "prefork" else 1
            queues = {v: f"{run_tag}-{pool}-{v}" for v in DRAIN_VARIANTS}
            drainers = [Drainer("bench._tput_app", {**env0, "BENCH_VARIANT": v, "BENCH_QUEUE": q},
                                env0["BENCH_BROKER_URL"], q, logdir / f"{q}.log", pool,
                                concurrency, args.loglevel) for v, q in queues.items()]
            for d in drainers:
                d.worker.start(ready_timeout=None)  # warmed up below
            # a first small batch: workers up, connections open, scripts loaded
            counter = max(publish(producers, counter, WARMUP, WARMUP)[2].values()) + 1
            for d in drainers:
                d.drain(f"{run_tag}-stage-{d.env['BENCH_VARIANT']}", WARMUP, 120)
            for r in range(args.rounds):
                broker.delete(f"{run_tag}-scratch")
                rates, cpus, last = publish(producers, counter, args.n, args.chunk)
                res["rtt_s"].append(redis_rtt(n=300))  # the round trip of this round
                counter = max(last.values()) + 1
                for name in producers:
                    add(res, rates[name], "publish", name)
                    add(res, cpus[name], "publish_cpu_s", name)
                for d in rotated(drainers, r):
                    v = d.env["BENCH_VARIANT"]
                    got = d.drain(
                        f"{run_tag}-stage-{v}", args.n, 60 + args.n / 20, proofs.of(v, last[v])
                    )
                    add(res, got.rate, "drain", pool, v)
                    add(res, got.busy, "cpu_busy_during_drain", pool, v)
                    add(res, got.stolen, "cpu_stolen_during_drain", pool, v)
                    add(res, got.main_cpu + got.other_cpu, "worker_cpu_s", pool, v)
                    add(res, got.other_cpu, "worker_other_threads_cpu_s", pool, v)
                    print(f"  {pool} round {r + 1} {v:5}: drain {got.rate:7.1f}/s (CPUs "
                          f"{got.busy:.0%} busy, {got.stolen:.0%} stolen), publish "
                          f"{rates[v]:7.1f}/s", file=sys.stderr)
            for d in drainers:
                d.worker.stop()
    finally:
        proofs.close()
        for d in drainers:
            d.worker.stop()
        for app in producers.values():
            reset(app)  # closes the store of ours (a no-op for the plain apps)
            app.close()
        cleanup(env0, run_tag)
    res["rtt_s"].append(redis_rtt())
    res["loadavg_1m"].append(machine()["loadavg_1m"])
    return {"machine": machine(), **res, "logs": str(logdir)}


def cleanup(env: dict[str, str], run_tag: str) -> None:
    """Only this run's keys: its queues and bindings, store keys, hand-check keys."""
    cleanup_broker(redis.Redis.from_url(env["BENCH_BROKER_URL"]), run_tag)
    delete_matching(redis.Redis.from_url(env["BENCH_STORE_URL"]), f"{{{run_tag}*")
    delete_matching(redis.Redis.from_url(env["BENCH_DEDUPE_URL"]), f"{run_tag}:*")
    if "BENCH_STATE_URL" in env:
        delete_matching(redis.Redis.from_url(env["BENCH_STATE_URL"]), f"{{{run_tag}*")


def spread(rounds: Sequence[Sequence[float]], stat: Callable[..., float]) -> str:
    """The 90 % interval of ``stat(*variants)`` over the rounds drawn with replacement;
    ``rounds``: per variant, its value in each round."""
    rng = random.Random(0)
    together = list(zip(*rounds, strict=True))
    values = []
    for _ in range(2000):
        drawn = [rng.choice(together) for _ in together]
        value = stat(*([r[i] for r in drawn] for i in range(len(rounds))))
        if math.isfinite(value):
            values.append(value)
    if not values:
        return "n/a"
    values.sort()
    return f"{values[len(values) // 20]:.2f} to {values[-1 - len(values) // 20]:.2f}"


def _k(plain: Sequence[float], hand: Sequence[float], ours: Sequence[float]) -> float:
    p, h, o = statistics.median(plain), statistics.median(hand), statistics.median(ours)
    return 3 * (p / o - 1) / (p / h - 1) if p != h else float("nan")


def report(res: dict[str, Any]) -> str:
    rtt = statistics.median(res["rtt_s"])
    med = {k: statistics.median(v) for k, v in res["publish"].items()}
    plain = med["plain"]
    out = [
        f"machine: {res['machine']['cpus']} CPUs, Python {res['machine']['python']}, "
        f"Redis {res['machine']['redis']}; load avg {res['loadavg_1m']} (before, after); "
        f"package {res['machine']['package']}",
        "Redis round trip (redis-py PING): "
        + f"median {rtt * 1e6:.0f} us, from {min(res['rtt_s']) * 1e6:.0f} to "
        f"{max(res['rtt_s']) * 1e6:.0f} us (before, after, and once per round)",
        f"N = {res['n']} tasks per variant and round, {res['rounds']} rounds; publish "
        f"interleaved in chunks of {res['chunk']}\n",
        "Publish (producer loop, single thread; 'hand' publishes a plain task too):",
    ]
    rows = []
    cpu = {k: statistics.median(v) for k, v in res["publish_cpu_s"].items()}
    for name, rate in med.items():
        extra = 1 / rate - 1 / plain
        low, high = min(res["publish"][name]), max(res["publish"][name])
        ratio = spread([res["publish"]["plain"], res["publish"][name]],
                       lambda p, o: statistics.median(o) / statistics.median(p))
        rows.append([name, f"{rate:,.0f}", f"{low:,.0f}-{high:,.0f}", f"{rate / plain:.2f}",
                     ratio, f"{1e6 / rate:.0f}", f"{extra * 1e6:+.0f}", f"{extra / rtt:+.2f}",
                     f"{cpu[name] * 1e6:.0f}", f"{(cpu[name] - cpu['plain']) * 1e6:+.0f}"])
    out.append(table(["variant", "tasks/s", "range", "x plain", "90 %", "us/publish",
                      "extra us", "extra RTs", "CPU us", "extra CPU us"], rows))
    for pool, rates in res["drain"].items():
        m = {v: statistics.median(x) for v, x in rates.items()}
        k = _k(rates["plain"], rates["hand"], rates["ours"])
        per_round = [_k([p], [h], [o]) for p, h, o in zip(
            rates["plain"], rates["hand"], rates["ours"], strict=True)]
        busy = res["cpu_busy_during_drain"][pool]
        own = {v: statistics.median(x) for v, x in res["worker_cpu_s"][pool].items()}
        others = {v: statistics.median(x)
                  for v, x in res["worker_other_threads_cpu_s"][pool].items()}
        out.append(f"\nDrain, pool={pool} (tasks/s; worker CPU us per task, of it in threads "
                   "other than the main ones; machine CPUs busy):")
        rows = [[v, f"{m[v]:,.0f}", " ".join(f"{x:.0f}" for x in rates[v]),
                 f"{m[v] / m['plain']:.2f}", f"{1e6 / m[v]:.0f}",
                 f"{(1 / m[v] - 1 / m['plain']) * 1e6:+.0f}", f"{own[v] * 1e6:.0f}",
                 f"{others[v] * 1e6:.0f}", " ".join(f"{x:.0%}" for x in busy[v])]
                for v in DRAIN_VARIANTS]
        out.append(table(["variant", "median", "rounds", "x plain", "us/task", "extra us",
                          "worker CPU us", "other threads", "CPUs busy"], rows))
        k_cpu = 3 * (own["ours"] - own["plain"]) / (own["hand"] - own["plain"])
        out.append(f"k = 3 x (plain/ours - 1) / (plain/hand - 1) = {k:.2f} round-trip "
                   f"equivalents (per round: {', '.join(f'{x:.2f}' for x in per_round)}); "
                   f"hand's extra us/task / RTT = "
                   f"{(1 / m['hand'] - 1 / m['plain']) / rtt:.1f} (3 if one RT costs one RTT)")
        out.append(f"median of the per-round k (each round's variants ran back to back): "
                   f"{statistics.median(per_round):.2f}; 90 % interval of k over the rounds: "
                   f"{spread([rates['plain'], rates['hand'], rates['ours']], _k)}")
        out.append(f"same formula on worker CPU time per task: {k_cpu:.2f}")
        stolen = [x for v in DRAIN_VARIANTS for x in res["cpu_stolen_during_drain"][pool][v]]
        out.append(f"CPU time stolen by the hypervisor during the drains: median "
                   f"{statistics.median(stolen):.0%}, max {max(stolen):.0%} (a round with "
                   "steal is slow for whichever variant it hits)")
        k_quiet = _k(rates["plain"], rates["hand"], rates["ours-nostates"])
        out.append(f"k without state recording (ours-nostates): {k_quiet:.2f} (90 % interval "
                   f"{spread([rates['plain'], rates['hand'], rates['ours-nostates']], _k)})")
    return "\n".join(out)


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("-n", type=int, default=500,
                   help="tasks per variant and round (default 500: short rounds, many of them, "
                        "so a burst of load from elsewhere hits one round, not one variant)")
    p.add_argument("--rounds", type=int, default=16, help="rounds (default 16)")
    p.add_argument("--pools", default="solo,prefork", help="worker pools, comma-separated")
    p.add_argument("--concurrency", type=int, default=2, help="prefork concurrency (default 2)")
    p.add_argument("--chunk", type=int, default=100,
                   help="publish the variants interleaved, this many tasks at a time (100)")
    p.add_argument("--loglevel", default="WARNING", help="worker log level (default WARNING)")
    p.add_argument("--broker-db", type=int, default=8, help="Redis DB of the broker (default 8)")
    p.add_argument("--store-db", type=int, default=9, help="Redis DB of our store (default 9)")
    p.add_argument("--dedupe-db", type=int, default=10, help="Redis DB of the hand check (10)")
    p.add_argument("--state-url", default=None,
                   help="ours records task states here (default: in its store), e.g. a second "
                        "Redis server: redis://127.0.0.1:6380/0")
    args = p.parse_args()
    res = run(args)
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
