"""The state store interface: current state per task, append-only history, counts.

Contract of every backend (memory, Redis, SQL):

* :meth:`StateStore.record` writes a batch atomically (one Lua script per
  shard in one round trip; one SQL transaction).  A transition whose id is
  already recorded is skipped (batches are retried).
* Transitions arrive in any order (several processes record one task); the
  store keeps each task's history in happened-order and judges it whole, as
  :mod:`celery_reliable.states.ordering` says: the current state is the last
  one the task moved to in that order, and a transition illegal where it
  falls is returned as rejected and not written.  A task's transitions in one
  batch are judged together, so a late run of them fits in as a whole.
* Reads never lock writers out; :meth:`prune` works in bounded batches.
* Retention: a task's records are kept ``retention`` seconds after its last
  transition (Redis expires them itself; :meth:`prune` drops them everywhere).
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence

from celery_reliable.states.machine import NON_TERMINAL, State
from celery_reliable.states.model import RecordResult, Stats, TaskState, Transition
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import Migration


class StateStore(abc.ABC):
    url: str
    retention: float

    @classmethod
    @abc.abstractmethod
    def on(cls, store: Store, retention: float) -> StateStore:
        """The state store that uses ``store``'s connection (opened for the same URL)."""

    @abc.abstractmethod
    def record(self, transitions: Sequence[Transition]) -> RecordResult:
        """Validate and write ``transitions`` in order; which ones were rejected."""

    @abc.abstractmethod
    def current(self, task_id: str) -> TaskState | None: ...

    @abc.abstractmethod
    def timeline(self, task_id: str) -> list[Transition]:
        """The task's transitions in happened-order (:mod:`celery_reliable.states.ordering`:
        attempt by attempt, by time within one), empty when unknown or pruned."""

    @abc.abstractmethod
    def timeline_by_key(self, key: str) -> list[Transition]:
        """Every recorded task of an idempotency key: each task's transitions in
        happened-order, the tasks' interleaved by time."""

    @abc.abstractmethod
    def stuck(
        self, older_than_seconds: float, states: Collection[State] | None = None,
        limit: int = 100,
    ) -> list[TaskState]:
        """Tasks in a non-terminal state (or one of ``states``) for longer than the
        threshold, oldest first."""

    @abc.abstractmethod
    def stats(self, window_seconds: float) -> Stats:
        """Transitions per task name and state over the last ``window_seconds``,
        rounded out to whole minutes."""

    @abc.abstractmethod
    def prune(self, before: float, limit: int = 1000) -> int:
        """Forget at most ``limit`` tasks whose last transition is older than ``before``
        (their current state, history and key index entries), and counts older than
        it; returns how many tasks.  Call again while it returns ``limit``.

        A backend whose entries expire by themselves (Redis: ``retention`` after the
        task's last write) leaves finished tasks to that and forgets here only what
        is left in its indexes of unfinished ones."""

    def ping(self) -> None:
        """Raise StoreUnavailable/StoreError when the store cannot be used."""

    def migrate(self) -> Migration:
        """Create or upgrade the schema (SQL); what it did. A no-op elsewhere."""
        return Migration()

    def close(self) -> None:
        """Release connections."""

    def after_fork(self) -> None:
        """Forget connections inherited from the parent process."""


class SharedStoreStateStore(StateStore):
    """A state store that lives on one of the package's task stores (Redis, SQL): it
    reuses that store's connections, so its lifecycle is the task store's."""

    store: Store

    def ping(self) -> None:
        self.store.ping()

    def migrate(self) -> Migration:
        return self.store.migrate()

    def close(self) -> None:
        self.store.close()

    def after_fork(self) -> None:
        self.store.after_fork()


def stuck_states(states: Collection[State] | None) -> list[State]:
    """The states a stuck query looks at: the non-terminal ones asked for, in a fixed order."""
    wanted = NON_TERMINAL if states is None else NON_TERMINAL & frozenset(states)
    return sorted(wanted)


def by_task(transitions: Sequence[Transition]) -> dict[str, list[Transition]]:
    """A batch's transitions per task, tasks and each one's transitions in batch order."""
    out: dict[str, list[Transition]] = {}
    for t in transitions:
        out.setdefault(t.task_id, []).append(t)
    return out
