"""What state recording costs the other clients of its Redis: how long a command waits.

Why: the recorder writes a batch of transitions with one Lua script, and Redis
runs nothing else while a script runs.  A batch of a few hundred transitions
blocks the server for milliseconds, and every client of that Redis (the broker,
if it is the same server; the app's cache) waits that long now and then.  The
throughput bench does not show it: it reports medians.

How: one warmed-up solo worker per variant under test (``ReliableTask`` with the
defaults and a Redis store, ``bench/_tput_app.py``).  A variant is
``BATCH/ROWS``: ``reliable_state_batch_size`` (transitions per record call, one
round trip) and the Redis state store's ``SCRIPT_ROWS`` (transitions per Lua
script in that call; a module constant, set in the worker for the bench).
Each round publishes N tasks per worker to a staging list, then drains each
worker in turn while a probe thread sends a ``PING`` every millisecond on a
connection of its own and times it.  Printed per batch size: the probe's
latency percentiles and maximum over all rounds, and the drain rate.  The
Redis server's ``INFO commandstats`` time per ``EVALSHA`` of the record script
is not separated from the others: the probe is what a neighbour sees.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._common import REDIS, Drainer, cleanup_broker, command_line, emit, machine, table, tag
from bench._tput_app import build, task
from celery_reliable.runtime import reset
from celery_reliable.states import recorder


class Probe:
    """PING every ``interval`` seconds from a thread; latencies kept while ``recording``."""

    def __init__(self, url: str, interval: float = 0.001) -> None:
        self.client = redis.Redis.from_url(url)
        self.interval = interval
        self.samples: list[float] = []
        self.recording = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.client.ping()
        while not self._stop.is_set():
            start = time.perf_counter()
            self.client.ping()
            took = time.perf_counter() - start
            if self.recording:
                self.samples.append(took)
            time.sleep(self.interval)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(sizes: list[str], n: int, rounds: int) -> dict[str, Any]:
    run_tag, broker_url = tag("st"), f"{REDIS}/8"
    base = {"BENCH_BROKER_URL": broker_url, "BENCH_STORE_URL": f"{REDIS}/9",
            "BENCH_VARIANT": "ours"}
    logdir = Path(tempfile.mkdtemp(prefix="bench-stall-"))
    workers: dict[str, Drainer] = {}
    producers = {}
    res: dict[str, Any] = {"n": n, "rounds": rounds, "probe": {}, "drain": {}}
    try:
        for size in sizes:
            batch_size, rows = size.split("/")
            queue = f"{run_tag}-b{batch_size}-r{rows}"
            env = {**base, "BENCH_QUEUE": queue, "BENCH_PREFIX": f"{run_tag}b{batch_size}r{rows}",
                   "BENCH_STATE_BATCH": batch_size, "BENCH_SCRIPT_ROWS": rows}
            workers[size] = Drainer("bench._tput_app", env, broker_url, queue,
                                    logdir / f"{queue}.log", "solo", 1, "WARNING")
            workers[size].worker.start(ready_timeout=None)
            producers[size] = build({**os.environ, **env, "BENCH_QUEUE": f"{queue}-stage"})
        counter = 0
        with Probe(f"{REDIS}/0") as probe:
            for r in range(-1, rounds):  # round -1 warms the workers up
                batch = 50 if r < 0 else n
                for app in producers.values():
                    noop = task(app)
                    for j in range(counter, counter + batch):
                        noop.delay(j)
                    counter += batch
                    recorder(app).flush(force=True)  # its PENDING transitions, written now
                time.sleep(0.5)
                for size in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
                    drainer = workers[size]
                    probe.samples = []
                    probe.recording = r >= 0
                    rate = drainer.drain(f"{drainer.queue}-stage", batch, 120).rate
                    probe.recording = False
                    if r >= 0:
                        res["probe"].setdefault(size, []).extend(probe.samples)
                        res["drain"].setdefault(size, []).append(rate)
                        print(f"  round {r + 1} {size}: drain {rate:7.1f}/s, "
                              f"max PING {max(probe.samples) * 1e3:.2f} ms", file=sys.stderr)
    finally:
        for drainer in workers.values():
            drainer.worker.stop()
        for app in producers.values():
            reset(app)
            app.close()
        cleanup_broker(redis.Redis.from_url(broker_url), run_tag)
        client = redis.Redis.from_url(base["BENCH_STORE_URL"])
        for key in client.scan_iter(match=f"{{{run_tag}*", count=1000):
            client.delete(key)
    return {"machine": machine(), **res}


def report(res: dict[str, Any]) -> str:
    rows = []
    for size, samples in res["probe"].items():
        rows.append([size, len(samples), *(f"{percentile(samples, q) * 1e3:.2f}"
                                           for q in (0.5, 0.99, 0.999)),
                     f"{max(samples) * 1e3:.2f}",
                     f"{statistics.median(res['drain'][size]):,.0f}"])
    m = res["machine"]
    return "\n".join([
        f"machine: {m['cpus']} CPUs, Redis {m['redis']}; package {m['package']}",
        f"N = {res['n']} tasks per worker and round, {res['rounds']} rounds; a PING every ms "
        "while each worker drains",
        table(["batch size / rows per script", "PINGs", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
               "drain tasks/s"], rows),
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--variants", default="500/500,500/25,25/25",
                   help="BATCH/ROWS pairs, comma-separated (500/500,500/25,25/25)")
    p.add_argument("-n", type=int, default=2000, help="tasks per worker and round (2000)")
    p.add_argument("--rounds", type=int, default=4, help="rounds (4)")
    args = p.parse_args()
    sizes = args.variants.split(",")
    emit(run(sizes, args.n, args.rounds), args.json, report)


if __name__ == "__main__":
    main()
