"""In-process state store: the reference implementation, for unit tests and eager mode.

Nothing is shared between processes: a prefork worker's children each see
their own, so use Redis or SQL with a real worker pool.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence

from celery_reliable.settings import STATE_RETENTION
from celery_reliable.states.machine import State
from celery_reliable.states.model import (
    RecordResult,
    Rejection,
    Stats,
    TaskState,
    Transition,
    minute_of,
    stats_range,
)
from celery_reliable.states.ordering import admit, appends, in_order, merge_timelines
from celery_reliable.states.stores.base import StateStore, by_task, stuck_states
from celery_reliable.stores.base import Store


class MemoryStateStore(StateStore):
    def __init__(
        self, url: str = "memory://", *, retention: float = STATE_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.retention = retention
        self.clock = clock
        self._lock = threading.Lock()
        self._current: dict[str, TaskState] = {}
        self._history: dict[str, list[Transition]] = {}  # sorted by (at, id)
        self._ids: set[str] = set()
        self._by_key: dict[str, set[str]] = {}
        self._counts: Counter[tuple[int, str, State]] = Counter()

    @classmethod
    def on(cls, store: Store, retention: float) -> MemoryStateStore:
        return cls(store.url, retention=retention)

    def record(self, transitions: Sequence[Transition]) -> RecordResult:
        written = duplicates = 0
        rejected: list[Rejection] = []
        with self._lock:
            for task_id, new in by_task(transitions).items():
                fresh: list[Transition] = []
                for t in new:
                    if t.id in self._ids or any(f.id == t.id for f in fresh):
                        duplicates += 1
                    else:
                        fresh.append(t)
                if not fresh:
                    continue
                history = self._history.setdefault(task_id, [])
                current = self._current.get(task_id)
                last: Transition | None = fresh[-1]
                accepted = fresh
                if not appends(current, fresh):
                    admitted = admit(history, fresh)
                    accepted, last = admitted.accepted, admitted.current
                    rejected.extend(admitted.rejected)
                if last is not None:
                    self._current[task_id] = TaskState.of(last)
                for t in accepted:
                    bisect.insort(history, t, key=_order)
                    self._ids.add(t.id)
                    self._by_key.setdefault(t.key, set()).add(task_id)
                    self._counts[(minute_of(t.at), t.name, t.state)] += 1
                written += len(accepted)
                if not history:
                    del self._history[task_id]
        return RecordResult(written, duplicates, tuple(rejected))

    def current(self, task_id: str) -> TaskState | None:
        with self._lock:
            return self._current.get(task_id)

    def timeline(self, task_id: str) -> list[Transition]:
        with self._lock:
            return in_order(self._history.get(task_id, ()))

    def timeline_by_key(self, key: str) -> list[Transition]:
        with self._lock:
            histories = [in_order(self._history.get(task_id, ()))
                         for task_id in sorted(self._by_key.get(key, ()))]
        return merge_timelines(histories)

    def stuck(
        self, older_than_seconds: float, states: Collection[State] | None = None,
        limit: int = 100,
    ) -> list[TaskState]:
        wanted = set(stuck_states(states))
        cut = self.clock() - older_than_seconds
        with self._lock:
            found = [c for c in self._current.values() if c.state in wanted and c.since < cut]
        return sorted(found, key=lambda c: (c.since, c.task_id))[:limit]

    def stats(self, window_seconds: float) -> Stats:
        first, last = stats_range(window_seconds, self.clock())
        counts: dict[str, dict[State, int]] = {}
        with self._lock:
            for (minute, name, state), n in self._counts.items():
                if first <= minute <= last:
                    per_state = counts.setdefault(name, {})
                    per_state[state] = per_state.get(state, 0) + n
        return Stats(window_seconds, first * 60.0, counts)

    def prune(self, before: float, limit: int = 1000) -> int:
        with self._lock:
            old = sorted((c for c in self._current.values() if c.since < before),
                         key=lambda c: c.since)[:limit]
            for c in old:
                del self._current[c.task_id]
                for t in self._history.pop(c.task_id, ()):
                    self._ids.discard(t.id)
                tasks = self._by_key.get(c.key)
                if tasks is not None:
                    tasks.discard(c.task_id)
                    if not tasks:
                        del self._by_key[c.key]
            for bucket in [b for b in self._counts if b[0] < minute_of(before)]:
                del self._counts[bucket]
        return len(old)


def _order(t: Transition) -> tuple[float, str]:
    return t.at, t.id
