"""Connecting to each SQL dialect the store supports, with the settings it needs.

Kept apart from the store's operations (:mod:`.sql`): what is particular to
PostgreSQL, MariaDB and SQLite when connecting lives here, next to the reasons.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine import URL

from celery_reliable.stores.sql_base import READ_ONLY_OPTION

#: How long a SQLite writer waits for the file's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Pause between attempts to switch a new SQLite file to WAL while another holds it.
_WAL_RETRY_SECONDS = 0.01
#: Seconds to wait for a PostgreSQL/MariaDB connection: fail closed, do not hang a task.
CONNECT_TIMEOUT = 5
_DRIVERS = {  # a bare scheme gets the driver the ``sql`` extra installs
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def open_engine(url: str) -> tuple[Engine, str]:
    """The engine of a store URL (a bare scheme gets the driver the ``sql`` extra
    installs) and the URL to show in messages, its password hidden."""
    parsed = make_url(url)
    parsed = parsed.set(drivername=_DRIVERS.get(parsed.drivername, parsed.drivername))
    engine = create_engine(parsed, pool_pre_ping=True, future=True, **options_for(parsed))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine, parsed.render_as_string(hide_password=True)


def options_for(url: URL) -> dict[str, Any]:
    """``create_engine`` options of a dialect: timeouts, planning, isolation."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return {}
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {"connect_args": connect_args}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    if url.get_driver_name() == "psycopg" and "prepare_threshold" not in url.query:
        # psycopg prepares a statement on its 5th run, and PostgreSQL may then keep a
        # generic plan made while the table was small (a fresh schema, before autovacuum
        # analyzes it): a batch's IN lookup went from 1 ms to a scan of the whole table,
        # slower at every batch.  Our statements are short; planning each run is cheap.
        connect_args["prepare_threshold"] = None
    if backend in ("mysql", "mariadb"):
        # No gap locks: a locking read of a missing key must not block others' inserts.
        options["isolation_level"] = "READ COMMITTED"
    return options


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # SQLAlchemy's documented recipe: pysqlite would BEGIN only at the first
    # write, after our reads; switch that off and emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(dbapi_connection)


def _switch_to_wal(dbapi_connection: sqlite3.Connection) -> None:
    """WAL mode, waiting for the file like any writer (WAL is then kept in the file).

    The switch does not go through the busy timeout: when several processes open
    a new file at once, all but one got "database is locked" at once (a worker's
    first task failing closed, or a concurrent ``migrate`` failing).  So the
    switch is retried until the busy timeout would have given up.
    """
    if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_SECONDS)


def _sqlite_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
