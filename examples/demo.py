"""celery_reliable in under a minute: duplicates are skipped, a crashed worker loses nothing,
a final failure waits in the dead-letter queue until it is replayed.

    pip install -e ".[demo]"
    python examples/demo.py                                    # no server: SQLite files
    REDIS_URL=redis://127.0.0.1:6379 python examples/demo.py   # or Redis (dbs 0 and 1)

Real worker subprocesses (``celery -A examples.demo_app worker``) run the tasks of
``examples/demo_app.py``.  Side effects are counted outside them, so every scene is
checked by counting, and the exit status is non-zero if one fails: a smoke test too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import celery.exceptions

import celery_reliable

ROOT = Path(__file__).resolve().parent.parent
UUID = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``condition()``; the seconds it took (TimeoutError naming ``what``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class Worker:
    """A real worker in its own process group: one signal reaches all of its processes,
    as the OOM killer or a node failure would, and none can be left behind."""

    def __init__(self, log: Path, number: int) -> None:
        self.log, self.name = log, f"worker{number}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        cmd = [sys.executable, "-m", "celery", "-A", "examples.demo_app", "worker", "-P", "solo",
               "-c", "1", "-n", f"{self.name}@%h", "-Q", os.environ["DEMO_PREFIX"],
               "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)},
                                         start_new_session=True)

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start-up; see {self.log}")
            return b" ready." in self.log.read_bytes()[offset:]

        wait_for(ready, 30, f"{self.name} to start (log: {self.log})")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group: no clean-up runs, no message is acknowledged."""
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> bool:
        """Warm shutdown (SIGTERM: finish the current task, then exit); True if it exited 0."""
        if self.proc is None or not self.alive():
            return False
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            self.kill()
            return False


def check(ok: bool, text: str) -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {text}")
    return ok


def quote_log(log: Path, *needles: str) -> None:
    """Print the worker's own words: the first log line with each needle, short task ids."""
    lines = log.read_text().splitlines()
    for needle in needles:
        found = [UUID.sub(r"\1", line.split("] ", 1)[-1]) for line in lines if needle in line]
        more = f" (x{len(found)})" if len(found) > 1 else ""
        print(f"    worker log{more}: {found[0] if found else '(no such line)'}")


def duplicates(demo: ModuleType, start: Callable[[], Worker], log: Path) -> bool:
    start()
    handles = [demo.send_receipt.delay(order_id=42) for _ in range(5)]
    ok = check(len({h.id for h in handles}) == 1, "send_receipt(order_id=42) x5 -> 1 task id "
               f"({handles[0].id[:8]}): the producer found 'receipt:42' in flight")
    first = handles[0].get(timeout=30, interval=0.1)
    copies = [demo.resend_receipt.delay(order_id=42) for _ in range(5)]
    ok &= check(len({h.id for h in copies}) == 5, "resend_receipt(order_id=42) x5 -> 5 messages "
                "(dedupe_on_publish=False: no producer check)")
    answers = [h.get(timeout=30, interval=0.1) for h in handles + copies]
    quote_log(log, "skipped: key 'receipt:42'")
    ok &= check(answers == [first] * 10, f"all 10 handles return {first!r}")
    count = demo.effects.get("receipt:42")
    return check(count == 1, f"receipts sent: {count}") and ok


def crash(demo: ModuleType, victim: Worker, start: Callable[[], Worker], log: Path) -> bool:
    handle = demo.charge_card.delay(order_id=7, seconds=4.0)
    wait_for(lambda: demo.effects.get("charge-started:7") == 1, 30, "charge_card to start")
    victim.kill()
    killed = time.monotonic()
    ok = check(demo.effects.get("charge:7") == 0, "charge_card(order_id=7) started, a 4 s call; "
               f"SIGKILLed {victim.name} -> cards charged: 0")
    lost = ("Redis gives it back only after visibility_timeout, 1 h here" if demo.REDIS_URL
            else "kombu's SQLAlchemy transport never gives it back")
    print(f"    The killed worker's message: {lost}.\n    What recovers it is the rescuer, "
          "republishing the task record persisted at publish.")
    start()
    wait_for(lambda: demo.effects.get("charge-started:7") == 2, 60, "the rescued run")
    rerun = time.monotonic() - killed
    wait_for(lambda: demo.effects.get("charge:7") > 0, 30, "the rescued run to charge the card")
    recovered = time.monotonic() - killed
    quote_log(log, "rescued demo.charge_card", "previous run died")
    ok &= check(recovered < 20, f"run again {rerun:.1f} s after the kill (its 3 s lease lapsed, "
                f"a sweep rescued it), card charged {recovered:.1f} s after the kill")
    result = handle.get(timeout=30, interval=0.1)
    count, runs = demo.effects.get("charge:7"), demo.effects.get("charge-started:7")
    return check(count == 1, f"charge_card started {runs} times, cards charged: {count}; the "
                 f"handle returns {result!r}") and ok


def dead_letters(demo: ModuleType, log: Path) -> bool:
    letters = celery_reliable.DeadLetters(demo.app)
    handle = demo.ship_order.delay(order_id=3)

    def entry() -> Any:
        return letters.get(handle.id)

    wait_for(lambda: entry() is not None, 30, "ship_order to be dead-lettered")
    dead = entry()
    quote_log(log, "dead-lettered (permanent_error)")
    dlq = celery_reliable.runtime(demo.app).settings.dlq_queue
    ok = check(dead.reason == "permanent_error" and demo.effects.get("shipped:3") == 0,
               f"ship_order(order_id=3) failed for good: {dead.error}; kept in the DLQ queue "
               f"{dlq!r} and its index (`celery -A examples.demo_app reliable-dlq list`), "
               "not retried, not lost")
    demo.effects.incr("carrier-fixed")
    print("    The carrier's API is fixed; the operator replays the entry "
          "(`reliable-dlq replay ID`, here DeadLetters(app).replay([ID])).")
    first = letters.replay([handle.id])
    # The task id's result was the first run's FAILURE; the replay's SUCCESS replaces it
    # (read past the result cache, which keeps a finished state).
    def status() -> dict[str, Any]:
        return dict(demo.app.backend.get_task_meta(handle.id, cache=False))

    wait_for(lambda: status()["status"] == "SUCCESS", 30, "the replayed ship_order")
    second = letters.replay([handle.id])
    ok &= check(first.replayed == [handle.id] and not first.failed,
                f"replayed: same task id and key, attempts from 1 -> {status()['result']!r}")
    return check(second.replayed == [] and second.skipped == [handle.id]
                 and demo.effects.get("shipped:3") == 1,
                 "replayed again: nothing published (already replayed); orders shipped: "
                 f"{demo.effects.get('shipped:3')}") and ok


def shutdown(demo: ModuleType, workers: list[Worker]) -> bool:
    ok = all([check(w.stop(), f"{w.name} stopped by SIGTERM, exit status 0")
              for w in workers if w.alive()])
    pending = celery_reliable.runtime(demo.app).store.pending_count()
    return check(pending == 0, f"task records still queued or running: {pending}") and ok


def run(demo: ModuleType, log: Path, workers: list[Worker], results: dict[str, bool]) -> None:
    def start() -> Worker:
        workers.append(Worker(log, len(workers) + 1))
        return workers[-1].start()

    def scene(title: str, notice: str, play: Callable[[], bool]) -> None:
        print(f"\n=== {title} ===\n    Notice: {notice}")
        try:
            results[title] = play()
        except (TimeoutError, celery.exceptions.TimeoutError) as exc:
            results[title] = check(False, str(exc) or type(exc).__name__)

    where = "Redis" if demo.REDIS_URL else "SQLite files (no server)"
    print(f"celery_reliable demo: real Celery workers; broker, store and results in {where}\n"
          f"    worker log: {log}\n"
          "    leases of 3 s, a rescue sweep every 0.5 s: production defaults are 30 s and 5 s,\n"
          "    so there a crashed worker's task is recovered within about 35 s")
    store = celery_reliable.runtime(demo.app).store
    store.migrate()
    store.ping()  # fail fast, naming the server, when it is not there
    print("    store schema created by store.migrate(); in production a deploy step does it\n"
          "    (`celery -A yourapp reliable-store migrate`), never a worker")
    scene("1. Duplicates are skipped", "10 publishes of one receipt, 1 receipt sent, and every "
          "handle answers with it.", lambda: duplicates(demo, start, log))
    scene("2. A worker crash loses nothing", "the card is charged exactly once, though its "
          "worker is SIGKILLed mid-charge.", lambda: crash(demo, workers[-1], start, log))
    scene("3. A final failure waits in the DLQ, then is replayed", "the order ships once, after "
          "the cause is fixed; a second replay publishes nothing.",
          lambda: dead_letters(demo, log))
    scene("4. Clean shutdown", "SIGTERM lets a worker finish and exit; nothing is left in "
          "flight.", lambda: shutdown(demo, workers))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the demo directory and log")
    keep = parser.parse_args().keep
    workdir = Path(tempfile.mkdtemp(prefix="celery-reliable-demo-"))
    # What demo_app reads, exported so every worker sees the same; a fresh prefix makes
    # this run's Redis keys its own (deleted at the end).
    os.environ.update(DEMO_DIR=str(workdir), DEMO_PREFIX=f"demo_{uuid.uuid4().hex[:8]}")
    sys.path.insert(0, str(ROOT))  # `examples.demo_app`, as the workers import it
    workers: list[Worker] = []
    results: dict[str, bool] = {}
    demo: ModuleType | None = None
    interrupted = False
    try:
        demo = importlib.import_module("examples.demo_app")  # reads the variables just set
        run(demo, workdir / "worker.log", workers, results)
    except KeyboardInterrupt:
        interrupted = True
    except celery_reliable.StoreUnavailable as exc:
        print(f"\n{exc}")
    finally:
        for worker in workers:
            worker.kill()  # a no-op for a stopped worker: no subprocess is left behind
        passed = len(results) == 4 and all(results.values())
        if demo is not None:
            celery_reliable.runtime(demo.app).close()
            demo.forget()
        if keep or (workers and not (passed or interrupted)):
            print(f"\nkept {workdir} (worker log: {workdir / 'worker.log'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nSummary:")
    for title, ok in results.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {title}")
    if interrupted:
        print("Interrupted: every worker was stopped.")
        return 130
    print("All scenes passed." if passed else "FAILED." + (" See the log." if workers else ""))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
