"""What the harness promises about the store: fresh per test, never the development
store, settings put back, SQL tables dropped, a clock that moves leases and retention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.runtime import reset, runtime
from celery_reliable.testing import ClockNotAdjustable, use_store


def _shop(store_url: str, **conf: object) -> tuple[Celery, list[int]]:
    """A module-global-like app (it outlives the blocks below) and its effects."""
    app = Celery("isolated", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = store_url
    app.conf.update(conf)
    sent: list[int] = []

    @app.task(base=ReliableTask, idempotency_key="receipt:{order_id}", shared=False)
    def send_receipt(order_id: int) -> None:
        sent.append(order_id)

    return app, sent


def test_memory_store_is_fresh_in_every_block_on_one_long_lived_app() -> None:
    """Was: the app's runtime kept its memory store from one Django TestCase to the next,
    so the second test's receipt was skipped as already sent."""
    app, sent = _shop("memory://")
    task = app.tasks[f"{__name__}.send_receipt"]
    for _ in range(2):
        with use_store(app, eager=True) as reliable:
            task.delay(1)
            reliable.assert_ran_once(key="receipt:1")
    assert sent == [1, 1]


def test_keys_done_in_the_development_store_do_not_skip_a_test(tmp_path: Path) -> None:
    """Was: a test run against the development store skipped tasks whose keys that store
    had marked done.  Each test gets a prefix of its own, even on the same URL."""
    dev = f"sqlite:///{tmp_path / 'dev.db'}"
    app, sent = _shop(dev, task_always_eager=True)
    runtime(app).store.migrate()
    task = app.tasks[f"{__name__}.send_receipt"]
    task.delay(2)  # development: receipt:2 is done in the dev store
    task.delay(2)
    assert sent == [2]
    reset(app)
    with use_store(app, dev) as reliable:
        task.delay(2)
        reliable.assert_ran_once(key="receipt:2")
    assert sent == [2, 2]
    assert runtime(app).store.get_key("receipt:2") is not None  # the dev store is intact
    reset(app)


def test_sql_tables_are_created_for_the_test_and_dropped_after(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tests.db'}"
    app, _ = _shop("memory://", task_always_eager=True)
    engine = sqlalchemy.create_engine(url)
    with use_store(app, url) as reliable:
        app.tasks[f"{__name__}.send_receipt"].delay(3)
        reliable.assert_ran_once(key="receipt:3")
        tables = sqlalchemy.inspect(engine).get_table_names()
        assert f"{reliable.key_prefix}_keys" in tables
        assert f"{reliable.key_prefix}_transitions" in tables
    assert sqlalchemy.inspect(engine).get_table_names() == []
    engine.dispose()


def test_settings_are_restored_in_the_spelling_the_user_wrote() -> None:
    """A Django app reads CELERY_RELIABLE_STORE_URL: the override must win over it for the
    test (not be one of two keys read in random order) and go away after."""
    app = Celery("djangoish", broker="memory://", set_as_current=False)
    app.config_from_object({"CELERY_RELIABLE_STORE_URL": "redis://127.0.0.1:1/1",
                            "CELERY_RELIABLE_KEY_PREFIX": "shop"}, namespace="CELERY")
    with use_store(app) as reliable:
        settings = runtime(app).settings
        assert settings.store_url == "memory://"
        assert settings.key_prefix == reliable.key_prefix != "shop"
        assert app.conf["CELERY_RELIABLE_STORE_URL"] == "memory://"
    assert app.conf["CELERY_RELIABLE_STORE_URL"] == "redis://127.0.0.1:1/1"
    assert "reliable_store_url" not in app.conf.changes
    assert runtime(app).settings.key_prefix == "shop"
    reset(app)


def test_the_clock_ends_a_retention_window() -> None:
    app, sent = _shop("memory://", task_always_eager=True, reliable_retention=60)
    task = app.tasks[f"{__name__}.send_receipt"]
    with use_store(app) as reliable:
        task.delay(4)
        task.delay(4)
        assert sent == [4]
        reliable.clock.advance(61)  # the completion is forgotten: the key may run again
        task.delay(4)
        assert sent == [4, 4]


def test_the_clock_refuses_to_pretend_on_a_store_with_its_own_time(tmp_path: Path) -> None:
    app, _ = _shop("memory://")
    with use_store(app, f"sqlite:///{tmp_path / 's.db'}") as reliable, \
            pytest.raises(ClockNotAdjustable, match="memory:// only"):
        reliable.clock.advance(1)


def test_the_worker_stops_in_well_under_a_second() -> None:
    """Celery's test worker on the memory broker took 2-4 s to stop (see testing/worker.py)."""
    app, sent = _shop("memory://")
    with use_store(app) as reliable:
        with reliable.worker():
            app.tasks[f"{__name__}.send_receipt"].delay(5)
            reliable.assert_ran_once(key="receipt:5")
            started = time.monotonic()
        stopped_in = time.monotonic() - started
    assert sent == [5]
    assert stopped_in < 1.0, f"the worker took {stopped_in:.2f} s to stop"


def test_the_clock_lapses_a_lease_and_ages_a_stuck_task() -> None:
    from celery_reliable.states import queries
    from celery_reliable.stores import ClaimStatus

    app, _ = _shop("memory://")
    with use_store(app) as reliable:
        store = runtime(app).store
        fp = "f" * 16
        assert store.claim("k", fp, "t1", "worker-a", 30, max_lost=3).status is ClaimStatus.CLAIMED
        assert store.claim("k", fp, "t2", "worker-b", 30, max_lost=3).status is ClaimStatus.BUSY
        app.tasks[f"{__name__}.send_receipt"].delay(6)  # no worker: it stays PENDING
        reliable.flush()
        assert queries.stuck(app, older_than=60) == []
        reliable.clock.advance(31)
        taken = store.claim("k", fp, "t2", "worker-b", 30, max_lost=3)
        assert taken.status is ClaimStatus.TAKEN_OVER
        reliable.clock.advance(30)
        assert [s.key for s in queries.stuck(app, older_than=60)] == ["receipt:6"]
