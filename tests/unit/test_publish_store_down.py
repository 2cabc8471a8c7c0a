"""A publish the store cannot record: what the caller's transaction sees.

Inside the transaction the error rolls it back, and nothing is left half done.
After the commit (Django's ``transaction.on_commit(lambda: task.delay(...))``) the
row is saved and the task is neither published nor recorded: the error must say
what was lost and what to do.
"""

from __future__ import annotations

import re
import sqlite3
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from celery_reliable import ReliableTask, StoreUnavailable
from celery_reliable.runtime import reset, runtime

DOWN = "redis://127.0.0.1:1/0"  # nothing listens there


@pytest.fixture
def orders(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The user's own database, with real transactions."""
    db = sqlite3.connect(tmp_path / "shop.db")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    yield db
    db.close()


def receipt_task(app: Celery) -> ReliableTask:
    @app.task(base=ReliableTask, shared=False, name="shop.send_receipt",
              idempotency_key="receipt:{order_id}")
    def send_receipt(order_id: int) -> None: ...

    return send_receipt


def queued(app: Celery) -> int:
    with Connection("memory://") as conn:
        return int(conn.SimpleQueue(app.conf.task_default_queue).qsize())


def test_inside_the_transaction_the_error_rolls_it_back(
    app: Celery, orders: sqlite3.Connection
) -> None:
    app.conf.reliable_store_url = DOWN
    send_receipt = receipt_task(app)
    with pytest.raises(StoreUnavailable), orders:  # sqlite3: commit, or roll back on error
        orders.execute("INSERT INTO orders VALUES (5)")
        send_receipt.delay(5)  # the last statement of the transaction
    assert orders.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert queued(app) == 0  # nothing half done: no order, no message


def test_after_the_commit_the_error_says_what_was_lost_and_what_to_do(
    app: Celery, orders: sqlite3.Connection
) -> None:
    app.conf.reliable_store_url = DOWN
    send_receipt = receipt_task(app)
    with orders:
        orders.execute("INSERT INTO orders VALUES (6)")
    with pytest.raises(StoreUnavailable) as error:  # what an on_commit callback meets
        send_receipt.delay(6)
    message = str(error.value)
    assert re.search(r"shop\.send_receipt\[[0-9a-f-]{36}\] with key 'receipt:6' was neither "
                     r"published nor recorded", message), message
    assert "unreachable" in message  # the store's own error
    assert "transaction.on_commit" in message and "call it again" in message
    assert "reliable_on_store_down_at_publish = 'publish'" in message
    assert orders.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert queued(app) == 0
    assert runtime(app).counters["publish_refused_store_down"] == 1


def test_a_django_app_is_told_its_own_setting_name() -> None:
    module = types.ModuleType("proj.settings")
    module.CELERY_BROKER_URL = "memory://"  # type: ignore[attr-defined]
    module.CELERY_RELIABLE_STORE_URL = DOWN  # type: ignore[attr-defined]
    app = Celery(f"proj{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.config_from_object(module, namespace="CELERY")
    try:
        with pytest.raises(StoreUnavailable,
                           match="set CELERY_RELIABLE_ON_STORE_DOWN_AT_PUBLISH = 'publish'"):
            receipt_task(app).delay(7)
    finally:
        reset(app)
