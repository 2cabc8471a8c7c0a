"""A worker's RECEIVED, STARTED and SUCCEEDED written by its claim and completion scripts
(states/inline.py), and the store's rides underneath (stores/base.py ``Ride``): Celery's
own Request and trace on kombu's memory transport, the store and states on real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.runtime import reset, runtime
from celery_reliable.states import State, recorder, state_store
from celery_reliable.states.model import RecordResult, Transition
from celery_reliable.states.stores.redis import RedisStateStore
from celery_reliable.stores.base import Ride
from celery_reliable.worker.claim_ahead import on_task_received
from tests.servers import REDIS
from tests.unit.test_claim_ahead import consumer, received

REDIS_DB = "/14"


@pytest.fixture
def redis_app(prefix: str) -> Iterator[Celery]:
    """The unit ``app`` fixture's shape, with the store (and so the states) on Redis."""
    name = uuid.uuid4().hex[:6]
    app = Celery(f"inline{name}", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = REDIS.require() + REDIS_DB
    app.conf.reliable_key_prefix = prefix
    app.conf.task_default_queue = f"work-{name}"
    yield app
    reset(app)


@pytest.fixture
def receipt(redis_app: Celery) -> Any:
    @redis_app.task(base=ReliableTask, shared=False, idempotency_key="receipt:{order_id}")
    def send_receipt(order_id: int) -> int:
        return order_id

    return send_receipt


@pytest.fixture
def written_by_recorder(redis_app: Celery, monkeypatch: pytest.MonkeyPatch) -> list[State]:
    """The states the recorder's own writes carry (what did not ride on a store call)."""
    states: list[State] = []
    store = state_store(redis_app)
    record = store.record

    def spy(transitions: Sequence[Transition]) -> RecordResult:
        states.extend(t.state for t in transitions)
        return record(transitions)

    monkeypatch.setattr(store, "record", spy)
    return states


def arrived(app: Celery, task: Any, *args: Any) -> Any:
    """A published message as the worker receives it.  The producer's PENDING is written
    first, as it is when the producer is another process: a transition of the task
    still buffered in this process would keep the worker's from riding."""
    request = received(app, task, *args)
    recorder(app).flush(force=True)
    return request


def story(app: Celery, task_id: str) -> list[Transition]:
    """The task's timeline once every answer is read and the recorder has written."""
    runtime(app).store.drain()
    recorder(app).flush(force=True)
    return state_store(app).timeline(task_id)


def timeline(app: Celery, task_id: str) -> list[State]:
    return [t.state for t in story(app, task_id)]


@pytest.mark.parametrize("ahead", [True, False], ids=["solo, claimed ahead", "in the body"])
def test_the_claim_and_the_completion_write_the_workers_states(
    redis_app: Celery, receipt: Any, written_by_recorder: list[State], ahead: bool
) -> None:
    runtime(redis_app).claim_ahead.enabled = ahead
    request = arrived(redis_app, receipt, 1)
    on_task_received(sender=consumer(), request=request)
    request.execute()
    assert timeline(redis_app, request.id) == [
        State.PENDING, State.RECEIVED, State.STARTED, State.SUCCEEDED
    ]
    assert written_by_recorder == [State.PENDING]  # the producer's: no store call to ride
    counters = recorder(redis_app).counters
    assert counters["written"] == 4 and counters["write_errors"] == 0


def test_a_taken_over_claim_records_the_lost_attempt_itself(
    redis_app: Celery, receipt: Any, written_by_recorder: list[State]
) -> None:
    request = arrived(redis_app, receipt, 2)
    store = runtime(redis_app).store
    # a worker that died holding the key: its lease lapsed
    assert store.claim("receipt:2", request.request_dict["reliable_fp"], request.id, "dead:1",
                       0.001, 3).runs
    time.sleep(0.01)
    request.execute()
    told = story(redis_app, request.id)
    assert [t.state for t in told] == [
        State.PENDING, State.RECEIVED, State.STARTED, State.SUCCEEDED
    ]
    assert told[2].detail == {"taken_over": True, "lost": 1}
    # the claim answered "taken over": RECEIVED and STARTED did not ride on it
    assert written_by_recorder[:3] == [State.PENDING, State.RECEIVED, State.STARTED]


def test_a_rider_that_fails_loses_no_state_and_no_task(
    redis_app: Celery, receipt: Any, written_by_recorder: list[State],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ride = RedisStateStore.ride

    def broken(self: RedisStateStore, transitions: Sequence[Transition], when: str = "") -> Ride:
        good = ride(self, transitions, when)
        return Ride(good.lua, good.key, [good.args[0], "not json"], good.when)

    monkeypatch.setattr(RedisStateStore, "ride", broken)
    runtime(redis_app).claim_ahead.enabled = True
    request = arrived(redis_app, receipt, 3)
    on_task_received(sender=consumer(), request=request)
    request.execute()
    assert timeline(redis_app, request.id) == [
        State.PENDING, State.RECEIVED, State.STARTED, State.SUCCEEDED
    ]
    done = runtime(redis_app).store.get_key("receipt:3")
    assert done is not None and done.state == "done" and done.task_id == request.id
    # The claim's ride failed and was counted, and its transitions went to the recorder;
    # SUCCEEDED then did not ride (written before them, it would have been refused).
    assert recorder(redis_app).counters["write_errors"] == 1
    assert written_by_recorder == [State.PENDING, State.RECEIVED, State.STARTED,
                                   State.SUCCEEDED]


@pytest.mark.parametrize(
    "conf, why",
    [
        ({"reliable_state_enabled": False}, "recording is off"),
        ({"reliable_state_store_url": REDIS.url + "/13"}, "the states live elsewhere"),
        ({"reliable_store_url": "memory://"}, "a store that carries no rides"),
    ],
)
def test_no_rides_where_the_states_cannot_ride(
    redis_app: Celery, conf: dict[str, Any], why: str
) -> None:
    redis_app.conf.update(conf)
    assert runtime(redis_app).inline_states is None, why
