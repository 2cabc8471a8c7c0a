"""SQL state store (PostgreSQL, MariaDB/MySQL, SQLite), on the SQL store's engine.

It opens through :class:`celery_reliable.stores.sql.SQLStore` for the same
URL, so it shares its driver choice, timeouts, SQLite WAL and locking setup,
deadlock retries, error mapping and versioned schema (the tables come from
step 3 of :mod:`celery_reliable.stores.migrations`).

``record()`` is one transaction: it locks the current rows of the batch's
tasks (in task id order, so two batches cannot deadlock on them), decides in
Python with the same rules as the memory store
(:mod:`celery_reliable.states.ordering`; a task's history is read only when its
new transitions do not simply follow its current state), then appends the
history rows, writes the current rows and adds to the per-minute counts.
Two processes recording the first transition of one task at once both
INSERT its current row: the loser starts over and, this time, locks it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Insert,
    RowMapping,
    delete,
    func,
    insert,
    select,
    union_all,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from celery_reliable.states.machine import State
from celery_reliable.states.model import (
    RecordResult,
    Rejection,
    Stats,
    TaskState,
    Transition,
    load_detail,
    minute_of,
    stats_range,
)
from celery_reliable.states.ordering import admit, appends, in_order, merge_timelines
from celery_reliable.states.stores.base import SharedStoreStateStore, by_task, stuck_states
from celery_reliable.stores.base import Store
from celery_reliable.stores.sql import SQLStore

#: Minutes of counts one ``prune()`` call deletes at most: a short transaction.
PRUNE_COUNT_MINUTES = 60


class SQLStateStore(SharedStoreStateStore):
    store: SQLStore

    def __init__(self, store: SQLStore, retention: float) -> None:
        self.store = store
        self.url = store.url
        self.safe_url = store.safe_url
        self.retention = retention
        self.states = store.schema.states
        self.history = store.schema.transitions
        self.counts = store.schema.state_counts

    @classmethod
    def on(cls, store: Store, retention: float) -> SQLStateStore:
        assert isinstance(store, SQLStore)
        return cls(store, retention)

    # -- writes ----------------------------------------------------------------------
    def record(self, transitions: Sequence[Transition]) -> RecordResult:
        if not transitions:
            return RecordResult()
        return self.store._write(lambda conn: self._record(conn, transitions))

    def _record(self, conn: Connection, transitions: Sequence[Transition]) -> RecordResult:
        s, h = self.states, self.history
        ids = [t.id for t in transitions]
        known = set(conn.scalars(select(h.c.id).where(self.store.among(h.c.id, ids))))
        task_ids = sorted({t.task_id for t in transitions})
        locked = select(s).where(self.store.among(s.c.task_id, task_ids)).order_by(s.c.task_id)
        stored = {row["task_id"]: _task_state(row)
                  for row in conn.execute(locked.with_for_update()).mappings()}
        current = dict(stored)
        duplicates = 0
        fresh: dict[str, list[Transition]] = {}
        for task_id, new in by_task(transitions).items():
            for t in new:
                if t.id in known:
                    duplicates += 1
                else:
                    known.add(t.id)
                    fresh.setdefault(task_id, []).append(t)
        slow = {task_id for task_id, new in fresh.items()
                if not appends(current.get(task_id), new)}
        histories = self._histories(conn, sorted(slow))
        accepted: list[Transition] = []
        rejected: list[Rejection] = []
        for task_id, new in fresh.items():
            last: Transition | None = new[-1]
            if task_id in slow:
                admitted = admit(histories[task_id], new)
                new, last = admitted.accepted, admitted.current
                rejected.extend(admitted.rejected)
            if last is not None:
                current[task_id] = TaskState.of(last)
            accepted.extend(new)
        if accepted:
            conn.execute(insert(h), [_history_row(t) for t in accepted])
            self._write_current(conn, stored, current)
            self._count(conn, accepted)
        return RecordResult(len(accepted), duplicates, tuple(rejected))

    def _histories(self, conn: Connection, task_ids: Sequence[str]) -> dict[str, list[Transition]]:
        """The recorded transitions of tasks (their current rows are locked), any order."""
        out: dict[str, list[Transition]] = {task_id: [] for task_id in task_ids}
        if task_ids:
            h = self.history
            query = select(h).where(self.store.among(h.c.task_id, list(task_ids)))
            for row in conn.execute(query).mappings():
                out[row["task_id"]].append(_transition(row))
        return out

    def _write_current(
        self, conn: Connection, stored: dict[str, TaskState], current: dict[str, TaskState]
    ) -> None:
        s = self.states
        fresh = [_state_row(c) for task_id, c in sorted(current.items()) if task_id not in stored]
        moved = [_state_row(c) for task_id, c in current.items()
                 if task_id in stored and stored[task_id] != c]
        self.store.insert_new(conn, s, fresh)
        self.store.update_many(conn, s, "task_id", moved)

    def _count(self, conn: Connection, accepted: Sequence[Transition]) -> None:
        """Add the batch to the per-minute counts, rows in key order (no deadlocks)."""
        c = self.counts
        added = Counter((minute_of(t.at), t.name, t.state.value) for t in accepted)
        rows = [{"minute": m, "name": n, "state": st, "n": k}
                for (m, n, st), k in sorted(added.items())]
        stmt: Insert
        if self.store.dialect == "mysql":
            upsert = mysql.insert(c).values(rows)
            stmt = upsert.on_duplicate_key_update(n=c.c.n + upsert.inserted.n)
        else:
            dialect_insert = (postgresql.insert if self.store.dialect == "postgresql"
                              else sqlite.insert)
            base = dialect_insert(c).values(rows)
            stmt = base.on_conflict_do_update(
                index_elements=[c.c.minute, c.c.name, c.c.state],
                set_={"n": c.c.n + base.excluded.n},
            )
        conn.execute(stmt)

    def prune(self, before: float, limit: int = 1000) -> int:
        s, h, c = self.states, self.history, self.counts

        def work(conn: Connection) -> int:
            old = select(s.c.task_id).where(s.c.since < before).order_by(s.c.since).limit(limit)
            task_ids = list(conn.scalars(old.with_for_update(skip_locked=True)))
            if task_ids:
                conn.execute(delete(h).where(h.c.task_id.in_(task_ids)))
                conn.execute(delete(s).where(s.c.task_id.in_(task_ids)))
            oldest = conn.scalar(select(func.min(c.c.minute)))
            if oldest is not None:
                cut = min(minute_of(before), oldest + PRUNE_COUNT_MINUTES)
                conn.execute(delete(c).where(c.c.minute < cut))
            return len(task_ids)

        return self.store._write(work)

    # -- reads ---------------------------------------------------------------------
    def current(self, task_id: str) -> TaskState | None:
        s = self.states
        query = select(s).where(s.c.task_id == task_id)
        row = self.store._read(lambda conn: conn.execute(query).mappings().first())
        return None if row is None else _task_state(row)

    def timeline(self, task_id: str) -> list[Transition]:
        h = self.history
        return in_order(self._transitions(h.c.task_id == task_id))

    def timeline_by_key(self, key: str) -> list[Transition]:
        s, h = self.states, self.history
        found = self._transitions(h.c.task_id.in_(select(s.c.task_id).where(s.c.key == key)))
        return merge_timelines(in_order(ts) for ts in by_task(found).values())

    def _transitions(self, where: Any) -> list[Transition]:
        h = self.history
        query = select(h).where(where).order_by(h.c.task_id, h.c.at, h.c.id)
        rows = self.store._read(lambda conn: conn.execute(query).mappings().all())
        return [_transition(row) for row in rows]

    def stuck(
        self, older_than_seconds: float, states: Collection[State] | None = None,
        limit: int = 100,
    ) -> list[TaskState]:
        wanted = stuck_states(states)
        if not wanted:
            return []
        s = self.states
        cut = time.time() - older_than_seconds
        # One index range scan per state, each stopping at ``limit`` rows.
        per_state = [
            select(s).where(s.c.state == state.value, s.c.since < cut)
            .order_by(s.c.since).limit(limit).subquery()
            for state in wanted
        ]
        merged = union_all(*(select(part) for part in per_state)).subquery()
        query = select(merged).order_by(merged.c.since, merged.c.task_id).limit(limit)
        rows = self.store._read(lambda conn: conn.execute(query).mappings().all())
        return [_task_state(row) for row in rows]

    def stats(self, window_seconds: float) -> Stats:
        c = self.counts
        first, last = stats_range(window_seconds, time.time())
        query = (select(c.c.name, c.c.state, func.sum(c.c.n))
                 .where(c.c.minute.between(first, last)).group_by(c.c.name, c.c.state))
        rows = self.store._read(lambda conn: conn.execute(query).all())
        counts: dict[str, dict[State, int]] = {}
        for name, state, n in rows:
            counts.setdefault(name, {})[State(state)] = int(n)
        return Stats(window_seconds, first * 60.0, counts)


def _history_row(t: Transition) -> dict[str, Any]:
    return {
        "id": t.id, "task_id": t.task_id, "name": t.name, "key": t.key, "state": t.state.value,
        "attempt": t.attempt, "worker": t.worker, "at": t.at, "error_type": t.error_type,
        "error_message": t.error_message, "detail": t.detail_json(),
    }


def _state_row(c: TaskState) -> dict[str, Any]:
    return {"task_id": c.task_id, "name": c.name, "key": c.key, "state": c.state.value,
            "since": c.since, "attempt": c.attempt, "worker": c.worker}


def _task_state(row: RowMapping) -> TaskState:
    return TaskState(row["task_id"], row["name"], row["key"], State(row["state"]),
                     row["since"], row["attempt"], row["worker"])


def _transition(row: RowMapping) -> Transition:
    return Transition(
        task_id=row["task_id"], name=row["name"], key=row["key"], state=State(row["state"]),
        attempt=row["attempt"], worker=row["worker"], at=row["at"],
        error_type=row["error_type"], error_message=row["error_message"],
        detail=load_detail(row["detail"]), id=row["id"],
    )
