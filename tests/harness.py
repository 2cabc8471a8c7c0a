"""Real worker subprocesses (and Redis servers of a test's own) for tests where a crash
is the point.

Each worker is its own process group, so SIGKILL takes the main process and its
pool children together, as the OOM killer or a node failure would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``condition()``; seconds it took.  Fails naming ``what``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, run as the shared one is
    (no persistence: a restart empties it), so a test can stop and restart it without
    disturbing any other test."""

    def __init__(self, directory: Path, binary: str = "redis-server") -> None:
        self.port = free_port()
        self.directory = directory
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"redis-server on port {self.port} exited ({self.proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Shut down (SIGTERM; without persistence every key is gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


class Producer(threading.Thread):
    """Calls ``publish(order)`` for order 0, 1, ... about ``rate`` times a second until
    stopped; keeps the task id of every publish that returned (one that raised, with
    the broker down, promised nothing) and counts the others."""

    def __init__(self, publish: Callable[[int], str], rate: float) -> None:
        super().__init__(daemon=True)
        self.publish = publish
        self.rate = rate
        self.published: dict[int, str] = {}
        self.order = 0  # the next one
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(1 / self.rate):
            try:
                self.published[self.order] = self.publish(self.order)
            except Exception:  # noqa: BLE001 - kombu raises many types while the broker is down
                self.refused += 1
            self.order += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def restart_under_load(
    broker: RedisServer, producer: Producer, ran: Callable[[int], bool],
    publish: Callable[[int], str], restarts: int, settle: int, probe: int = 1_000_000,
) -> dict[int, str]:
    """Restart ``broker`` ``restarts`` times while ``producer`` publishes.  Before each
    restart the worker must have run (``ran(order)``) a task published ``settle``
    publishes later, so every restart hits it busy; after each, a task published to the
    new broker (order ``probe + n``) must run.  ``ran`` raises if the worker died.  The
    task ids published, by order (the producer is stopped on return)."""
    producer.start()
    probes: dict[int, str] = {}
    try:
        for n in range(restarts):
            settled = producer.order + settle
            wait_for(lambda s=settled: ran(s), 30, f"task {settled} to run before restart {n + 1}")
            broker.restart()
            order = probe + n
            # Published right after the restart: it runs only if the worker survived and
            # its consumer reconnected.
            probes[order] = publish(order)
            wait_for(lambda o=order: ran(o), 30,
                     f"the worker to consume again after restart {n + 1}")
    finally:
        producer.stop()
    return {**producer.published, **probes}


class Worker:
    """``celery -A <app> worker`` in its own process group (tests and bench/ scripts)."""

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, pool: str = "solo", concurrency: int = 1,
        app: str = "tests.apps.shop", events: bool = False, queue: str | None = None,
        loglevel: str = "INFO", log: Path | None = None,
    ) -> None:
        self.name = f"w{uuid.uuid4().hex[:6]}"
        self.log = log or log_dir / f"{self.name}.log"
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.cmd = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool,
            "-c", str(concurrency), "-n", f"{self.name}@%h", "--loglevel", loglevel,
            "--without-mingle", "--without-gossip",
            "-Q", queue or env.get("TEST_QUEUE", "celery"), *(["-E"] if events else []),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float | None = 30) -> Worker:
        """Start it and wait for its "ready" line (logged at INFO; ``None``: do not wait)."""
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )
        if ready_timeout is not None:
            wait_for(self._ready, ready_timeout,
                     f"worker {self.name} to start (log: {self.log})")
        return self

    def _ready(self) -> bool:
        if self.log.exists() and b" ready." in self.log.read_bytes():
            return True  # it may already have died of its first task: that is the test's business
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
        return False

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM), killing if it does not finish in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.output()[-3000:]}")

    def cpu_seconds_by_thread(self) -> tuple[float, float]:
        """CPU time of the worker and its pool children, split into their main threads
        (Celery's consumer, the pool's task loops) and every other thread (ours: the
        state recorder, the heartbeat, the rescuer; Celery's timer).  Why: threads of a
        process share one GIL, so a background thread's work competes with the tasks'.
        Read from ``/proc/<pid>/task/<tid>/schedstat``: nanoseconds on a CPU, where
        ``stat`` counts 10 ms ticks (20 us per task over a batch of 500)."""
        if self.proc is None:
            return 0.0, 0.0
        main = other = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != self.proc.pid:
                    continue  # not in the worker's process group
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            for thread in (stat.parent / "task").glob("[0-9]*/schedstat"):
                try:
                    on_cpu = int(thread.read_text().split()[0])
                except (OSError, IndexError, ValueError):
                    continue  # this thread ended meanwhile; the others still count
                if thread.parent.name == stat.parent.name:
                    main += on_cpu
                else:
                    other += on_cpu
        return main / 1e9, other / 1e9


@contextmanager
def worker(env: Mapping[str, str], log_dir: Path, **kwargs: object) -> Iterator[Worker]:
    w = Worker(env, log_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield w.start()
    finally:
        w.stop()


def dead_records(store: Any, limit: int = 100) -> list[Any]:
    """The records of the most recent dead letters in ``store``'s index, newest first."""
    from celery_reliable.stores.model import DeadLetterQuery

    return [e.record for e in store.list_dead_letters(DeadLetterQuery(), limit).entries]


class Beat:
    """``celery -A <app> beat -S <scheduler>`` in its own process group."""

    def __init__(
        self, env: Mapping[str, str], log: Path, *, app: str = "tests.apps.shop",
        scheduler: str = "celery_reliable.beat:PersistentScheduler",
        schedule_file: Path | None = None,
    ) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.cmd = [
            sys.executable, "-m", "celery", "-A", app, "beat", "-S", scheduler,
            *(["-s", str(schedule_file)] if schedule_file is not None else []),
            "--loglevel", "INFO",
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Beat:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)
        wait_for(self._started, 30, f"beat to start (log: {self.log})")
        return self

    def _started(self) -> bool:
        if b"beat: Starting" in self.log.read_bytes():
            return True
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"beat exited:\n{self.log.read_text()[-3000:]}")
        return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)


@contextmanager
def beats(env: Mapping[str, str], log_dir: Path, count: int, **kwargs: Any) -> Iterator[list[Beat]]:
    """``count`` beat processes on the same schedule, each with its own schedule file
    (a database scheduler does not use it)."""
    running: list[Beat] = []
    try:
        for i in range(count):
            running.append(Beat(env, log_dir / f"beat{i}.log",
                                schedule_file=log_dir / f"beat{i}.schedule", **kwargs).start())
        yield running
    finally:
        for beat in running:
            beat.kill(signal.SIGTERM)
