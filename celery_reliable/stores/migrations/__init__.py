"""The SQL store's schema, explicit and versioned.

:func:`schema` describes the newest tables for a prefix; :data:`STEPS` is the
ordered, append-only list of changes that lead there.  :func:`upgrade` applies
the steps a database lacks and records each in ``<prefix>_schema_version``.
Only ``SQLStore.migrate()`` (``celery -A <app> reliable-store migrate``) calls
it: a deploy decides when the schema changes, never a worker's first call.

Adding version N: append ``Step(N, ...)`` whose ``apply`` issues the DDL of that
change alone, and update :func:`schema`.  Never edit a released step: databases
already past it will not run it again.  Step 1 creates its tables from
:func:`schema`; before a later step alters one of them, freeze step 1's copy.

Tables, for prefix ``p``:

``p_keys``
    one row per idempotency key (its state, lease, result); ``expires_at`` is set
    only for done keys, and an expired row counts as absent.
``p_tasks``
    one row per task record; ``deadline`` is indexed for the rescue sweep.
    (Before step 4 dead letters stayed here with ``deadline`` NULL.)
``p_dead_letters``
    the dead-letter index (step 4): one row per dead-lettered task id, the
    record, the failure and its replays; indexed on ``dead_at`` and on each
    filter column with ``dead_at`` (list a page without a scan).
``p_sweeper``
    a single row: the one-sweeper-at-a-time lease (seeded here, so taking it is
    one conditional UPDATE).
``p_clock``
    a single row (step 5): the lease clock, ``seen`` (last operation) and
    ``paused`` (seconds of silence excused), see ``stores/base.py``.
``p_budget``
    retry-budget counters, one row per scope and second (first attempts and
    retries); the row at second 0 is the scope's lock, on which withdrawals
    serialize.
``p_breakers``
    one row per circuit breaker.
``p_states``
    the current state of each task (:mod:`celery_reliable.states`), indexed on
    ``(state, since)`` for "stuck" queries, on ``since`` for pruning and on ``key``.
``p_transitions``
    the append-only history of state transitions, indexed on ``(task_id, at)``
    for a timeline and on ``at`` for time ranges.
``p_state_counts``
    transitions per minute, task name and state: stats read a few rows, not the history.
``p_schema_version``
    one row per applied step.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    inspect,
    literal,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import SchemaItem
from sqlalchemy.types import TypeDecorator, TypeEngine

from celery_reliable.errors import StoreError
from celery_reliable.stores.model import Migration

SWEEPER_ROW = "sweeper"
CLOCK_ROW = "lease"
#: Seconds ``upgrade`` waits on MariaDB/MySQL for another process's migration.
LOCK_WAIT = 60

_MYSQL = ("mysql", "mariadb")
_MYSQL_OPTIONS = (("engine", "InnoDB"), ("charset", "utf8mb4"))
_LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), *_MYSQL)


class ExactString(TypeDecorator[str]):
    """A VARCHAR compared byte for byte on every database.

    MariaDB/MySQL collations compare case-insensitively by default, and the
    ``PAD SPACE`` ones ignore trailing spaces, so ``"Order:1 "`` would collide
    with ``"order:1"`` in a primary key.  PostgreSQL and SQLite already compare
    exactly.  utf8mb4 keeps 512 characters within InnoDB's 3072-byte index limit.
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name not in _MYSQL:
            return dialect.type_descriptor(String(self.length))
        mariadb = getattr(dialect, "is_mariadb", False)
        binary = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
        return dialect.type_descriptor(
            mysql.VARCHAR(self.length, charset="utf8mb4", collation=binary)
        )


@dataclass(frozen=True)
class Schema:
    """The tables of one prefix (the newest version)."""

    prefix: str
    metadata: MetaData
    keys: Table
    tasks: Table
    sweeper: Table
    budget: Table
    breakers: Table
    versions: Table
    states: Table
    transitions: Table
    state_counts: Table
    dead_letters: Table
    clock: Table


def _table(metadata: MetaData, name: str, *items: SchemaItem) -> Table:
    # InnoDB for row locks; utf8mb4 for any key text.  Both spellings: the
    # mariadb:// dialect reads only mariadb_* options, mysql:// only mysql_*.
    options: dict[str, Any] = {f"{d}_{o}": v for d in _MYSQL for o, v in _MYSQL_OPTIONS}
    return Table(name, metadata, *items, **options)


def schema(prefix: str) -> Schema:
    """The newest tables for ``prefix`` (a validated SQL identifier)."""
    md = MetaData()
    keys = _table(
        md, f"{prefix}_keys",
        Column("key", ExactString(512), primary_key=True),
        Column("state", String(8), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("task_id", String(255), nullable=False),
        Column("owner", String(255)),
        Column("lease_until", Double()),
        Column("lost", Integer, nullable=False),
        Column("result", _LONG_TEXT),
        Column("expires_at", Double()),
        Index(f"{prefix}_keys_expires_at", "expires_at"),
    )
    tasks = _table(
        md, f"{prefix}_tasks",
        *_call_columns(),
        Column("state", String(8), nullable=False),
        Column("rescues", Integer, nullable=False),
        Column("deadline", Double()),
        Column("reason", String(255)),
        Column("error", _LONG_TEXT),
        Column("dead_at", Double()),
        Index(f"{prefix}_tasks_deadline", "deadline"),
        Index(f"{prefix}_tasks_dead_at", "dead_at"),
    )
    sweeper = _table(
        md, f"{prefix}_sweeper",
        Column("name", String(16), primary_key=True),
        Column("owner", ExactString(255), nullable=False),
        Column("lease_until", Double(), nullable=False),
    )
    budget = _table(
        md, f"{prefix}_budget",
        Column("scope", ExactString(255), primary_key=True),
        Column("epoch_second", BigInteger, primary_key=True, autoincrement=False),
        Column("firsts", Integer, nullable=False),
        Column("retries", Integer, nullable=False),
    )
    breakers = _table(
        md, f"{prefix}_breakers",
        Column("name", ExactString(255), primary_key=True),
        Column("state", String(16), nullable=False),
        Column("failures", Integer, nullable=False),
        Column("open_until", Double(), nullable=False),
        Column("probe", ExactString(255)),
        Column("probe_until", Double(), nullable=False),
    )
    clock = _table(
        md, f"{prefix}_clock",
        Column("name", String(16), primary_key=True),
        Column("seen", Double(), nullable=False),
        Column("paused", Double(), nullable=False),
    )
    versions = _table(
        md, f"{prefix}_schema_version",
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", String(255), nullable=False),
        Column("applied_at", Double(), nullable=False),
    )
    states, transitions, state_counts = _state_tables(md, prefix)
    return Schema(
        prefix, md, keys, tasks, sweeper, budget, breakers, versions,
        states=states, transitions=transitions, state_counts=state_counts,
        dead_letters=_dead_letter_table(md, prefix), clock=clock,
    )


def _call_columns() -> list[Column[Any]]:
    """What it takes to publish a task again: the columns its record and its dead
    letter share (new objects each time: a column belongs to one table)."""
    return [
        Column("task_id", ExactString(255), primary_key=True),
        Column("name", String(255), nullable=False),
        Column("key", String(512), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("body", _LONG_TEXT, nullable=False),
        Column("content_type", String(255), nullable=False),
        Column("content_encoding", String(255), nullable=False),
        Column("options", _LONG_TEXT, nullable=False),
        Column("published_at", Double(), nullable=False),
    ]


def _dead_letter_table(md: MetaData, prefix: str) -> Table:
    """The dead-letter index (step 4): the record's columns, the failure, the replays."""
    return _table(
        md, f"{prefix}_dead_letters",
        *_call_columns(),
        Column("rescues", Integer, nullable=False),
        Column("reason", String(255), nullable=False),
        Column("error", _LONG_TEXT),
        Column("dead_at", Double(), nullable=False),
        Column("exc_type", String(255)),
        Column("traceback", _LONG_TEXT),
        Column("attempts", Integer, nullable=False),
        Column("worker", String(255)),
        Column("queue", String(255)),
        Column("replays", Integer, nullable=False),
        Column("replayed_at", Double()),
        Index(f"{prefix}_dl_dead_at", "dead_at", "task_id"),
        Index(f"{prefix}_dl_name", "name", "dead_at"),
        Index(f"{prefix}_dl_reason", "reason", "dead_at"),
        Index(f"{prefix}_dl_exc_type", "exc_type", "dead_at"),
        Index(f"{prefix}_dl_queue", "queue", "dead_at"),
    )


def _state_tables(md: MetaData, prefix: str) -> tuple[Table, Table, Table]:
    """The state store's tables (step 3). Index names stay within MySQL's 64 characters."""
    states = _table(
        md, f"{prefix}_states",
        Column("task_id", ExactString(255), primary_key=True),
        Column("name", String(255), nullable=False),
        Column("key", ExactString(512), nullable=False),
        Column("state", String(16), nullable=False),
        Column("since", Double(), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("worker", String(255)),
        Index(f"{prefix}_states_state_since", "state", "since"),
        Index(f"{prefix}_states_since", "since"),
        Index(f"{prefix}_states_key", "key"),
    )
    transitions = _table(
        md, f"{prefix}_transitions",
        Column("id", String(32), primary_key=True),
        Column("task_id", ExactString(255), nullable=False),
        Column("name", String(255), nullable=False),
        Column("key", String(512), nullable=False),
        Column("state", String(16), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("worker", String(255)),
        Column("at", Double(), nullable=False),
        Column("error_type", String(255)),
        Column("error_message", _LONG_TEXT),
        Column("detail", _LONG_TEXT),
        Index(f"{prefix}_transitions_task_at", "task_id", "at"),
        Index(f"{prefix}_transitions_at", "at"),
    )
    state_counts = _table(
        md, f"{prefix}_state_counts",
        Column("minute", BigInteger, primary_key=True, autoincrement=False),
        Column("name", ExactString(255), primary_key=True),
        Column("state", String(16), primary_key=True),
        Column("n", BigInteger, nullable=False),
    )
    return states, transitions, state_counts


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    apply: Callable[[Connection, Schema], None]


def _v1(conn: Connection, tables: Schema) -> None:
    for table in (tables.keys, tables.tasks, tables.sweeper):
        # checkfirst: MariaDB commits each CREATE at once, so a migration
        # interrupted half-way must be able to run again.
        table.create(conn, checkfirst=True)
    conn.execute(insert(tables.sweeper).values(name=SWEEPER_ROW, owner="", lease_until=0.0))


def _v2(conn: Connection, tables: Schema) -> None:
    for table in (tables.budget, tables.breakers):
        table.create(conn, checkfirst=True)


def _v3(conn: Connection, tables: Schema) -> None:
    for table in (tables.states, tables.transitions, tables.state_counts):
        table.create(conn, checkfirst=True)


def _v4(conn: Connection, tables: Schema) -> None:
    """The dead-letter index; dead letters kept in the tasks table move there."""
    dl, t = tables.dead_letters, tables.tasks
    dl.create(conn, checkfirst=True)
    old = select(
        t.c.task_id, t.c.name, t.c.key, t.c.fingerprint, t.c.body, t.c.content_type,
        t.c.content_encoding, t.c.options, t.c.published_at, t.c.rescues,
        func.coalesce(t.c.reason, ""), t.c.error, t.c.dead_at, literal(0), literal(0),
    ).where(t.c.dead_at.is_not(None), t.c.deadline.is_(None))
    columns = ["task_id", "name", "key", "fingerprint", "body", "content_type",
               "content_encoding", "options", "published_at", "rescues", "reason", "error",
               "dead_at", "attempts", "replays"]
    conn.execute(insert(dl).from_select(columns, old))
    conn.execute(delete(t).where(t.c.dead_at.is_not(None), t.c.deadline.is_(None)))


def _v5(conn: Connection, tables: Schema) -> None:
    """The lease clock: leases and deadlines written before it are on wall time, which
    is the lease clock with nothing paused yet."""
    clock = tables.clock
    clock.create(conn, checkfirst=True)  # MariaDB commits it at once: this may run again
    if conn.scalar(select(func.count()).select_from(clock)) == 0:
        conn.execute(insert(clock).values(name=CLOCK_ROW, seen=time.time(), paused=0.0))


STEPS: tuple[Step, ...] = (
    Step(1, "keys, tasks and sweeper tables", _v1),
    Step(2, "retry budget and circuit breaker tables", _v2),
    Step(3, "task states, transitions and state counts", _v3),
    Step(4, "dead-letter index", _v4),
    Step(5, "lease clock", _v5),
)
SCHEMA_VERSION = STEPS[-1].version


def current_version(conn: Connection, tables: Schema) -> int:
    """The newest applied step, 0 when the schema was never created."""
    if not inspect(conn).has_table(tables.versions.name):
        return 0
    return conn.scalar(select(func.max(tables.versions.c.version))) or 0


def require_current(conn: Connection, tables: Schema, where: str) -> None:
    """Raise StoreError, saying what to run, unless the schema is the version this code knows."""
    found = current_version(conn, tables)
    if found == SCHEMA_VERSION:
        return
    where = f"{where} (prefix {tables.prefix!r})"
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has schema version {found}, newer than this celery_reliable knows "
            f"({SCHEMA_VERSION}): upgrade celery_reliable"
        )
    has = f"schema version {found}" if found else "no schema"
    raise StoreError(
        f"{where} has {has}, this celery_reliable needs version {SCHEMA_VERSION}: "
        "run `celery -A <app> reliable-store migrate` (or store.migrate())"
    )


@contextmanager
def exclusive(conn: Connection, tables: Schema) -> Iterator[None]:
    """Hold MariaDB/MySQL's named lock on the schema around a migration, its commit
    included (``conn``: outside any transaction; elsewhere a no-op).

    Why around the commit: the lock belongs to the session, not to the transaction.
    Released before the commit, it let the next process in while the last step's
    version row was still uncommitted: that process read the previous version and
    applied the step again ("Duplicate entry" on the versions table).
    """
    if conn.dialect.name not in _MYSQL:
        yield
        return
    got = conn.scalar(select(func.get_lock(tables.versions.name, LOCK_WAIT)))
    conn.commit()
    if got != 1:
        raise StoreError(
            f"another process has been migrating {tables.versions.name} for {LOCK_WAIT}s; "
            "wait for it to finish and run the migration again"
        )
    try:
        yield
    finally:
        if not conn.invalidated:  # a lost connection's session, and its lock, are gone
            conn.execute(select(func.release_lock(tables.versions.name)))
            conn.commit()


def upgrade(conn: Connection, tables: Schema) -> Migration:
    """Apply the missing steps inside ``conn``'s transaction; says what it applied.

    One process at a time: a PostgreSQL advisory lock held to the end of the
    transaction (whose DDL is transactional), the write lock SQLite's ``BEGIN
    IMMEDIATE`` already holds, or on MariaDB/MySQL the named lock the caller holds
    around the transaction (:func:`exclusive`).  The loser of a race then finds the
    schema current and applies nothing.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(zlib.crc32(tables.versions.name.encode()))))
    before = set(inspect(conn).get_table_names())
    found = current_version(conn, tables)
    applied = _apply_missing(conn, tables)
    created = sorted(name for name in set(inspect(conn).get_table_names()) - before
                     if name.startswith(f"{tables.prefix}_"))
    return Migration(has_schema=True, from_version=found,
                     to_version=applied[-1].version if applied else found,
                     applied=tuple(f"{s.version}: {s.description}" for s in applied),
                     tables_created=tuple(created))


def _apply_missing(conn: Connection, tables: Schema) -> list[Step]:
    tables.versions.create(conn, checkfirst=True)
    found = current_version(conn, tables)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"{tables.versions.name} is at version {found}, newer than this celery_reliable "
            f"knows ({SCHEMA_VERSION}): upgrade celery_reliable, never downgrade a schema"
        )
    applied = []
    for step in STEPS:
        if step.version <= found:
            continue
        step.apply(conn, tables)
        conn.execute(
            insert(tables.versions).values(
                version=step.version, description=step.description, applied_at=time.time()
            )
        )
        applied.append(step)
    return applied
