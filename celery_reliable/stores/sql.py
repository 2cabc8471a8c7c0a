"""SQL store (SQLAlchemy 2.x): PostgreSQL, MariaDB/MySQL and SQLite.

Every operation is one transaction doing what :mod:`.memory` does.  The tables
live in :mod:`.migrations` and are created only by :meth:`SQLStore.migrate`.

Concurrency.  PostgreSQL and MariaDB run at READ COMMITTED (no InnoDB gap locks)
and lock a key's row with ``SELECT ... FOR UPDATE`` before reading it: work on
one key serializes, other keys proceed.  A key found missing is INSERTed
tolerating a duplicate (``ON CONFLICT DO NOTHING``; MariaDB's duplicate-key
error is caught).  When another transaction inserted it first, ours rolls back
and runs again, now finding the row to lock: on InnoDB the duplicate check
leaves a shared lock, and two transactions upgrading theirs would deadlock.
Rows are locked key first, then task; the sweep locks task rows only, with
``SKIP LOCKED``.  SQLite runs each writing transaction as ``BEGIN IMMEDIATE``
(one writer for the whole file, across processes), in WAL mode so readers
proceed meanwhile, with a busy timeout so a writer queues for the lock instead
of failing at once.

Clock.  Times are the calling worker's ``time.time()``, stored as seconds in
DOUBLE columns, so unlike Redis, leases depend on the workers' clocks agreeing:
keep them NTP-synced.  A clock running ahead takes live leases over early (a
duplicate run); one running behind rescues late.  Leases and deadlines are on the
lease clock (``stores/base.py``): wall time minus the silences kept in the
``p_clock`` row.  A transaction reads that row first (before any key or task row,
so the row locks keep one order) and writes it at most every
:func:`decisions.refresh_every`; a process that read it within half of that
uses what it read, so the row costs most operations nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from sqlalchemy import (
    Connection,
    RowMapping,
    Select,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)

from celery_reliable.errors import ConfigurationError
from celery_reliable.stores import decisions, migrations
from celery_reliable.stores.migrations import CLOCK_ROW
from celery_reliable.stores.model import (
    Claim,
    Failure,
    KeyState,
    Lease,
    Migration,
    PublishOutcome,
    SweepPolicy,
    TaskRecord,
    record_queue,
)
from celery_reliable.stores.sql_base import READ_ONLY_OPTION
from celery_reliable.stores.sql_dead_letters import SQLDeadLetters, record_columns
from celery_reliable.stores.sql_engine import open_engine
from celery_reliable.stores.sql_limits import SQLLimits

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")


@dataclass(frozen=True)
class _Locked:
    """A key's row read under its lock, at ``now`` (taken once the lock was granted)."""

    exists: bool  # a row is there, maybe expired: write it with UPDATE, not INSERT
    state: KeyState | None  # None when missing or expired
    now: float


class SQLStore(SQLDeadLetters, SQLLimits):
    """Keys, task records and the rescue index; budgets and breakers come from
    :class:`.sql_limits.SQLLimits`, the dead-letter index from
    :class:`.sql_dead_letters.SQLDeadLetters`, transactions from :class:`.sql_base.SQLBase`."""

    def __init__(self, url: str, *, prefix: str = "reliable", shards: int = 1) -> None:
        """``shards`` is accepted for the common signature and ignored."""
        if not _PREFIX.match(prefix):
            raise ConfigurationError(
                f"reliable_key_prefix {prefix!r} cannot name SQL tables: use lowercase letters, "
                "digits and underscores, starting with a letter or underscore, at most 40 chars"
            )
        self.url = url
        self.prefix = prefix
        self.schema = migrations.schema(prefix)
        self.engine, self.safe_url = open_engine(url)
        name = self.engine.dialect.name
        self.dialect = "mysql" if name == "mariadb" else name
        self._reader = self.engine.execution_options(**{READ_ONLY_OPTION: True})
        self._schema_checked = False
        #: (time.monotonic() when read, paused seconds) of the lease clock row
        self._clock_read: tuple[float, float] = (-1e9, 0.0)

    # -- the lease clock ---------------------------------------------------------------
    def _paused(self, conn: Connection, write: bool = True) -> float:
        """Seconds the lease clock has paused so far (lease time = wall time minus this),
        noting this operation on it; call it before locking any other row."""
        read_at, paused = self._clock_read
        checked = time.monotonic()
        if checked - read_at < decisions.refresh_every(self.outage_after) / 2:
            # This process reached the store that recently: no silence since.
            return paused
        c = self.schema.clock
        row = conn.execute(select(c.c.seen, c.c.paused).where(c.c.name == CLOCK_ROW)).first()
        if row is None:  # the migration seeds it; a row deleted by hand counts nothing
            return 0.0
        paused, after = decisions.lease_clock(
            decisions.LeaseClock(row.seen, row.paused), time.time(), self.outage_after
        )
        if after is not None and write:
            # Only if nobody moved it since it was read: who did saw the same silence.
            conn.execute(update(c).where(c.c.name == CLOCK_ROW, c.c.seen == row.seen)
                         .values(seen=after.seen, paused=after.paused))
        if write:
            self._clock_read = (checked, paused)
        return paused

    # -- row helpers -------------------------------------------------------------------
    def _lock_key(self, conn: Connection, key: str) -> _Locked:
        k = self.schema.keys
        row = conn.execute(select(k).where(k.c.key == key).with_for_update()).mappings().first()
        now = time.time()
        return _Locked(row is not None, _live_state(row, now), now)

    def _write_key(
        self, conn: Connection, locked: _Locked, key: str, state: KeyState,
        expires_at: float | None = None,
    ) -> None:
        """Write what was decided from ``locked``: UPDATE the locked row or INSERT a new one.

        Never UPDATE a row that was not read under lock: another transaction may
        have created it since, and its state would be overwritten unseen.
        """
        k = self.schema.keys
        values = {**asdict(state), "expires_at": expires_at}
        if locked.exists:
            conn.execute(update(k).where(k.c.key == key).values(values))
        else:
            self.insert_new(conn, k, [{"key": key, **values}])

    def _save_record(self, conn: Connection, values: dict[str, Any]) -> None:
        """Overwrite the task's record, or insert it: UPDATE first, which on InnoDB locks an
        existing row exclusively at once (see the module doc)."""
        t = self.schema.tasks
        move = update(t).where(t.c.task_id == values["task_id"]).values(values)
        if not conn.execute(move).rowcount:
            self.insert_new(conn, t, [values])

    def _drop_record(self, conn: Connection, task_id: str) -> None:
        t = self.schema.tasks
        conn.execute(delete(t).where(t.c.task_id == task_id))

    def _move_deadline(
        self, conn: Connection, task_ids: Sequence[str], deadline: float, *,
        later_only: bool = False, **values: Any
    ) -> None:
        """Reschedule the records still in the rescue index (a dead letter has no deadline).

        ``later_only``: never bring a deadline forward (a heartbeat must not pull a retry
        the body republished, due after its countdown, back to the lease's end).
        """
        t = self.schema.tasks
        pending = t.c.task_id.in_(task_ids) & t.c.deadline.is_not(None)
        if later_only:
            pending &= t.c.deadline < deadline
        conn.execute(update(t).where(pending).values(deadline=deadline, **values))

    def due_query(self, now: float, limit: int) -> Select[Any]:
        """The sweep's SELECT: a range scan of the deadline index, never a full scan."""
        t = self.schema.tasks
        query = select(t).where(t.c.deadline <= now).order_by(t.c.deadline).limit(limit)
        return query.with_for_update(skip_locked=True)

    # -- producer side -----------------------------------------------------------------
    def publish(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> PublishOutcome:
        return self._write(lambda conn: self._publish(conn, record, deadline_in, dedupe))

    def publish_many(
        self, records: Sequence[tuple[TaskRecord, float]], dedupe: bool
    ) -> list[PublishOutcome]:
        """One transaction, a few statements per chunk of 500 (a replay of thousands of
        dead letters); the rules are :func:`decisions.publish`, applied in order, so a
        later record of one key sees what an earlier one decided."""
        if not records:
            return []

        def work(conn: Connection) -> list[PublishOutcome]:
            outcomes: list[PublishOutcome] = []
            for start in range(0, len(records), 500):
                outcomes += self._publish_chunk(conn, records[start:start + 500], dedupe)
            return outcomes

        return self._write(work)

    def _publish_chunk(
        self, conn: Connection, records: Sequence[tuple[TaskRecord, float]], dedupe: bool
    ) -> list[PublishOutcome]:
        k, t = self.schema.keys, self.schema.tasks
        names = sorted({record.key for record, _ in records})  # one lock order
        paused = self._paused(conn)
        rows = conn.execute(
            select(k).where(self.among(k.c.key, names)).order_by(k.c.key).with_for_update()
        ).mappings().all()
        now = time.time()
        exists = {row["key"] for row in rows}
        states = {row["key"]: _live_state(row, now) for row in rows}
        keys: dict[str, KeyState] = {}
        fresh: dict[str, dict[str, Any]] = {}
        outcomes = []
        for record, deadline_in in records:
            decision = decisions.publish(
                states.get(record.key), record.fingerprint, record.task_id, dedupe
            )
            if decision.write is not None:
                states[record.key] = keys[record.key] = decision.write
            if decision.persist:
                saved = replace(record, published_at=now, state="queued", reason=None,
                                error=None, dead_at=None)
                fresh[record.task_id] = {
                    **_shallow(saved), "deadline": now - paused + deadline_in,
                }
            outcomes.append(decision.outcome)
        key_rows = [{"key": key, **_shallow(state), "expires_at": None}
                    for key, state in keys.items()]
        self.update_many(conn, k, "key", [r for r in key_rows if r["key"] in exists])
        self.insert_new(conn, k, [r for r in key_rows if r["key"] not in exists])
        known = set(conn.scalars(
            select(t.c.task_id).where(self.among(t.c.task_id, sorted(fresh))).with_for_update()
        ))
        self.update_many(conn, t, "task_id", [v for i, v in fresh.items() if i in known])
        self.insert_new(conn, t, [v for i, v in fresh.items() if i not in known])
        return outcomes

    def _publish(
        self, conn: Connection, record: TaskRecord, deadline_in: float, dedupe: bool
    ) -> PublishOutcome:
        paused = self._paused(conn)
        locked = self._lock_key(conn, record.key)
        now = locked.now
        decision = decisions.publish(locked.state, record.fingerprint, record.task_id, dedupe)
        if decision.write is not None:
            self._write_key(conn, locked, record.key, decision.write)
        if decision.persist:
            fresh = replace(
                record, published_at=now, state="queued", reason=None, error=None, dead_at=None,
            )
            self._save_record(conn, {**asdict(fresh), "deadline": now - paused + deadline_in})
        return decision.outcome

    def lookup(self, key: str, fingerprint: str) -> PublishOutcome:
        paused = self._read(lambda conn: self._paused(conn, write=False))
        return decisions.lookup(self.get_key(key), fingerprint, time.time() - paused)

    # -- consumer side -----------------------------------------------------------------
    def claim(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> Claim:
        def work(conn: Connection) -> Claim:
            paused = self._paused(conn)
            locked = self._lock_key(conn, key)
            now = locked.now - paused  # on the lease clock
            decision = decisions.claim(
                locked.state, fingerprint, task_id, owner, lease, max_lost, now,
                dead_lettered=decisions.may_be_dead_letter(locked.state, task_id)
                and self._unreplayed_dead(conn, task_id),
            )
            if decision.write is not None:
                self._write_key(conn, locked, key, decision.write)
            if decision.forget_key:
                conn.execute(delete(self.schema.keys).where(self.schema.keys.c.key == key))
            if decision.drop_copy:
                self._drop_record(conn, task_id)
            if decision.runs:
                self._move_deadline(conn, [task_id], now + lease, state="running")
            return decision.claim

        return self._write(work)

    def _unreplayed_dead(self, conn: Connection, task_id: str) -> bool:
        dl = self.schema.dead_letters
        row = conn.execute(
            select(dl.c.dead_at, dl.c.replayed_at).where(dl.c.task_id == task_id)
        ).first()
        return row is not None and (row.replayed_at is None or row.replayed_at < row.dead_at)

    def heartbeat(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        if not leases:
            return []
        k = self.schema.keys

        def work(conn: Connection) -> list[bool]:
            paused = self._paused(conn)
            # One statement locks all the rows, in key order: heartbeats cannot deadlock.
            query = select(k).where(k.c.key.in_(sorted({i.key for i in leases}))).order_by(k.c.key)
            rows = conn.execute(query.with_for_update()).mappings().all()
            now = time.time()
            live = {row["key"]: _live_state(row, now) for row in rows}
            renewed = [i for i in leases if _owned(live.get(i.key), i.owner)]
            if renewed:
                keys, until = [i.key for i in renewed], now - paused + lease
                conn.execute(update(k).where(k.c.key.in_(keys)).values(lease_until=until))
                self._move_deadline(conn, [i.task_id for i in renewed], until, later_only=True)
            return [i in renewed for i in leases]

        return self._write(work)

    def complete(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> bool:
        def work(conn: Connection) -> bool:
            locked = self._lock_key(conn, key)
            if not _owned(locked.state, owner):
                return False
            done = KeyState("done", fingerprint, task_id, result=result)
            self._write_key(conn, locked, key, done, expires_at=locked.now + retention)
            self._drop_record(conn, task_id)
            return True

        return self._write(work)

    def release(self, key: str, owner: str, task_id: str, requeued: bool) -> bool:
        k = self.schema.keys

        def work(conn: Connection) -> bool:
            locked = self._lock_key(conn, key)
            current = locked.state
            if current is None or not _owned(current, owner):
                return False
            if requeued:
                queued = KeyState("queued", current.fingerprint, task_id, lost=current.lost)
                self._write_key(conn, locked, key, queued)
            else:
                conn.execute(delete(k).where(k.c.key == key))
            return True

        return self._write(work)

    def discard(self, task_id: str, key: str) -> None:
        self._write(lambda conn: self._drop_record(conn, task_id))

    def dead_letter(
        self, task_id: str, key: str, reason: str, error: str | None,
        fallback: TaskRecord | None = None, failure: Failure | None = None,
        dead_at: float | None = None,
    ) -> None:
        t, k, dl = self.schema.tasks, self.schema.keys, self.schema.dead_letters
        f = failure or Failure()

        def work(conn: Connection) -> None:
            current = self._lock_key(conn, key).state
            if current is not None and current.task_id == task_id and current.state in (
                "queued", "running"
            ):
                # Forgotten, or producers would answer "in flight" with a task that will not run.
                conn.execute(delete(k).where(k.c.key == key))
            row = conn.execute(
                select(t).where(t.c.task_id == task_id).with_for_update()
            ).mappings().first()
            if row is not None:
                self._drop_record(conn, task_id)
            base = _record(row) if row is not None else fallback
            entry: dict[str, Any] = {
                "reason": reason, "error": error,
                "dead_at": time.time() if dead_at is None else dead_at,
                "exc_type": f.exc_type, "traceback": f.traceback, "attempts": f.attempts,
                "worker": f.worker,
                "queue": f.queue or (record_queue(base.options) if base is not None else None),
            }
            if base is not None:
                entry.update(record_columns(replace(base, task_id=task_id)))
            move = update(dl).where(dl.c.task_id == task_id).values(entry)
            if conn.execute(move).rowcount:
                return  # dead-lettered again: one entry, its replays kept
            if base is None:
                entry.update(record_columns(TaskRecord(task_id, "", key, "", "", "", "", "{}")))
            self.insert_new(conn, dl, [{"task_id": task_id, "replays": 0, **entry}])

        self._write(work)

    # -- rescuer -----------------------------------------------------------------------
    def acquire_sweeper(self, owner: str, ttl: float) -> bool:
        s = self.schema.sweeper

        def work(conn: Connection) -> bool:
            now = time.time()
            free = or_(s.c.owner == owner, s.c.lease_until <= now)
            take = update(s).where(s.c.name == migrations.SWEEPER_ROW, free)
            return conn.execute(take.values(owner=owner, lease_until=now + ttl)).rowcount == 1

        return self._write(work)

    def sweep(self, policy: SweepPolicy) -> list[TaskRecord]:
        t = self.schema.tasks
        # Republished: the task waits for a worker again, whatever state it was in.
        move = update(t).where(t.c.task_id == bindparam("b_id")).values(
            deadline=bindparam("b_deadline"), rescues=bindparam("b_rescues"), state="queued"
        )

        def work(conn: Connection) -> list[TaskRecord]:
            now = time.time() - self._paused(conn)  # on the lease clock
            rows = conn.execute(self.due_query(now, policy.limit)).mappings().all()
            if rows:
                conn.execute(move, [
                    {"b_id": r["task_id"], "b_deadline": now + policy.next_delay(r["rescues"]),
                     "b_rescues": r["rescues"] + 1}
                    for r in rows
                ])
            return [_record(row) for row in rows]

        return self._write(work)

    # -- inspection and lifecycle ------------------------------------------------------
    def get_key(self, key: str) -> KeyState | None:
        k = self.schema.keys
        query = select(k).where(k.c.key == key)
        row = self._read(lambda conn: conn.execute(query).mappings().first())
        return _live_state(row, time.time())

    def get_record(self, task_id: str, key: str) -> TaskRecord | None:
        t = self.schema.tasks
        query = select(t).where(t.c.task_id == task_id)
        row = self._read(lambda conn: conn.execute(query).mappings().first())
        if row is not None:
            return _record(row)
        letter = self.get_dead_letter(task_id)
        return None if letter is None else letter.record

    def pending_count(self) -> int:
        t = self.schema.tasks
        query = select(func.count()).select_from(t).where(t.c.deadline.is_not(None))
        return int(self._read(lambda conn: conn.scalar(query)) or 0)

    def prune(self, limit: int = 1000) -> int:
        """Delete at most ``limit`` expired done keys in one short transaction; returns how
        many.  It skips rows being claimed (``SKIP LOCKED``) rather than wait for them."""
        k = self.schema.keys

        def work(conn: Connection) -> int:
            expired = k.c.expires_at <= time.time()
            query = select(k.c.key).where(expired).order_by(k.c.expires_at).limit(limit)
            keys = conn.scalars(query.with_for_update(skip_locked=True)).all()
            if not keys:
                return 0
            return conn.execute(delete(k).where(k.c.key.in_(keys), expired)).rowcount

        return self._write(work)

    def migrate(self) -> Migration:
        """Create or upgrade the schema: idempotent; concurrent runs wait for each other."""
        with (self._guard(), self.engine.connect() as conn,
              migrations.exclusive(conn, self.schema), conn.begin()):
            done = migrations.upgrade(conn, self.schema)
        self._schema_checked = True
        return done

    def drop(self) -> None:
        with self._guard():
            self.schema.metadata.drop_all(self.engine)
        self._schema_checked = False

    def close(self) -> None:
        self.engine.dispose()

    def after_fork(self) -> None:
        # close=False: the parent still uses those sockets; the child only forgets them.
        self.engine.dispose(close=False)


def _live_state(row: RowMapping | None, now: float) -> KeyState | None:
    """The key's state, or None when it has no row or its retention expired."""
    if row is None or (row["expires_at"] is not None and row["expires_at"] <= now):
        return None
    return KeyState(**{f.name: row[f.name] for f in fields(KeyState)})


def _owned(state: KeyState | None, owner: str) -> bool:
    """The fence: only the owner of a running claim may complete, release or renew it."""
    return state is not None and state.state == "running" and state.owner == owner


def _shallow(value: TaskRecord | KeyState) -> dict[str, Any]:
    """A record's or key state's fields as row values: ``asdict`` without its deep copy,
    which costs more than the rest of building a row when a replay writes thousands."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _record(row: RowMapping) -> TaskRecord:
    return TaskRecord(**{f.name: row[f.name] for f in fields(TaskRecord)})


