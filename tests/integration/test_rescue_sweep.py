"""Two rescuers at once republish each lost record once per expiry (count publishes)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable.records import encode
from celery_reliable.runtime import reset, runtime
from celery_reliable.stores import Store
from celery_reliable.worker.rescue import Rescuer
from tests.conftest import drop_tables, make_store

N = 200


@pytest.fixture(params=["redis", "postgresql", "sqlite"])
def seeded(
    request: pytest.FixtureRequest, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Celery, Counter[str]]]:
    store: Store = make_store(request.param, prefix, tmp_path_factory)
    app = Celery(f"rescue{prefix}", broker="memory://", set_as_current=False)
    app.conf.update(
        reliable_store_url=store.url, reliable_key_prefix=prefix, reliable_rescue_after=60,
        reliable_rescue_batch=37,
    )
    published: Counter[str] = Counter()
    lock = threading.Lock()

    def send_task(name: str, args: Any, kwargs: Any, task_id: str, **options: Any) -> None:
        with lock:
            published[task_id] += 1

    app.send_task = send_task  # type: ignore[method-assign]
    for n in range(N):
        record, _ = encode(
            app, name="shop.lost", task_id=str(uuid.uuid4()), key=f"lost:{n}", fingerprint="f",
            args=[n], kwargs={}, options={"queue": "celery"},
        )
        store.publish(record, 0.001, dedupe=True)
    time.sleep(0.05)  # every deadline has passed
    yield app, published
    drop_tables(store)
    store.close()
    reset(app)


def _race(*sweeps: Any) -> None:
    threads = [threading.Thread(target=sweep) for sweep in sweeps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _drain(rescuer: Rescuer, use_lease: bool) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if use_lease:
            rescuer.sweep_once()
        else:
            for record in rescuer.runtime.store.sweep(rescuer.policy):
                rescuer.handle(record)


@pytest.mark.parametrize("use_lease", [True, False], ids=["sweeper-lease", "no-lease"])
def test_each_lost_record_is_republished_once(
    seeded: tuple[Celery, Counter[str]], use_lease: bool
) -> None:
    app, published = seeded
    first, second = Rescuer(runtime(app), "w1"), Rescuer(runtime(app), "w2")
    _race(lambda: _drain(first, use_lease), lambda: _drain(second, use_lease))
    assert len(published) == N
    assert set(published.values()) == {1}, "a record was republished twice for one expiry"
    assert runtime(app).store.pending_count() == N  # still owed a run: deadlines moved on
