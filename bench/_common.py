"""Helpers shared by the benchmark scripts: round-trip time, tables, worker processes.

Kept out of the package on purpose: nothing here is part of celery_reliable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.harness import Worker

ROOT = Path(__file__).resolve().parent.parent
#: The Redis server the benchmarks use (``BENCH_REDIS_URL``: one of their own, where
#: server-wide figures such as ``used_memory`` must not include other clients' load).
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def tag(prefix: str) -> str:
    """A name unique to this run (queues, key prefixes), so runs never see each other."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def redis_rtt(url: str = REDIS + "/0", n: int = 2000) -> float:
    """Median seconds of one PING from redis-py: one store round trip on this machine."""
    client = redis.Redis.from_url(url)
    client.ping()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - start)
    client.close()
    return statistics.median(samples)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (they depend on it)."""
    info = redis.Redis.from_url(REDIS).info("server")
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": info.get("redis_version"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "package": package_version(),
    }


def package_version() -> str:
    """The commit measured, and whether celery_reliable/ differs from it (read-only git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "celery_reliable")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if changed else "")


def delete_matching(client: redis.Redis, pattern: str) -> int:
    """Delete the keys matching ``pattern`` (SCAN, never FLUSHDB): only our own keys."""
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def cleanup_broker(client: redis.Redis, run_tag: str) -> None:
    """Remove a run's queues and kombu's binding bookkeeping for them from a Redis broker DB."""
    delete_matching(client, f"*{run_tag}*")
    for name in client.scan_iter(match="_kombu.binding*"):
        kind = client.type(name)
        members: Iterable[Any] = (client.smembers(name) if kind == b"set"
                                  else client.zrange(name, 0, -1) if kind == b"zset" else [])
        ours: list[Any] = [m for m in members if run_tag.encode() in m]
        if ours and kind == b"set":
            client.srem(name, *ours)
        elif ours:
            client.zrem(name, *ours)


def cpu_times() -> tuple[int, int, int]:
    """(total, idle, stolen) jiffies of all CPUs (Linux /proc/stat).  Stolen: time the
    hypervisor gave this VM's CPUs to someone else (a slow round for every variant)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4], values[7] if len(values) > 7 else 0


def cpu_busy(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``seconds``: others' load shows here."""
    total0, idle0, _ = cpu_times()
    time.sleep(seconds)
    total1, idle1, _ = cpu_times()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float = 0.25, max_wait: float = 60.0) -> float:
    """Wait (bounded) until the machine is mostly idle; the busy fraction finally seen."""
    if max_wait <= 0:
        return -1.0
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > limit and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.005) -> float:
    """Poll ``condition`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Drained:
    """One drain: tasks/s; the machine's CPUs busy and stolen (fractions); the worker's
    CPU seconds per task in its main threads and in its other threads."""

    rate: float
    busy: float
    stolen: float
    main_cpu: float
    other_cpu: float


class Drainer:
    """A worker kept running on a Redis broker; ``drain`` hands it a staged batch at once."""

    def __init__(self, app: str, env: Mapping[str, str], broker_url: str, queue: str, log: Path,
                 pool: str, concurrency: int, loglevel: str) -> None:
        self.env, self.queue = dict(env), queue
        self.broker = redis.Redis.from_url(broker_url)
        self.worker = Worker(env, log.parent, pool, concurrency, app=app, queue=queue,
                             loglevel=loglevel, log=log)

    def left(self) -> tuple[int, int]:
        """Messages in the queue, and unacknowledged ones (kombu's ``unacked`` hash)."""
        pipe = self.broker.pipeline(transaction=False)
        pipe.llen(self.queue)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        return int(queued), int(unacked)

    def drain(self, staging: str, total: int, timeout: float,
              done: Callable[[], bool] | None = None) -> Drained:
        """RENAME ``staging`` onto the queue; tasks/s from the first message taken to the
        last one acknowledged, the fractions of the machine's CPU time busy and stolen
        meanwhile, and the worker's CPU s per task (its main threads', its other threads').

        ``done``: the variant's own proof that its last task finished.  An empty queue
        and an empty ``unacked`` hash alone are not: kombu moves a message from the
        list into ``unacked`` in two steps, and a poll between them reads (0, 0).
        Without a proof (plain tasks leave no trace), the empty read is confirmed by a
        second one."""
        staged, left = self.broker.llen(staging), self.left()
        if staged != total or left != (0, 0):
            raise RuntimeError(
                f"expected {total} messages in {staging} and nothing pending; found {staged}, "
                f"and {left[0]} in {self.queue}, {left[1]} unacknowledged (to queues "
                f"{sorted(_unacked_routes(self.broker))})"
            )

        def started() -> bool:
            self.worker.check_alive()
            return self.left()[0] < total

        def finished() -> bool:
            self.worker.check_alive()
            return self.left() == (0, 0) and (done is None or done())

        cpu0, own0 = cpu_times(), self.worker.cpu_seconds_by_thread()
        self.broker.rename(staging, self.queue)  # the whole batch appears at once
        t0 = wait_until(started, timeout, f"the worker to take from {self.queue}")
        while True:
            t1 = wait_until(finished, timeout, f"{self.queue} to drain ({self.worker.log})")
            if done is not None:
                break
            # No proof: an empty read may fall between kombu's two steps.  Empty again a
            # poll later, it was the end: by then a message taken is in ``unacked`` while
            # its task runs, or acknowledged (a no-op's task takes under a millisecond).
            time.sleep(0.005)
            if self.left() == (0, 0):
                break
        cpu1, own1 = cpu_times(), self.worker.cpu_seconds_by_thread()
        elapsed = max(1, cpu1[0] - cpu0[0])
        return Drained(
            rate=total / (t1 - t0), busy=1 - (cpu1[1] - cpu0[1]) / elapsed,
            stolen=(cpu1[2] - cpu0[2]) / elapsed, main_cpu=(own1[0] - own0[0]) / total,
            other_cpu=(own1[1] - own0[1]) / total,
        )


def _unacked_routes(broker: redis.Redis) -> set[str]:
    """The routing keys of the messages in kombu's ``unacked`` hash (whose they are)."""
    routes = set()
    for raw in broker.hvals("unacked"):
        try:
            routes.add(str(json.loads(raw)[2]))
        except (ValueError, IndexError, TypeError):
            routes.add("(unreadable)")
    return routes


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text (and Markdown-compatible) table."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def dump_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def command_line(doc: str | None) -> argparse.ArgumentParser:
    """A bench's options: its module docstring as ``--help``, and ``--json``."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print raw results as JSON")
    return p


def emit(res: Any, as_json: bool, report: Callable[[Any], str]) -> None:
    """The results: raw JSON for scripts, else the report's tables."""
    dump_json(res) if as_json else print(report(res))
