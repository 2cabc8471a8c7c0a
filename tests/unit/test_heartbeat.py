"""The heartbeat that renews running tasks' leases (worker/heartbeat.py): it renews them,
tells a lease another worker took over (and only then: never a lease its task let go
of while a renewal was in flight), and lives through a store outage."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable import PermanentError, ReliableTask, StoreUnavailable
from celery_reliable.runtime import runtime
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.stores.model import Lease
from celery_reliable.worker.heartbeat import Heartbeat
from tests.harness import wait_for

FP = "0123456789abcdef"


class Clock:
    """The store's time, moved by the tests."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(app: Celery, clock: Clock) -> MemoryStore:
    memory = runtime(app).store
    assert isinstance(memory, MemoryStore)
    memory.clock = clock
    return memory


@pytest.fixture
def heartbeat(app: Celery) -> Iterator[Heartbeat]:
    """A heartbeat whose thread never beats by itself: the tests call beat()."""
    beats = Heartbeat(runtime(app))
    beats._interval = lambda: 3600.0  # type: ignore[method-assign]
    yield beats
    beats.stop()


def claimed(store: MemoryStore, key: str, owner: str, lease: float) -> Lease:
    assert store.claim(key, FP, f"task-{key}", owner, lease, 3).runs
    return Lease(key, owner, f"task-{key}")


def lease_end(store: MemoryStore, key: str) -> float | None:
    state = store.get_key(key)
    return None if state is None else state.lease_until


def test_a_beat_renews_every_tracked_lease_by_its_own_length(
    store: MemoryStore, clock: Clock, heartbeat: Heartbeat
) -> None:
    short, long = claimed(store, "a", "w:1", 30), claimed(store, "b", "w:2", 60)
    heartbeat.track(short, 30)
    heartbeat.track(long, 60)
    clock.now += 20
    heartbeat.beat()
    assert lease_end(store, "a") == clock.now + 30
    assert lease_end(store, "b") == clock.now + 60
    heartbeat.untrack("w:1")
    clock.now += 20
    heartbeat.beat()  # the finished task's lease is left to lapse
    assert lease_end(store, "a") == clock.now + 10


def test_a_lease_taken_over_is_reported_and_no_longer_renewed(
    app: Celery, store: MemoryStore, clock: Clock, heartbeat: Heartbeat,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease = claimed(store, "a", "w:1", 30)
    heartbeat.track(lease, 30)
    clock.now += 31  # the process stalled past its lease
    assert store.claim("a", FP, "task-a", "w:2", 30, 3).runs  # another worker took over
    with caplog.at_level(logging.ERROR, logger="celery_reliable"):
        heartbeat.beat()
    assert runtime(app).counters["lease_lost"] == 1
    assert "lost its lease on key 'a' while running" in caplog.text
    assert heartbeat._leases == {}
    state = store.get_key("a")
    assert state is not None and state.owner == "w:2"


def test_a_store_outage_is_counted_and_the_next_beat_renews(
    app: Celery, store: MemoryStore, clock: Clock, heartbeat: Heartbeat,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lease = claimed(store, "a", "w:1", 30)
    heartbeat.track(lease, 30)

    def down(*args: Any) -> list[bool]:
        raise StoreUnavailable("store is unreachable")

    monkeypatch.setattr(store, "heartbeat", down)
    heartbeat.beat()  # must not raise: the thread goes on
    assert runtime(app).counters["heartbeat_error"] == 1
    monkeypatch.undo()
    clock.now += 10
    heartbeat.beat()
    assert lease_end(store, "a") == clock.now + 30


def test_a_beat_after_an_outage_still_renews_settling_leases(
    store: MemoryStore, clock: Clock, heartbeat: Heartbeat, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The body finished while the store was down: its task settles the lease and keeps
    # trying to complete; the heartbeat keeps renewing it until the completion lands.
    lease = claimed(store, "a", "w:1", 30)
    heartbeat.track(lease, 30)
    heartbeat.settle("w:1")

    def down(*args: Any) -> list[bool]:
        raise StoreUnavailable("store is unreachable")

    monkeypatch.setattr(store, "heartbeat", down)
    heartbeat.beat()
    monkeypatch.undo()
    clock.now += 10
    heartbeat.beat()
    assert lease_end(store, "a") == clock.now + 30


@pytest.mark.parametrize("outcome", ["completed", "released"])
def test_a_task_letting_go_while_a_renewal_is_in_flight_is_no_alarm(
    app: Celery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    outcome: str,
) -> None:
    """The heartbeat takes its list of leases, then renews outside its lock: the task
    completes (or releases) the key in between, and the renewal finds it gone.  Made
    deterministic: the renewal reaches the store only once the task let go of the key."""
    rt = runtime(app)
    store = rt.store
    real_heartbeat = store.heartbeat
    in_flight = threading.Event()
    beats: list[threading.Thread] = []

    def let_go() -> bool:
        state = store.get_key("job:1")
        return state is None or state.state != "running"

    def renewal_in_flight(leases: Any, seconds: float) -> list[bool]:
        in_flight.set()
        wait_for(let_go, 10, "the task to let go of its key")
        return real_heartbeat(leases, seconds)

    monkeypatch.setattr(store, "heartbeat", renewal_in_flight)

    @app.task(base=ReliableTask, bind=True, idempotency_key="job:{n}", shared=False)
    def job(self: ReliableTask, n: int) -> int:
        beats.append(threading.Thread(target=rt.heartbeat.beat))
        beats[0].start()
        assert in_flight.wait(10), "the heartbeat did not start renewing"
        if outcome == "released":
            raise PermanentError("bad input: the key is released, the task dead-lettered")
        return n

    with caplog.at_level(logging.WARNING, logger="celery_reliable"):
        job.apply((1,))
        beats[0].join(10)
    assert not beats[0].is_alive()
    assert "lost its lease" not in caplog.text
    assert rt.counters["lease_lost"] == 0
    assert rt.heartbeat._leases == {}
    state = store.get_key("job:1")
    assert (state is not None and state.state == "done") if outcome == "completed" else (
        state is None
    )

