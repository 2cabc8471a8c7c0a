"""The sweeping worker forgets expired task states as fast as they expire.

It once pruned one batch of 1,000 tasks a minute: an app finishing more than 17
tasks/s grew its SQL state store without bound.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from celery import Celery

from celery_reliable.runtime import runtime
from celery_reliable.states import State, Transition, state_store
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
    rescuer._prune_states()
    assert [state_store(app).current(t) for t in tasks] == [None] * len(tasks)
    assert runtime(app).counters["state_prune_behind"] == 0
    rescuer._prune_states()  # not due again yet: nothing happens, nothing fails


def test_a_prune_that_runs_out_of_time_stops_and_says_it_is_behind(
    app: Celery, rescuer: Rescuer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(rescue, "PRUNE_BATCH", 100)
    monkeypatch.setattr(rescue, "PRUNE_BUDGET", 0.0)
    tasks = expired_tasks(app, 350)
    with caplog.at_level(logging.WARNING, logger="celery_reliable.rescue"):
        rescuer._prune_states()
    left = sum(state_store(app).current(t) is not None for t in tasks)
    assert left == 250  # one batch, then the budget was spent
    assert runtime(app).counters["state_prune_behind"] == 1
    assert any("faster than they are pruned" in r.getMessage() for r in caplog.records)
