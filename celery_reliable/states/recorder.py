"""The recorder: where tasks and signal handlers report state transitions.

``recorder.transition(task_id, name, key, state, ...)`` never raises and never
blocks on the store in the default mode: recording a state must not be able
to lose, fail or duplicate the task it describes.  A write that fails is
logged and counted; the transitions stay buffered and go with the next write.

Flush modes (``reliable_state_flush``):

``async`` (default)
    ``transition()`` appends to a per-process buffer; a daemon thread writes
    the buffer with one ``record()`` call (one Redis round trip, one SQL
    transaction) every ``reliable_state_flush_interval`` (0.2 s).  The task's
    hot path pays no round trip.  Trade-off: a process killed with SIGKILL
    loses up to one interval of transitions (never the task: the rescuer and
    the claim do not read states), and a reader sees states up to one interval
    late.
``sync``
    ``transition()`` writes before it returns: nothing is lost with the
    process, at the price of one store round trip per transition on the path
    of the task.  A store that fails is not called again before a backoff
    (0.5 s doubling to 30 s): transitions buffer meanwhile.

The buffer is bounded (``reliable_state_buffer_size``): while the store is
down, transitions beyond it are dropped and counted.  Each transition carries
a unique id, so a batch written again after an ambiguous failure is not
recorded twice.

The caller's side does as little as it can: it notes the time and appends the
call's arguments.  Checking the states, ordering the times and building the
transitions happen when the buffer is written, in the flush thread.  Why: in a
solo worker the task's thread is the bottleneck, and the same work costs it
3-5 times more among Celery's and kombu's code than in a loop of its own (cold
caches); the flush thread mostly runs while that thread waits on the broker.

Fork safety: after ``os.fork()`` (prefork pool) the child empties its copy of
the buffer (the parent writes those), forgets the parent's flush thread and
locks, and starts its own thread on its first transition.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery_reliable.errors import ReliableError
from celery_reliable.states.config import ASYNC, SYNC
from celery_reliable.states.machine import State
from celery_reliable.states.model import RecordResult, Transition
from celery_reliable.states.stores.base import StateStore

logger = logging.getLogger("celery_reliable.states")

#: Longest texts kept (the SQL columns' sizes; error messages are cut, not refused).
_NAME_MAX, _MESSAGE_MAX = 255, 2000
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
#: A failing store is logged at most this often (each failure is counted).
_LOG_EVERY = 30.0
_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()

_Call = tuple[float, str, str, str, Sequence[Any], int, str | None, tuple[str, str] | None,
              dict[str, Any] | None]
"""A reported call: (time, task id, name, key, states, attempt, worker, (error type,
error message), detail).  A negative time was given by the caller (``at=``): kept as it
is, not made later than the process's last one."""


COUNTERS = ("written", "duplicates", "rejected_illegal", "write_errors",
            "dropped_on_overflow", "dropped_on_error")


class Recorder:
    def __init__(
        self, store: StateStore | Callable[[], StateStore], *, flush: str = ASYNC,
        interval: float = 0.2, buffer_size: int = 10_000, batch_size: int = 500,
        enabled: bool = True,
    ) -> None:
        """``store`` may be a callable that opens it: nothing connects before the first write."""
        if flush not in (SYNC, ASYNC):
            raise ValueError(f"flush must be {SYNC!r} or {ASYNC!r}, got {flush!r}")
        self._opener = store if callable(store) else None
        self._store = None if callable(store) else store
        self.mode = flush
        self.interval = interval
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.enabled = enabled
        self._reset()
        _recorders.add(self)

    def _reset(self) -> None:
        """Per-process state: built at start and again in a forked child."""
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self._lock = threading.Lock()  # the calls, the buffer, the counters
        self._flushing = threading.Lock()  # one write at a time: batches stay in order
        self._calls: deque[_Call] = deque()  # as reported, not yet made transitions
        self._buffer: deque[Transition] = deque()  # made, waiting for the store
        self._queued = 0  # transitions in both
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_us = 0
        self._failures = 0
        self._retry_at = 0.0
        self._logged_at = -_LOG_EVERY

    # -- the caller's side ---------------------------------------------------------
    def transition(
        self, task_id: str, name: str, key: str, state: State, *, attempt: int = 1,
        worker: str | None = None, error: BaseException | None = None,
        detail: Mapping[str, Any] | None = None, at: float | None = None,
    ) -> None:
        """Record that the task moved to ``state`` now (or at ``at``, see
        :meth:`transitions`).  Never raises, never blocks (async)."""
        self.transitions(task_id, name, key, (state,), attempt=attempt, worker=worker,
                         error=error, detail=detail, at=at)

    def transitions(
        self, task_id: str, name: str, key: str, states: Sequence[State], *, attempt: int = 1,
        worker: str | None = None, error: BaseException | None = None,
        detail: Mapping[str, Any] | None = None, at: float | None = None,
    ) -> None:
        """Record that the task moved through ``states`` now, in that order (a worker's
        RECEIVED then STARTED); ``error`` and ``detail`` belong to the last one.  One call
        for several: this runs on every task's path.

        ``at`` (``time.time()`` taken earlier): when the move happened before it could be
        known which one it was, e.g. just before publishing a message that another process
        may record the next state of before this call (a producer's PENDING, a deferral)."""
        if not self.enabled:
            return
        failure = (None if error is None
                   else (type(error).__name__[:_NAME_MAX], str(error)[:_MESSAGE_MAX]))
        details = dict(detail) if detail else None
        at = -at if at is not None else time.time()  # negative: stamped by the caller
        with self._lock:
            room = self.buffer_size - self._queued
            if room < len(states):
                self.counters["dropped_on_overflow"] += len(states) - max(0, room)
                if room <= 0:
                    return
                states, failure, details = states[:room], None, None  # not the last: none
            self._calls.append(
                (at, task_id, name, key, states, attempt, worker, failure, details))
            self._queued += len(states)
        if self.mode == SYNC:
            self.flush()
        elif self._thread is None:
            self._start()

    def _made(self, limit: int | None = None) -> None:
        """Turn reported calls into transitions at the end of the buffer, until it holds
        ``limit`` (None: all of them); in the flush, under ``_flushing``.  States are
        checked, times made strictly increasing.  A batch at a time, not the whole
        interval's calls at once: the thread holds the GIL that long, and a task's
        thread whose reply has come waits for it."""
        with self._lock:
            if limit is None:
                calls, self._calls = self._calls, deque()
            else:
                calls, wanted = deque(), limit - len(self._buffer)
                while wanted > 0 and self._calls:
                    calls.append(self._calls.popleft())
                    wanted -= len(calls[-1][4])
        made: list[Transition] = []
        unknown = refused = 0
        for at, task_id, name, key, states, attempt, worker, failure, details in calls:
            checked = _checked(states)
            if checked is None:
                unknown, refused = unknown + 1, refused + len(states)
                logger.error("unknown task state in %r for %s[%s]: a bug, not recorded",
                             list(states), name, task_id)
                continue
            name = name[:_NAME_MAX]
            worker = worker[:_NAME_MAX] if worker else None
            error_type, error_message = failure if failure is not None else (None, None)
            last = len(checked) - 1
            for i, state in enumerate(checked):
                if at < 0:  # stamped by the caller: kept, a microsecond apart within the call
                    us = int(-at * 1_000_000) + i
                else:
                    # Whole microseconds (what Redis scores and ids keep), strictly
                    # increasing within a process even if the wall clock steps back: the
                    # order of one process's transitions is their order in time.
                    us = self._last_us = max(int(at * 1_000_000), self._last_us + 1)
                final = i == last
                made.append(Transition(
                    task_id, name, key, state, attempt, worker, us / 1_000_000,
                    error_type if final else None, error_message if final else None,
                    details if final else None,
                ))
        with self._lock:
            self._buffer.extend(made)
            self._queued -= refused
            self.counters["rejected_illegal"] += unknown

    # -- writing -------------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Write what is buffered, in batches; after a failure, only once the backoff
        passed (or ``force``).  Never raises."""
        with self._flushing:
            if not force and time.monotonic() < self._retry_at:
                return
            while True:
                self._made(self.batch_size)
                with self._lock:
                    batch = [self._buffer.popleft()
                             for _ in range(min(self.batch_size, len(self._buffer)))]
                    self._queued -= len(batch)
                if not batch or not self._write(batch):
                    return

    def _write(self, batch: list[Transition]) -> bool:
        """Write one batch; False when it went back to the buffer (the store failed)."""
        try:
            result = self._open().record(batch)
        except ReliableError as exc:  # unreachable, refused, not migrated: try again later
            self._failed(batch, exc)
            return False
        # A bug (ours or a driver's) would fail again with the same batch: drop it.
        except Exception:
            with self._lock:
                self.counters["write_errors"] += 1
                self.counters["dropped_on_error"] += len(batch)
            logger.exception("recording %d task state transitions failed; dropped", len(batch))
            return True
        self._account(result)
        return True

    def _failed(self, batch: list[Transition], exc: ReliableError) -> None:
        now = time.monotonic()
        self._made()  # what was reported meanwhile is newer than the batch: behind it
        with self._lock:
            self.counters["write_errors"] += 1
            self._failures += 1
            self._retry_at = now + min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
            self._buffer.extendleft(reversed(batch))
            self._queued += len(batch)
            overflow = min(self._queued - self.buffer_size, len(self._buffer))
            for _ in range(max(0, overflow)):
                self._buffer.pop()  # the newest go: the older ones explain the state
            self._queued -= max(0, overflow)
            self.counters["dropped_on_overflow"] += max(0, overflow)
            log = now - self._logged_at >= _LOG_EVERY
            if log:
                self._logged_at = now
            buffered = len(self._buffer)
        if log:
            logger.error(
                "could not record task states (%s); %d transitions buffered, retrying in "
                "%.1f s (write errors so far: %d)", exc, buffered, self._retry_at - now,
                self.counters["write_errors"],
            )

    def _account(self, result: RecordResult) -> None:
        with self._lock:
            self._failures = 0
            self._retry_at = 0.0
            self.counters["written"] += result.written
            self.counters["duplicates"] += result.duplicates
            self.counters["rejected_illegal"] += len(result.rejected)
        for r in result.rejected:
            t = r.transition
            where = (f"{r.previous.value if r.previous else '(nothing)'} -> {t.state.value}"
                     + (f" -> {r.following.value}" if r.following else ""))
            logger.error(
                "illegal state transition %s for %s[%s] (key %r, attempt %d): a bug, "
                "not recorded", where, t.name, t.task_id, t.key, t.attempt,
            )

    def _open(self) -> StateStore:
        if self._store is None:
            assert self._opener is not None
            self._store = self._opener()
        return self._store

    # -- the flush thread ------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="celery-reliable-states", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is left (once, whatever the backoff)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.flush(force=True)

    def pending(self) -> int:
        """Transitions reported and not written yet."""
        with self._lock:
            return self._queued

    def _after_fork_in_child(self) -> None:
        self._reset()  # the parent writes the buffered transitions, not us
        if self._store is not None:
            self._store.after_fork()


def _checked(states: Sequence[Any]) -> list[State] | None:
    """``states`` as :class:`State` members; None if one is not a state."""
    checked = []
    for state in states:
        if not isinstance(state, State):
            try:
                state = State(state)
            except ValueError:
                return None
        checked.append(state)
    return checked


def flush_all() -> None:
    """Write every recorder's buffer now (a process about to exit: prefork children end
    with ``os._exit``, which skips ``atexit``; wire this to ``worker_process_shutdown``)."""
    for recorder in list(_recorders):
        recorder.flush(force=True)


def _after_fork_in_child() -> None:
    for recorder in list(_recorders):
        recorder._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(flush_all)
