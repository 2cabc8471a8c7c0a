"""The recorder: batches, never raises, counts what goes wrong, survives a fork."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_reliable.errors import StoreUnavailable
from celery_reliable.states import Recorder, RecordResult, State, Transition, queries
from celery_reliable.states import recorder as app_recorder
from celery_reliable.states import reset as reset_states
from celery_reliable.states.stores import open_state_store
from celery_reliable.states.stores.memory import MemoryStateStore
from tests.unit.test_store_contract import wait_until

S = State
NAME = "shop.send_receipt"


class Flaky(MemoryStateStore):
    """A memory store that counts its calls and fails while told to."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.fail: Exception | None = None
        self.fail_after_write = False

    def record(self, transitions: Sequence[Transition]) -> RecordResult:
        self.calls.append(len(transitions))
        if self.fail is not None and not self.fail_after_write:
            raise self.fail
        result = super().record(transitions)
        if self.fail is not None:
            raise self.fail  # written, but the caller cannot know (a timeout after COMMIT)
        return result


@pytest.fixture
def store() -> Flaky:
    return Flaky()


@pytest.fixture
def make() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def build(store: Flaky, **options: Any) -> Recorder:
        options.setdefault("interval", 3600.0)  # the tests flush by hand unless they say so
        recorder = Recorder(store, **options)
        made.append(recorder)
        return recorder

    yield build
    for recorder in made:
        recorder.close()


def lifecycle(recorder: Recorder, task_id: str, states: Sequence[State]) -> None:
    for state in states:
        recorder.transition(task_id, NAME, "receipt:1", state, worker="w1@host")


def test_async_transitions_are_buffered_and_written_in_one_batch(
    store: Flaky, make: Callable[..., Recorder]
) -> None:
    recorder = make(store, batch_size=100)
    for i in range(20):
        lifecycle(recorder, f"t{i}", [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED])
    assert store.calls == []  # nothing on the caller's path
    assert recorder.pending() == 80
    recorder.flush()
    assert store.calls == [80]
    assert recorder.counters["written"] == 80
    assert [t.state for t in store.timeline("t7")] == [S.PENDING, S.RECEIVED, S.STARTED,
                                                        S.SUCCEEDED]


def test_the_flush_thread_writes_every_interval_in_batches(
    store: Flaky, make: Callable[..., Recorder]
) -> None:
    recorder = make(store, interval=0.05, batch_size=30)
    for i in range(25):
        lifecycle(recorder, f"t{i}", [S.PENDING, S.RECEIVED, S.STARTED])
    wait_until(lambda: recorder.counters["written"] == 75)
    assert sum(store.calls) == 75
    assert max(store.calls) <= 30
    assert len(store.calls) < 75


def test_sync_mode_writes_before_returning(store: Flaky, make: Callable[..., Recorder]) -> None:
    recorder = make(store, flush="sync")
    recorder.transition("t1", NAME, "k", S.PENDING)
    assert [t.state for t in store.timeline("t1")] == [S.PENDING]
    recorder.transition("t1", NAME, "k", S.RECEIVED, error=ValueError("x" * 5000),
                        detail={"why": "test"})
    last = store.timeline("t1")[-1]
    assert (last.state, last.error_type, last.detail) == (S.RECEIVED, "ValueError",
                                                          {"why": "test"})
    assert last.error_message is not None and len(last.error_message) == 2000


def test_several_states_at_once_keep_their_order_and_the_error_goes_with_the_last(
    store: Flaky, make: Callable[..., Recorder]
) -> None:
    recorder = make(store, buffer_size=3)
    recorder.transitions("t1", NAME, "k", (S.PENDING, S.RECEIVED), worker="w1@host",
                         error=ValueError("late"), detail={"why": "test"})
    recorder.transitions("t2", NAME, "k", (S.PENDING, S.RECEIVED))  # one over the bound
    recorder.flush()
    first, second = store.timeline("t1")
    assert (first.state, first.error_type, first.detail) == (S.PENDING, None, None)
    assert (second.state, second.error_type, second.detail) == (S.RECEIVED, "ValueError",
                                                                {"why": "test"})
    assert first.at < second.at and second.worker == "w1@host"
    assert [t.state for t in store.timeline("t2")] == [S.PENDING]
    assert recorder.counters["dropped_on_overflow"] == 1


def test_a_failing_store_is_logged_and_counted_never_raised_and_catches_up(
    store: Flaky, make: Callable[..., Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    recorder = make(store, flush="sync")
    store.fail = StoreUnavailable("Redis state store is unreachable")
    with caplog.at_level(logging.ERROR, logger="celery_reliable.states"):
        lifecycle(recorder, "t1", [S.PENDING, S.RECEIVED])  # must not raise
    assert recorder.counters["write_errors"] == 1  # the second call waits for the backoff
    assert recorder.pending() == 2
    assert "could not record task states (Redis state store is unreachable)" in caplog.text
    store.fail = None
    recorder.flush(force=True)
    assert [t.state for t in store.timeline("t1")] == [S.PENDING, S.RECEIVED]
    assert recorder.counters["written"] == 2
    assert recorder.pending() == 0


def test_a_batch_written_before_an_ambiguous_failure_is_not_written_twice(
    store: Flaky, make: Callable[..., Recorder]
) -> None:
    recorder = make(store)
    lifecycle(recorder, "t1", [S.PENDING, S.RECEIVED, S.STARTED])
    store.fail, store.fail_after_write = StoreUnavailable("timed out"), True
    recorder.flush()
    assert recorder.counters["write_errors"] == 1
    store.fail = None
    recorder.flush(force=True)
    assert recorder.counters["duplicates"] == 3
    assert [t.state for t in store.timeline("t1")] == [S.PENDING, S.RECEIVED, S.STARTED]


def test_an_unexpected_error_drops_the_batch_and_is_logged_with_its_traceback(
    store: Flaky, make: Callable[..., Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    recorder = make(store)
    lifecycle(recorder, "t1", [S.PENDING])
    store.fail = RuntimeError("a bug in a driver")
    with caplog.at_level(logging.ERROR, logger="celery_reliable.states"):
        recorder.flush()
    assert recorder.counters["dropped_on_error"] == 1
    assert recorder.pending() == 0
    assert "a bug in a driver" in caplog.text
    assert caplog.records[-1].exc_info is not None


def test_the_buffer_is_bounded_while_the_store_is_down(
    store: Flaky, make: Callable[..., Recorder]
) -> None:
    recorder = make(store, buffer_size=5)
    store.fail = StoreUnavailable("down")
    for i in range(8):
        recorder.transition(f"t{i}", NAME, "k", S.PENDING)
    recorder.flush()
    assert recorder.pending() == 5
    assert recorder.counters["dropped_on_overflow"] == 3
    store.fail = None
    recorder.flush(force=True)
    assert {t.task_id for t in store.timeline_by_key("k")} == {f"t{i}" for i in range(5)}


def test_what_is_reported_while_a_failed_batch_waits_goes_behind_it_and_within_the_bound(
    store: Flaky, make: Callable[..., Recorder]
) -> None:
    recorder = make(store, buffer_size=4, batch_size=2)
    store.fail = StoreUnavailable("down")
    lifecycle(recorder, "t1", [S.PENDING, S.RECEIVED, S.STARTED])
    recorder.flush()  # the first batch fails and goes back to the front
    recorder.transitions("t1", NAME, "receipt:1", (S.SUCCEEDED,), worker="w1@host")
    recorder.transition("t2", NAME, "receipt:1", S.PENDING)  # one over the bound
    assert recorder.pending() == 4
    assert recorder.counters["dropped_on_overflow"] == 1
    store.fail = None
    recorder.flush(force=True)
    assert [t.state for t in store.timeline("t1")] == [S.PENDING, S.RECEIVED, S.STARTED,
                                                        S.SUCCEEDED]
    assert store.timeline("t2") == []
    assert recorder.pending() == 0 and recorder.counters["written"] == 4


def test_illegal_transitions_are_logged_at_error_and_counted(
    store: Flaky, make: Callable[..., Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    recorder = make(store)
    lifecycle(recorder, "t1", [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED, S.STARTED])
    recorder.transition("t2", NAME, "k", "NOT_A_STATE")
    with caplog.at_level(logging.ERROR, logger="celery_reliable.states"):
        recorder.flush()
    assert recorder.counters["rejected_illegal"] == 2
    assert recorder.counters["written"] == 4
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("illegal state transition SUCCEEDED -> STARTED for shop.send_receipt[t1]" in m
               for m in messages)
    assert len(store.timeline("t1")) == 4


def test_transitions_of_one_process_keep_their_order_even_at_the_same_instant(
    store: Flaky, make: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # a clock that does not move
    recorder = make(store)
    lifecycle(recorder, "t1", [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED])
    recorder.flush()
    assert [t.state for t in store.timeline("t1")] == [S.PENDING, S.RECEIVED, S.STARTED,
                                                        S.SUCCEEDED]
    assert recorder.counters["rejected_illegal"] == 0


def test_a_forked_child_neither_writes_the_parents_buffer_nor_shares_its_thread(
    tmp_path: Path, make: Callable[..., Recorder]
) -> None:
    store = open_state_store(f"sqlite:///{tmp_path / 'states.db'}", prefix="fork")
    store.migrate()
    recorder = Recorder(store, interval=3600.0)
    lifecycle(recorder, "parent", [S.PENDING, S.RECEIVED])  # buffered, thread started
    parent_thread = recorder._thread
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 10
        try:
            code = 11 if recorder.pending() else 12 if recorder._thread is not None else 0
            if not code:
                recorder.interval = 0.02
                lifecycle(recorder, "child", [S.PENDING, S.RECEIVED, S.STARTED])
                deadline = time.monotonic() + 10
                while recorder.counters["written"] < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                alive = recorder._thread is not None and recorder._thread.is_alive()
                code = 0 if recorder.counters["written"] == 3 and alive else 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert recorder._thread is parent_thread
    assert recorder.pending() == 2
    recorder.close()
    assert [t.state for t in store.timeline("parent")] == [S.PENDING, S.RECEIVED]
    assert [t.state for t in store.timeline("child")] == [S.PENDING, S.RECEIVED, S.STARTED]
    store.close()


def test_the_apps_recorder_and_queries_share_one_store() -> None:
    app = Celery("states_test", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    app.conf.reliable_state_flush = "sync"
    try:
        recorder = app_recorder(app)
        assert recorder is app_recorder(app)
        assert recorder.mode == "sync"
        recorder.transition("t1", NAME, "k", S.PENDING)
        assert [t.state for t in queries.timeline(app, task_id="t1")] == [S.PENDING]
    finally:
        reset_states(app)


def test_recording_can_be_switched_off() -> None:
    app = Celery("states_off", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    app.conf.reliable_state_enabled = False
    try:
        app_recorder(app).transition("t1", NAME, "k", S.PENDING)
        app_recorder(app).flush()
        assert queries.timeline(app, task_id="t1") == []
    finally:
        reset_states(app)


def test_close_writes_what_is_left(store: Flaky) -> None:
    recorder = Recorder(store, interval=3600.0)
    lifecycle(recorder, "t1", [S.PENDING])
    thread = recorder._thread
    recorder.close()
    assert thread is not None and not thread.is_alive()
    assert [t.state for t in store.timeline("t1")] == [S.PENDING]
