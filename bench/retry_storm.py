"""A retry storm: N tasks failing against one dependency, across two workers.

Measures how many retries actually run per second across the workers while
the dependency stays down, against what the retry budget allows: within any
window, ratio x first attempts of the window + floor x window.  Without the
budget every task would retry every ~1 s (the backoff), i.e. about N retries
per second.

    python bench/retry_storm.py --tasks 1000 --seconds 40
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REDIS, delete_matching, dump_json, machine, table, tag
from tests.harness import Worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the storm runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--floor", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--breaker-threshold", type=int, default=1_000_000,
                        help="consecutive failures that open the breaker (default: never, to "
                             "measure the budget alone; the library default is 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    run = tag("storm")
    env = {
        "STORM_PREFIX": run, "STORM_QUEUE": run, "STORM_RATIO": str(args.ratio),
        "STORM_FLOOR": str(args.floor), "STORM_WINDOW": str(args.window),
        "STORM_BREAKER_THRESHOLD": str(args.breaker_threshold),
    }
    os.environ.update(env)
    import _storm_app  # configured from the environment above

    counter = redis.Redis.from_url(REDIS + "/11", decode_responses=True)
    logs = Path(tempfile.mkdtemp(prefix="storm-"))
    workers = [
        Worker(env, logs, "prefork", 2, app="bench._storm_app", queue=run,
               loglevel="WARNING", log=logs / f"w{i}.log")
        for i in range(args.workers)
    ]
    for n in range(args.tasks):
        _storm_app.call.delay(n)
    try:
        for worker in workers:
            worker.start(ready_timeout=None)
        time.sleep(args.seconds)
    finally:
        for worker in workers:
            worker.stop()
    per_second: dict[int, dict[str, int]] = {}
    for key in counter.scan_iter(f"{run}:runs:*"):
        _, _, kind, second = key.split(":")
        per_second.setdefault(int(second), {"first": 0, "retry": 0})[kind] = int(
            counter.get(key) or 0
        )
    seconds = sorted(per_second)
    rows, worst = [], 0.0
    for second in seconds:
        window = [per_second.get(s, {"first": 0, "retry": 0})
                  for s in range(second - args.window + 1, second + 1)]
        firsts = sum(w["first"] for w in window)
        retries = sum(w["retry"] for w in window)
        allowed = args.ratio * firsts + args.floor * args.window
        worst = max(worst, retries / allowed if allowed else 0)
        now = per_second[second]
        rows.append([second - seconds[0], now["first"], now["retry"], retries, round(allowed, 1)])
    total_retries = sum(v["retry"] for v in per_second.values())
    duration = (seconds[-1] - seconds[0] + 1) if seconds else 0
    result = {
        "machine": machine(), "tasks": args.tasks, "workers": args.workers,
        "budget": {"ratio": args.ratio, "floor_per_s": args.floor, "window_s": args.window},
        "breaker_threshold": args.breaker_threshold,
        "first_attempts": sum(v["first"] for v in per_second.values()),
        "retries": total_retries,
        "seconds": duration,
        "retries_per_second": round(total_retries / duration, 1) if duration else 0,
        "worst_window_use": round(worst, 3),
    }
    if args.json:
        dump_json(result)
    else:
        print(table(["second", "first attempts", "retries", "retries in window",
                     "budget of window"], rows))
        print(f"\n{result['first_attempts']} first attempts, {total_retries} retries in "
              f"{duration} s ({result['retries_per_second']}/s); the busiest window used "
              f"{worst:.0%} of its budget")
    store = redis.Redis.from_url(REDIS + "/11")
    delete_matching(store, f"*{run}*")
    delete_matching(redis.Redis.from_url(REDIS + "/12"), f"*{run}*")


if __name__ == "__main__":
    main()
