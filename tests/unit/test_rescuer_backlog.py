"""The sweeping worker keeps up with a backlog: lost records, expired states and keys.

It once took one batch per sweep: 500 records per 5 s interval (a Redis broker
restarted empty with 100,000 tasks queued took 17 minutes to rescue), and 1,000
expired task states a minute (an app finishing more than 17 tasks/s grew its SQL
state store without bound); and nothing forgot a SQL store's expired completed
keys at all.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select

from celery_reliable import ReliableTask
from celery_reliable.runtime import reset, runtime
from celery_reliable.states import State, Transition, state_store
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.stores.model import SweepPolicy
from celery_reliable.stores.sql import SQLStore
from celery_reliable.worker import rescue
from celery_reliable.worker.rescue import Rescuer

PATH = (State.PENDING, State.RECEIVED, State.STARTED, State.SUCCEEDED)


def expired_tasks(app: Celery, n: int) -> list[str]:
    """n finished tasks recorded two hours ago (retention: one minute)."""
    tasks = [str(uuid.uuid4()) for _ in range(n)]
    old = time.time() - 7200
    state_store(app).record([Transition(t, "shop.receipt", f"r:{t[:8]}", state, at=old + i)
                             for t in tasks for i, state in enumerate(PATH)])
    return tasks


@pytest.fixture
def rescuer(app: Celery) -> Rescuer:
    app.conf.reliable_state_retention = 60
    sweeper = Rescuer(runtime(app), "test")
    sweeper._pruned_at = time.monotonic() - rescue.PRUNE_EVERY  # a prune is due
    return sweeper


def test_one_prune_forgets_every_batch_that_is_due(app: Celery, rescuer: Rescuer) -> None:
    tasks = expired_tasks(app, 2 * rescue.PRUNE_BATCH + 500)
    rescuer._prune()
    assert [state_store(app).current(t) for t in tasks] == [None] * len(tasks)
    assert runtime(app).counters["prune_behind"] == 0
    rescuer._prune()  # not due again yet: nothing happens, nothing fails


def test_a_prune_that_runs_out_of_time_stops_and_says_it_is_behind(
    app: Celery, rescuer: Rescuer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(rescue, "PRUNE_BATCH", 100)
    monkeypatch.setattr(rescue, "PRUNE_BUDGET", 0.0)
    tasks = expired_tasks(app, 350)
    with caplog.at_level(logging.WARNING, logger="celery_reliable.rescue"):
        rescuer._prune()
    left = sum(state_store(app).current(t) is not None for t in tasks)
    assert left == 250  # one batch, then the budget was spent
    assert runtime(app).counters["prune_behind"] == 1
    assert any("faster than they are pruned" in r.getMessage() for r in caplog.records)


def test_one_sweep_rescues_every_full_batch_of_lost_records(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.lost")
    def lost(n: int) -> None: ...

    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    for n in range(1200):
        lost.apply_async((n,), queue="lostq")
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("lostq")  # the broker lost them all
        store.clock = lambda: 10**10  # far in the future: every deadline passed
        sweeper = Rescuer(runtime(app), "test")
        sweeper.policy = SweepPolicy(0.1, 1, 500)
        assert sweeper.sweep_once() == 1200  # batches of 500, 500, 200
        queue = conn.SimpleQueue("lostq")
        assert queue.qsize() == 1200
        queue.close()
        assert sweeper.sweep_once() == 0  # each once per expiry


def test_a_sweep_out_of_time_with_records_due_is_followed_at_once(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.lost")
    def lost(n: int) -> None: ...

    app.conf.reliable_rescue_interval = 0.1  # also the time one sweep may take
    store = runtime(app).store
    assert isinstance(store, MemoryStore)
    for n in range(30):
        lost.apply_async((n,), queue="lostq")
    store.clock = lambda: 10**10
    sweeper = Rescuer(runtime(app), "test")
    sweeper.policy = SweepPolicy(0.1, 1, 10)
    slow = sweeper.handle

    def handle(record: Any) -> None:
        time.sleep(0.02)  # 10 records take 0.2 s: one batch spends the interval
        slow(record)

    sweeper.handle = handle  # type: ignore[method-assign]
    assert sweeper.sweep_once() == 10
    assert sweeper.backlog  # the thread sweeps again without waiting an interval
    assert sweeper.sweep_once() == 10
    assert sweeper.sweep_once() == 10
    assert sweeper.backlog  # a full last batch: one more look
    assert sweeper.sweep_once() == 0
    assert not sweeper.backlog


def test_a_sql_store_forgets_expired_completed_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rescue, "PRUNE_BATCH", 100)
    app = Celery(f"prune{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False)
    app.conf.update(reliable_store_url=f"sqlite:///{tmp_path}/store.db", reliable_retention=1,
                    reliable_state_enabled=False)

    @app.task(base=ReliableTask, shared=False, name="shop.receipt", idempotency_key="r:{n}")
    def receipt(n: int) -> int:
        return n

    try:
        store = runtime(app).store
        assert isinstance(store, SQLStore)
        store.migrate()
        for n in range(250):
            receipt.apply((n,))
        with store.engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(store.schema.keys)) == 250
        time.sleep(1.1)  # past the retention
        sweeper = Rescuer(runtime(app), "test")
        sweeper._pruned_at = time.monotonic() - rescue.PRUNE_EVERY
        sweeper._prune()
        with store.engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(store.schema.keys)) == 0
    finally:
        reset(app)
