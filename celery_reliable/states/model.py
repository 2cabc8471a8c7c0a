"""What the state store keeps: transitions, a task's current state, counts.

Times are seconds since the epoch, taken by the process that made the
transition (buffered writes must not move them), so they depend on the
machines' clocks agreeing, as the SQL store's leases do: keep them NTP-synced.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_reliable.states.machine import State

_serial = itertools.count()
_process = os.urandom(5).hex()


def _new_process() -> None:
    global _process
    _process = os.urandom(5).hex()


os.register_at_fork(after_in_child=_new_process)


def new_id(at: float) -> str:
    """A transition id: 32 hex characters, time first, so ids sort roughly by time.

    Ids make a write idempotent: a batch sent again after an ambiguous failure
    (a timeout after the commit) is recognised and not written twice.  Sorting
    by time keeps B-tree inserts at the right edge of the index.  Time (14), a
    random part per process (10) and a serial within the process (8): unique
    without asking the OS for randomness on every transition.
    """
    return f"{round(at * 1_000_000):014x}{_process}{next(_serial) & 0xFFFFFFFF:08x}"


@dataclass(slots=True)
class Transition:
    """One state change of one task, as recorded and as read back (treat it as
    read-only; it is not frozen because a frozen dataclass costs twice as much to
    build, and one is built for every transition of every task)."""

    task_id: str
    name: str
    key: str
    state: State
    attempt: int = 1
    worker: str | None = None
    at: float = field(default_factory=time.time)
    error_type: str | None = None
    error_message: str | None = None
    detail: Mapping[str, Any] | None = None
    """Small JSON-able facts: the dead-letter reason, a deferral's countdown, the
    task that a duplicate deferred to."""
    id: str = ""
    """Unique per transition; derived from ``at`` when empty."""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_id(self.at)

    def detail_json(self) -> str | None:
        """``detail`` as stored: JSON text (values that are not JSON become strings)."""
        return None if not self.detail else json.dumps(dict(self.detail), default=str,
                                                       sort_keys=True)


def load_detail(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


@dataclass(frozen=True)
class TaskState:
    """A task's current state: its latest transition, and since when."""

    task_id: str
    name: str
    key: str
    state: State
    since: float
    attempt: int = 1
    worker: str | None = None

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.since

    @classmethod
    def of(cls, t: Transition) -> TaskState:
        return cls(t.task_id, t.name, t.key, t.state, t.at, t.attempt, t.worker)


@dataclass(frozen=True)
class Rejection:
    """A transition the store refused: illegal after ``previous`` (None: nothing recorded)."""

    transition: Transition
    previous: State | None
    following: State | None = None
    """For a late transition: the recorded state it would have had to precede."""


@dataclass(frozen=True)
class RecordResult:
    written: int = 0
    duplicates: int = 0
    """Transitions already recorded (a batch sent again): skipped, not an error."""
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True)
class Stats:
    """Transitions into each state per task name, over a window of whole minutes."""

    window: float
    since: float
    """Start of the first minute counted (the window rounded out to minutes)."""
    counts: Mapping[str, Mapping[State, int]]
    """task name -> state -> transitions into that state."""

    def totals(self) -> dict[State, int]:
        out: dict[State, int] = {}
        for per_state in self.counts.values():
            for state, n in per_state.items():
                out[state] = out.get(state, 0) + n
        return out

    def failure_rate(self, name: str | None = None) -> float | None:
        """Share of finished runs that failed for good: FAILED / (SUCCEEDED + FAILED).

        Retried attempts are not failures here (the task may still succeed);
        None when no run finished in the window.
        """
        counts = self.totals() if name is None else self.counts.get(name, {})
        failed = counts.get(State.FAILED, 0)
        finished = failed + counts.get(State.SUCCEEDED, 0)
        return failed / finished if finished else None


def minute_of(at: float) -> int:
    """The counters' bucket of a time."""
    return int(at // 60)


def stats_range(window: float, now: float) -> tuple[int, int]:
    """First and last minute buckets a window ending ``now`` covers."""
    return minute_of(now - window), minute_of(now)
