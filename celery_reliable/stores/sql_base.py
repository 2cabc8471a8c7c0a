"""What every SQL store operation stands on: transactions, errors, inserts.

:class:`SQLBase` holds the plumbing the store's parts share (the key and task
operations in :mod:`.sql`, retry budgets and breakers in :mod:`.sql_limits`,
the dead-letter index in :mod:`.sql_dead_letters`): one transaction per
operation, run again after a deadlock or a lost insert race, driver errors
turned into ours (unreachable fails closed), and the schema checked once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    any_,
    bindparam,
    insert,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.schema import Column

from celery_reliable.errors import StoreError, StoreUnavailable
from celery_reliable.stores import migrations
from celery_reliable.stores.base import Store

T = TypeVar("T")

_ATTEMPTS = 5
#: Deadlock victim or serialization failure (PostgreSQL SQLSTATEs, MariaDB errno).
_RETRYABLE = {"40P01", "40001", 1213}
_MYSQL_DUPLICATE_KEY = 1062

#: execution option of the read-only engine (SQLite: a plain BEGIN, not BEGIN IMMEDIATE)
READ_ONLY_OPTION = "reliable_read_only"


class _Retry(Exception):
    """Another transaction inserted the row we meant to: start over, and lock it this time."""


class SQLBase(Store):
    """Transactions and errors of the SQL store (see :class:`.sql.SQLStore`)."""

    schema: migrations.Schema
    engine: Engine
    dialect: str
    """postgresql, mysql (MariaDB too) or sqlite."""
    safe_url: str
    _reader: Engine
    _schema_checked: bool

    # -- transactions and errors -------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Driver errors as ours: unreachable is StoreUnavailable (fail closed), else StoreError."""
        where = f"SQL store {self.safe_url}"
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise StoreUnavailable(f"{where} is unreachable: {_reason(exc)}") from exc
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"{where} lost its connection: {_reason(exc)}") from exc
            raise StoreError(f"{where} refused a statement: {_reason(exc)}") from exc

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` as one transaction; again from the start when it asks to (``_Retry``)
        or was chosen as a deadlock victim, which InnoDB says any transaction may be."""
        self._require_schema()
        with self._guard():
            for _ in range(_ATTEMPTS):
                try:
                    with self.engine.begin() as conn:
                        return work(conn)
                except _Retry:
                    continue
                except sa_exc.DBAPIError as exc:
                    if _code(exc) not in _RETRYABLE:
                        raise
        raise StoreUnavailable(
            f"SQL store {self.safe_url}: a transaction collided with concurrent ones "
            f"{_ATTEMPTS} times in a row; try again"
        )

    def _read(self, work: Callable[[Connection], T]) -> T:
        """One read-only transaction (a plain BEGIN on SQLite: it does not queue behind writers)."""
        self._require_schema()
        with self._guard(), self._reader.begin() as conn:
            return work(conn)

    def _require_schema(self) -> None:
        """Check the schema once per store: a missing migration fails with a message saying
        so, not with 'no such table' in the middle of a claim.  Never creates anything."""
        if not self._schema_checked:
            self.ping()

    def among(self, column: Column[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """``column IN values`` for a batch's lookup.  On PostgreSQL ``= ANY(array)``: one
        parameter, so one short statement whatever the batch size, where an IN list has
        a placeholder per value for SQLAlchemy to render and psycopg to parse each time."""
        if self.dialect == "postgresql":
            array = bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
            return column == any_(array)
        return column.in_(values)

    @staticmethod
    def update_many(
        conn: Connection, table: Table, pk: str, rows: Sequence[dict[str, Any]]
    ) -> None:
        """UPDATE rows read under lock, one executemany (also used by the SQL state store);
        each row names the same columns (bind names must not be columns')."""
        if not rows:
            return
        columns = [c for c in rows[0] if c != pk]
        stmt = update(table).where(table.c[pk] == bindparam("b_pk")).values(
            {c: bindparam(f"b_{c}") for c in columns}
        )
        conn.execute(stmt, [{"b_pk": r[pk], **{f"b_{c}": r[c] for c in columns}} for r in rows])

    def insert_new(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """INSERT rows that were not there when read under lock; when another
        transaction inserted one of them first, start the transaction over, so that
        this time it is read under its lock (also used by the SQL state store)."""
        if not rows:
            return
        if self.dialect == "mysql":
            try:
                conn.execute(insert(table), list(rows))
            except sa_exc.IntegrityError as exc:
                if _code(exc) == _MYSQL_DUPLICATE_KEY:
                    raise _Retry from exc
                raise
            return
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        # One short statement run as an executemany (psycopg pipelines it; its text is
        # cached and prepared), not one multi-row INSERT with a placeholder per value,
        # which costs milliseconds per hundred rows to build and parse.  SQLAlchemy
        # keeps the rowcount (the rows inserted) only when asked to.
        stmt = dialect_insert(table).on_conflict_do_nothing()
        inserted = conn.execute(stmt.execution_options(preserve_rowcount=True), list(rows))
        if inserted.rowcount != len(rows):
            raise _Retry

    def ping(self) -> None:
        """Connect and check the schema version (a StoreError naming the migrate command)."""
        with self._guard(), self._reader.begin() as conn:
            migrations.require_current(conn, self.schema, f"SQL store {self.safe_url}")
        self._schema_checked = True


def _code(exc: sa_exc.DBAPIError) -> Any:
    """PyMySQL's errno (its SQLSTATEs are too coarse), else the driver's SQLSTATE."""
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return getattr(exc.orig, "sqlstate", None)


def _reason(exc: Exception) -> str:
    """The driver's first message line: SQL text and parameters stay out of the log."""
    detail = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    lines = str(detail).strip().splitlines()
    return lines[0] if lines else type(detail).__name__
