"""What only the SQL store has: its schema, its SQL and its three dialects.

The behaviour every store shares is in test_store_contract.py; these tests
check migrations, the errors that name their cure, pruning, exact key
comparison on MariaDB, the sweep's index and atomicity across processes.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, insert, inspect, make_url, select

from celery_reliable.errors import ConfigurationError, StoreError, StoreUnavailable
from celery_reliable.stores import ClaimStatus, KeyState, SweepPolicy, open_store
from celery_reliable.stores.migrations import SCHEMA_VERSION, STEPS
from celery_reliable.stores.sql import SQLStore
from celery_reliable.stores.sql_base import _Retry
from celery_reliable.stores.sql_engine import options_for
from tests.servers import MARIADB, POSTGRES
from tests.unit.test_store_contract import FP, record, wait_until

SQL_KINDS = ["sqlite", "postgresql", "mariadb"]
T = TypeVar("T")


def sql_url(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{directory / 'store.db'}"
    return POSTGRES.require() if kind == "postgresql" else MARIADB.require()


def open_sql(url: str, prefix: str) -> SQLStore:
    store = open_store(url, prefix=prefix)
    assert isinstance(store, SQLStore)
    return store


@pytest.fixture(params=SQL_KINDS)
def fresh(request: pytest.FixtureRequest, prefix: str, tmp_path: Path) -> Iterator[SQLStore]:
    """A store whose schema was never created; its tables are dropped afterwards."""
    store = open_sql(sql_url(request.param, tmp_path), prefix)
    yield store
    store.schema.metadata.drop_all(store.engine)
    store.close()


@pytest.fixture
def migrated(fresh: SQLStore) -> SQLStore:
    fresh.migrate()
    return fresh


def row_count(store: SQLStore, table_name: str) -> int:
    table = store.schema.metadata.tables[table_name]
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def test_migrate_is_idempotent(fresh: SQLStore) -> None:
    fresh.migrate()
    fresh.migrate()
    fresh.ping()
    with fresh.engine.connect() as conn:
        versions = conn.scalars(select(fresh.schema.versions.c.version)).all()
    assert versions == [step.version for step in STEPS]
    assert row_count(fresh, fresh.schema.sweeper.name) == 1
    assert fresh.claim("k", FP, "t1", "a", 30, max_lost=3).status is ClaimStatus.CLAIMED


def run_together(threads: int, work: Callable[[int], T]) -> list[T]:
    """``work(i)`` in ``threads`` threads released at once: their results (an error re-raised)."""
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[Exception] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(work(i))
        except Exception as exc:  # noqa: BLE001 - re-raised in the test's own thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


def test_concurrent_migrations_apply_each_step_once(fresh: SQLStore) -> None:
    stores = [open_sql(fresh.url, fresh.prefix) for _ in range(3)]
    try:
        run_together(len(stores), lambda i: stores[i].migrate())
    finally:
        for store in stores:
            store.close()
    assert row_count(fresh, fresh.schema.versions.name) == len(STEPS)
    assert row_count(fresh, fresh.schema.sweeper.name) == 1
    fresh.ping()


def test_a_migration_started_while_another_commits_waits_and_applies_nothing(
    fresh: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On MariaDB the schema lock was released before the commit: the second process
    read the old version and applied the last step again (Duplicate entry)."""
    from sqlalchemy import event

    from celery_reliable.stores import migrations

    first, second = open_sql(fresh.url, fresh.prefix), open_sql(fresh.url, fresh.prefix)
    applied = threading.Event()
    apply_missing = migrations._apply_missing

    def apply_then_tell(conn: object, tables: object) -> list[object]:
        versions = apply_missing(conn, tables)  # type: ignore[arg-type]
        if threading.current_thread().name == "first":
            applied.set()
        return versions

    def slow_commit(conn: object) -> None:
        if threading.current_thread().name == "first" and applied.is_set():
            time.sleep(0.5)  # the steps are applied, not yet committed

    monkeypatch.setattr(migrations, "_apply_missing", apply_then_tell)
    event.listen(first.engine, "commit", slow_commit)
    errors: list[BaseException] = []

    def migrate_first() -> None:
        try:
            first.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=migrate_first, name="first")
    try:
        thread.start()
        assert applied.wait(30)
        second.migrate()
        thread.join(30)
    finally:
        first.close()
        second.close()
    assert errors == []
    assert row_count(fresh, fresh.schema.versions.name) == len(STEPS)


def test_unmigrated_database_is_refused_and_left_alone(fresh: SQLStore) -> None:
    for call in (fresh.ping, lambda: fresh.claim("k", FP, "t1", "a", 30, max_lost=3)):
        with pytest.raises(StoreError, match="reliable-store migrate") as info:
            call()
        # Not StoreUnavailable: deferring the task would not help, migrating does.
        assert type(info.value) is StoreError
    tables = inspect(fresh.engine).get_table_names()
    assert not any(name.startswith(fresh.prefix) for name in tables)


def test_outdated_schema_is_refused_until_migrated(fresh: SQLStore) -> None:
    with fresh.engine.begin() as conn:  # a database migrated by the previous release
        fresh.schema.versions.create(conn)
        STEPS[0].apply(conn, fresh.schema)
        conn.execute(insert(fresh.schema.versions).values(
            version=STEPS[0].version, description=STEPS[0].description, applied_at=0.0
        ))
    with pytest.raises(StoreError, match=r"schema version 1, .* reliable-store migrate"):
        fresh.ping()
    fresh.migrate()
    with fresh.engine.connect() as conn:
        versions = conn.scalars(select(fresh.schema.versions.c.version)).all()
    assert versions == [step.version for step in STEPS]
    assert fresh.budget_withdraw("mailer", 0.1, 1, 10)


def test_newer_schema_is_refused(migrated: SQLStore) -> None:
    with migrated.engine.begin() as conn:
        conn.execute(insert(migrated.schema.versions).values(
            version=SCHEMA_VERSION + 1, description="from the future", applied_at=0.0
        ))
    for call in (open_sql(migrated.url, migrated.prefix).ping, migrated.migrate):
        with pytest.raises(StoreError, match="upgrade celery_reliable"):
            call()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test",
        "mysql+pymysql://root:s3cret@127.0.0.1:1/test",
    ],
)
def test_unreachable_server_is_unavailable(url: str, prefix: str) -> None:
    store = open_sql(url, prefix)
    for call in (store.ping, store.migrate, lambda: store.lookup("k", FP)):
        with pytest.raises(StoreUnavailable) as info:
            call()
        message = str(info.value)
        assert "127.0.0.1:1" in message and "***" in message and "s3cret" not in message


def test_prune_deletes_expired_done_keys_only(migrated: SQLStore) -> None:
    for i in range(5):
        assert migrated.claim(f"old{i}", FP, f"t{i}", "a", 30, max_lost=3).runs
        assert migrated.complete(f"old{i}", FP, "a", f"t{i}", None, retention=0.2)
    migrated.claim("live", FP, "t-live", "a", 30, max_lost=3)
    migrated.complete("live", FP, "a", "t-live", '"kept"', retention=60)
    migrated.claim("running", FP, "t-run", "b", 30, max_lost=3)
    wait_until(lambda: migrated.get_key("old4") is None)  # the last to expire
    keys_table = migrated.schema.keys.name
    assert row_count(migrated, keys_table) == 7  # expired rows are only hidden, not gone

    assert [migrated.prune(limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert row_count(migrated, keys_table) == 2
    live = migrated.get_key("live")
    assert live is not None and live.state == "done" and live.result == '"kept"'
    running = migrated.get_key("running")
    assert running is not None and running.state == "running"


def test_expired_done_key_is_claimed_afresh(migrated: SQLStore) -> None:
    migrated.claim("k", FP, "t1", "a", 30, max_lost=3)
    migrated.complete("k", FP, "a", "t1", "1", retention=0.2)
    assert migrated.claim("k", FP, "t2", "b", 30, max_lost=3).status is ClaimStatus.DONE
    wait_until(lambda: migrated.get_key("k") is None)
    assert migrated.claim("k", FP, "t3", "c", 30, max_lost=3).status is ClaimStatus.CLAIMED
    state = migrated.get_key("k")
    assert state is not None and state.task_id == "t3" and state.owner == "c"


def test_keys_compare_exactly(migrated: SQLStore) -> None:
    # MariaDB's default collations would make these collide (case, trailing space).
    keys = ["order:1", "Order:1", "order:1 ", "é" * 512, "e" * 512]
    for i, key in enumerate(keys):
        assert migrated.claim(key, FP, f"t{i}", "a", 30, max_lost=3).status is ClaimStatus.CLAIMED
    for i, key in enumerate(keys):
        state = migrated.get_key(key)
        assert state is not None and state.task_id == f"t{i}"


def test_budget_withdrawals_never_overdraw(migrated: SQLStore) -> None:
    migrated.budget_deposit("mailer", 10)
    granted = run_together(8, lambda i: [
        migrated.budget_withdraw("mailer", 0.5, 0, 10) for _ in range(4)
    ])
    assert sum(ok for result in granted for ok in result) == 5  # 50% of 10 first attempts


def test_breaker_lets_one_probe_through(migrated: SQLStore) -> None:
    assert migrated.breaker_report("smtp", False, threshold=1, cool_down=0.1) == "open"
    reopens = time.time() + 0.1
    wait_until(lambda: time.time() > reopens)
    states = run_together(8, lambda i: migrated.breaker_check("smtp", f"w{i}", 30).state)
    assert sorted(states) == ["half_open"] + ["probing"] * 7


def sweep_plan(store: SQLStore) -> str:
    """The database's plan for the sweep's own SELECT, with the same bound parameters."""
    query = store.due_query(time.time(), 500)
    with store.engine.connect() as conn:
        compiled = query.compile(dialect=conn.dialect)
        params = compiled.construct_params()
        values = tuple(params[name] for name in compiled.positiontup or ()) or params
        verb = "EXPLAIN QUERY PLAN" if store.dialect == "sqlite" else "EXPLAIN"
        rows = conn.exec_driver_sql(f"{verb} {compiled}", values).mappings().all()
    if store.dialect == "mysql":  # possible_keys names the index even when a scan is chosen
        return "\n".join(f"{row['type']} {row['key']}" for row in rows)
    return "\n".join(" ".join(str(value) for value in row.values()) for row in rows)


def test_sweep_is_an_index_range_scan(migrated: SQLStore) -> None:
    now = time.time()
    rows = [
        {
            "task_id": f"t{i}", "name": "n", "key": f"k{i}", "fingerprint": FP, "body": "[]",
            "content_type": "application/json", "content_encoding": "utf-8", "options": "{}",
            "published_at": now, "state": "queued", "rescues": 0,
            # Most records wait in the future, a few are due: the usual backlog.
            "deadline": now - 10 if i % 200 == 0 else now + 60 + i,
        }
        for i in range(20_000)
    ]
    with migrated.engine.begin() as conn:
        conn.execute(insert(migrated.schema.tasks), rows)
    analyze = {"mysql": "ANALYZE TABLE {}", "postgresql": "ANALYZE {}", "sqlite": "ANALYZE"}
    with migrated.engine.begin() as conn:
        conn.exec_driver_sql(analyze[migrated.dialect].format(migrated.schema.tasks.name))
    plan = sweep_plan(migrated)
    assert f"{migrated.prefix}_tasks_deadline" in plan, plan
    assert not any(scan in plan for scan in ("Seq Scan", "SCAN ", "ALL ")), plan
    taken = migrated.sweep(SweepPolicy(rescue_after=60, backoff_cap=60, limit=500))
    assert len(taken) == 100


def test_insert_new_inserts_a_batch_or_starts_over(migrated: SQLStore) -> None:
    keys = migrated.schema.keys
    rows = [{"key": f"k{i}", **asdict(KeyState("queued", FP, f"t{i}")), "expires_at": None}
            for i in range(3)]
    with migrated.engine.begin() as conn:
        migrated.insert_new(conn, keys, rows[:1])
    # Another transaction inserted k0 since we read: ours must start over, not lose it.
    with pytest.raises(_Retry), migrated.engine.begin() as conn:
        migrated.insert_new(conn, keys, rows)
    assert row_count(migrated, keys.name) == 1
    with migrated.engine.begin() as conn:
        migrated.insert_new(conn, keys, rows[1:])
    assert row_count(migrated, keys.name) == 3


def test_among_selects_a_batch(migrated: SQLStore) -> None:
    keys = migrated.schema.keys
    rows = [{"key": f"k{i}", **asdict(KeyState("queued", FP, f"t{i}")), "expires_at": None}
            for i in range(5)]
    with migrated.engine.begin() as conn:
        migrated.insert_new(conn, keys, rows)
        found = conn.scalars(select(keys.c.key).where(
            migrated.among(keys.c.key, ["k1", "k3", "K3", "nope"])))
        assert set(found) == {"k1", "k3"}


def test_psycopg_plans_each_statement_afresh() -> None:
    """A generic plan kept from while a table was small scanned it whole as it grew."""
    url = "postgresql+psycopg://u@db/app"
    assert options_for(make_url(url))["connect_args"]["prepare_threshold"] is None
    assert "prepare_threshold" not in options_for(make_url(url + "?prepare_threshold=5"))[
        "connect_args"]
    assert "prepare_threshold" not in options_for(make_url("postgresql+psycopg2://u@db/app"))[
        "connect_args"]


def test_relative_sqlite_path(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_sql("sqlite:///relative.db", prefix)
    store.migrate()
    assert store.claim("k", FP, "t1", "a", 30, max_lost=3).runs
    store.close()
    assert (tmp_path / "relative.db").is_file()


def test_a_new_sqlite_file_held_by_another_process_is_waited_for(
    prefix: str, tmp_path: Path
) -> None:
    """Switching a new file to WAL skips the busy timeout: without a retry, this raised."""
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another worker opening the file, mid-migrate
    threading.Timer(0.3, holder.rollback).start()
    store = open_sql(f"sqlite:///{path}", prefix)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()
        holder.close()


@pytest.mark.parametrize("bad", ["my-app", "reliable; DROP TABLE x", "Upper", "x" * 41, ""])
def test_prefix_must_be_a_plain_identifier(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="reliable_key_prefix"):
        open_store(f"sqlite:///{tmp_path / 's.db'}", prefix=bad)


def _claim_from_process(url: str, prefix: str, worker: int, start_at: float) -> list[str]:
    store = open_sql(url, prefix)
    store.ping()
    time.sleep(max(0.0, start_at - time.time()))
    statuses = [
        store.claim("hot", FP, f"t{worker}", f"w{worker}-{i}", 30, 3).status.value
        for i in range(20)
    ]
    store.close()
    return statuses


def test_claims_from_processes_admit_one_owner(migrated: SQLStore) -> None:
    # The key's row exists (queued by its publish), so no insert conflict can
    # save a wrong implementation: only the row lock serializes the claims.
    migrated.publish(record("hot"), 60, dedupe=True)
    workers = 4
    start_at = time.time() + 3  # every process connected and waiting by then
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        results = pool.starmap(
            _claim_from_process,
            [(migrated.url, migrated.prefix, i, start_at) for i in range(workers)],
        )
    statuses = [status for result in results for status in result]
    assert statuses.count("claimed") == 1
    assert set(statuses) == {"claimed", "busy"}
