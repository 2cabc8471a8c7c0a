"""A rescuer whose store is down says so twice, when it goes down and when it is back,
and counts the sweeps it skipped in between (it logged every interval, forever)."""

from __future__ import annotations

import logging

import pytest
from celery import Celery

from celery_reliable.errors import StoreUnavailable
from celery_reliable.runtime import runtime
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.worker.rescue import Rescuer


def test_store_down_is_logged_at_the_transitions_and_counted_between(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rt = runtime(app)
    rescuer = Rescuer(rt, "test")
    down = True
    acquire = MemoryStore.acquire_sweeper

    def acquire_or_fail(store: MemoryStore, owner: str, ttl: float) -> bool:
        if down:
            raise StoreUnavailable("redis://127.0.0.1:6379/1 is unreachable: refused")
        return acquire(store, owner, ttl)

    monkeypatch.setattr(MemoryStore, "acquire_sweeper", acquire_or_fail)
    caplog.set_level(logging.DEBUG, logger="celery_reliable.rescue")
    for _ in range(20):
        rescuer.run_once()
    down = False
    rescuer.run_once()
    rescuer.run_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("rescue sweeps stopped: the store cannot be used (")
    assert "unreachable" in warnings[0]
    assert warnings[1].startswith("rescue sweeps resumed: the store answers again after ")
    assert warnings[1].endswith("(20 sweeps skipped)")
    assert rt.counters["rescue_error"] == 20
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 19
