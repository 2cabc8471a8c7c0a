"""The state store contract (G5), run against every backend.

memory, fakeredis and real Redis, SQLite, PostgreSQL and MariaDB must all:
keep a task's timeline in order with its attempts, find tasks by key, list
stuck tasks oldest first, count transitions, prune, refuse illegal
transitions without writing them, and not write a retried batch twice.
Times are given explicitly (in the past), so nothing here sleeps.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_reliable.states import RecordResult, State, StateStore, Transition
from celery_reliable.states.stores import state_store_on
from celery_reliable.states.stores.redis import RedisStateStore
from celery_reliable.stores import open_store
from tests.conftest import STORE_KINDS, drop_tables, make_store

S = State
NAME = "shop.send_receipt"


@pytest.fixture(params=STORE_KINDS)
def states(
    request: pytest.FixtureRequest, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StateStore]:
    store = make_store(request.param, prefix, tmp_path_factory)
    state_store = state_store_on(store, retention=3600)
    yield state_store
    if isinstance(state_store, RedisStateStore):
        keys = list(state_store.client.scan_iter(match=f"{{{prefix}:st:*", count=10_000))
        if keys:
            state_store.client.delete(*keys)
    drop_tables(store)
    store.close()


def tid() -> str:
    return str(uuid.uuid4())


def tr(task_id: str, state: State, at: float, attempt: int = 1, key: str = "receipt:42",
       name: str = NAME, **extra: Any) -> Transition:
    return Transition(task_id=task_id, name=name, key=key, state=state, attempt=attempt,
                      at=at, **extra)


def path(task_id: str, states: list[State], start: float, key: str = "receipt:42",
         name: str = NAME) -> list[Transition]:
    """One transition per second from ``start``; RECEIVED after a retry starts a new attempt."""
    out, attempt = [], 1
    for i, state in enumerate(states):
        if state is S.RECEIVED and i and states[i - 1] is S.RETRY_SCHEDULED:
            attempt += 1
        out.append(tr(task_id, state, start + i, attempt, key=key, name=name))
    return out


RETRIED_TWICE = [
    S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED,
    S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED,
    S.RECEIVED, S.STARTED, S.SUCCEEDED,
]


def test_timeline_of_a_task_retried_twice_then_succeeding(states: StateStore) -> None:
    task = tid()
    now = time.time()
    steps = path(task, RETRIED_TWICE, now - 60)
    failure = {"error_type": "ConnectionError", "error_message": "mailer down",
               "detail": {"countdown": 1.5}, "worker": "w1@host"}
    steps[3] = tr(task, S.RETRY_SCHEDULED, now - 57, 1, **failure)
    # Three flushes, as a recorder would send them.
    for batch in (steps[:3], steps[3:7], steps[7:]):
        result = states.record(batch)
        assert result.written == len(batch)
        assert not result.rejected
    timeline = states.timeline(task)
    assert [t.state for t in timeline] == RETRIED_TWICE
    assert [t.attempt for t in timeline] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [t.at for t in timeline] == pytest.approx([s.at for s in steps], abs=1e-5)
    retry = timeline[3]
    assert (retry.error_type, retry.error_message) == ("ConnectionError", "mailer down")
    assert retry.detail == {"countdown": 1.5}
    assert retry.worker == "w1@host"
    assert {t.name for t in timeline} == {NAME}
    assert {t.key for t in timeline} == {"receipt:42"}
    current = states.current(task)
    assert current is not None
    assert (current.state, current.attempt) == (S.SUCCEEDED, 3)
    assert current.since == pytest.approx(steps[-1].at, abs=1e-5)
    assert states.timeline(tid()) == []
    assert states.current(tid()) is None


def test_timeline_by_key_merges_the_tasks_of_a_key(states: StateStore) -> None:
    first, duplicate, other = tid(), tid(), tid()
    now = time.time()
    states.record([
        *path(first, [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED], now - 30, key="k:1"),
        *path(duplicate, [S.PENDING, S.DEDUPLICATED], now - 28.5, key="k:1"),
        *path(other, [S.PENDING, S.RECEIVED], now - 29.5, key="k:2"),
    ])
    merged = states.timeline_by_key("k:1")
    assert [(t.task_id, t.state) for t in merged] == [
        (first, S.PENDING), (first, S.RECEIVED), (duplicate, S.PENDING), (first, S.STARTED),
        (duplicate, S.DEDUPLICATED), (first, S.SUCCEEDED),
    ]
    assert [t.task_id for t in states.timeline_by_key("k:2")] == [other, other]
    assert states.timeline_by_key("k:3") == []


def test_stuck_after_the_threshold_until_the_task_completes(states: StateStore) -> None:
    running, waiting, fresh = tid(), tid(), tid()
    now = time.time()
    states.record([
        *path(running, [S.PENDING, S.RECEIVED, S.STARTED], now - 100),
        *path(waiting, [S.PENDING], now - 50),
        *path(fresh, [S.PENDING, S.RECEIVED, S.STARTED], now - 3),
    ])
    assert [c.task_id for c in states.stuck(30)] == [running, waiting]  # oldest first
    assert [c.task_id for c in states.stuck(30, limit=1)] == [running]
    assert [c.task_id for c in states.stuck(30, states={S.PENDING})] == [waiting]
    assert [c.task_id for c in states.stuck(75)] == [running]
    assert states.stuck(30, states={S.RETRY_SCHEDULED}) == []
    stuck = states.stuck(30, states={S.STARTED})[0]
    assert (stuck.state, stuck.name, stuck.key) == (S.STARTED, NAME, "receipt:42")
    assert stuck.age(now) == pytest.approx(98, abs=0.01)
    assert {c.task_id for c in states.stuck(1)} == {running, waiting, fresh}

    states.record([tr(running, S.SUCCEEDED, now - 1)])
    assert [c.task_id for c in states.stuck(30)] == [waiting]
    # Terminal states are never stuck, whatever is asked for.
    assert states.stuck(0, states={S.SUCCEEDED}) == []


def test_stats_count_transitions_per_name_and_state(states: StateStore) -> None:
    now = time.time()
    batch = []
    for _ in range(3):
        batch += path(tid(), [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED], now - 20)
    batch += path(tid(), [S.PENDING, S.RECEIVED, S.STARTED, S.FAILED, S.DEAD_LETTERED], now - 20)
    batch += path(tid(), [S.PENDING, S.RECEIVED, S.DEFERRED], now - 20, name="shop.refund")
    batch += path(tid(), [S.PENDING, S.RECEIVED], now - 7200, name="shop.refund")  # too old
    states.record(batch)
    stats = states.stats(600)
    assert stats.counts[NAME] == {
        S.PENDING: 4, S.RECEIVED: 4, S.STARTED: 4, S.SUCCEEDED: 3, S.FAILED: 1,
        S.DEAD_LETTERED: 1,
    }
    assert stats.counts["shop.refund"] == {S.PENDING: 1, S.RECEIVED: 1, S.DEFERRED: 1}
    assert stats.totals()[S.PENDING] == 5
    assert stats.failure_rate() == pytest.approx(0.25)
    assert stats.failure_rate("shop.refund") is None
    assert now - 660 <= stats.since <= now - 600
    assert states.stats(3 * 3600).counts["shop.refund"][S.PENDING] == 2


def test_an_illegal_transition_is_rejected_and_not_written(states: StateStore) -> None:
    done, dead, fresh = tid(), tid(), tid()
    now = time.time()
    states.record(path(done, [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED], now - 40))
    states.record(path(dead, [S.PENDING, S.RECEIVED, S.STARTED, S.FAILED, S.DEAD_LETTERED],
                       now - 40))
    result = states.record([
        tr(done, S.STARTED, now - 5),  # SUCCEEDED -> STARTED
        tr(dead, S.SUCCEEDED, now - 5),  # DEAD_LETTERED -> SUCCEEDED
        # A PENDING opens its attempt, whatever its time: the STARTED before it in
        # time is judged after it (PENDING -> STARTED), and so is the SUCCEEDED.
        tr(fresh, S.STARTED, now - 5),
        tr(fresh, S.PENDING, now - 4),  # legal: written
        tr(fresh, S.SUCCEEDED, now - 3),
        tr(fresh, S.RECEIVED, now - 2),  # legal
    ])
    assert result.written == 2
    assert [(r.transition.task_id, r.previous, r.transition.state) for r in result.rejected] == [
        (done, S.SUCCEEDED, S.STARTED), (dead, S.DEAD_LETTERED, S.SUCCEEDED),
        (fresh, S.PENDING, S.STARTED), (fresh, S.PENDING, S.SUCCEEDED),
    ]
    nothing = tid()  # nothing recorded -> STARTED
    assert [r.previous for r in states.record([tr(nothing, S.STARTED, now - 1)]).rejected] == [
        None]
    assert [t.state for t in states.timeline(done)][-1] is S.SUCCEEDED
    assert len(states.timeline(dead)) == 5
    assert [t.state for t in states.timeline(fresh)] == [S.PENDING, S.RECEIVED]
    current = states.current(done)
    assert current is not None and current.state is S.SUCCEEDED
    assert states.stats(600).counts[NAME][S.STARTED] == 2  # the rejected ones are not counted


def test_a_batch_sent_again_is_not_written_twice(states: StateStore) -> None:
    task = tid()
    batch = path(task, [S.PENDING, S.RECEIVED, S.STARTED], time.time() - 10)
    assert states.record(batch).written == 3
    again = states.record(batch)
    assert (again.written, again.duplicates, again.rejected) == (0, 3, ())
    assert len(states.timeline(task)) == 3
    assert states.stats(600).counts[NAME][S.STARTED] == 1


def test_a_late_transition_is_fitted_in_by_its_time(states: StateStore) -> None:
    """A producer's PENDING flushed after the worker's RECEIVED/STARTED is not a bug."""
    task = tid()
    now = time.time()
    pending, received, started = path(task, [S.PENDING, S.RECEIVED, S.STARTED], now - 10)
    assert states.record([received, started]).written == 2
    assert states.record([pending]).written == 1
    assert [t.state for t in states.timeline(task)] == [S.PENDING, S.RECEIVED, S.STARTED]
    current = states.current(task)
    assert current is not None and current.state is S.STARTED
    # Late but illegal where it falls: after PENDING, before RECEIVED.
    result = states.record([tr(task, S.SUCCEEDED, now - 9.5)])
    assert [(r.previous, r.following) for r in result.rejected] == [(S.PENDING, S.RECEIVED)]
    assert len(states.timeline(task)) == 3


def test_prune_forgets_old_tasks_in_bounded_batches(states: StateStore) -> None:
    """Unfinished ones on every backend (finished ones expire by themselves on Redis:
    see the Redis test below)."""
    now = time.time()
    old = [tid() for _ in range(3)]
    recent = tid()
    for i, task in enumerate(old):
        states.record(path(task, [S.PENDING, S.RECEIVED, S.STARTED], now - 1000 - i,
                           key="k:old"))
    states.record(path(recent, [S.PENDING, S.RECEIVED], now - 1000, key="k:old"))
    states.record([tr(recent, S.STARTED, now - 5, key="k:old")])
    assert states.prune(now - 500, limit=2) == 2
    assert states.prune(now - 500, limit=2) == 1
    assert states.prune(now - 500, limit=2) == 0
    for task in old:
        assert states.timeline(task) == []
        assert states.current(task) is None
    assert {t.task_id for t in states.timeline_by_key("k:old")} == {recent}
    assert len(states.timeline(recent)) == 3
    assert [c.task_id for c in states.stuck(1)] == [recent]


def test_redis_records_a_batch_over_shards_a_round_trip_per_script_with_hash_tags(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fakeredis
    import redis

    from celery_reliable.stores.redis import RedisStore

    store = RedisStore("redis://fake", prefix=prefix, shards=3,
                       client=fakeredis.FakeRedis(decode_responses=True))
    states = RedisStateStore(store, retention=3600)
    now = time.time()
    states.record(path(tid(), [S.PENDING], now - 10))  # loads the script (NOSCRIPT once)
    round_trips: list[str] = []
    connection = states.client.connection_pool.connection_class
    send, execute, command = (connection.send_packed_command, redis.client.Pipeline.execute,
                              states.client.execute_command)

    def counted_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append("script")
        return send(self, *args, **kwargs)

    def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append("pipeline")
        return execute(self, *args, **kwargs)

    def counted_command(*args: Any, **kwargs: Any) -> Any:
        round_trips.append(str(args[0]))
        return command(*args, **kwargs)

    monkeypatch.setattr(connection, "send_packed_command", counted_send)
    monkeypatch.setattr(redis.client.Pipeline, "execute", counted_execute)
    monkeypatch.setattr(states.client, "execute_command", counted_command)
    tasks = [tid() for _ in range(12)]
    while len({states._tag(task) for task in tasks}) < 3:  # random ids may miss a shard
        tasks = [tid() for _ in range(12)]
    batch = [t for task in tasks
             for t in path(task, [S.PENDING, S.RECEIVED, S.STARTED], now - 5, key="k:shared")]
    assert states.record(batch).written == 36
    assert round_trips == ["script"] * 3  # a script per shard (under SCRIPT_ROWS each)

    tags = {key.split("}")[0] + "}" for key in states.client.scan_iter(match=f"{{{prefix}*")}
    assert tags == {f"{{{prefix}:st:{shard}}}" for shard in range(3)}  # Cluster: one slot each
    assert {t.task_id for t in states.timeline_by_key("k:shared")} == set(tasks)
    assert len(states.stuck(1, limit=50)) == 13

    states.client.script_flush()  # a restarted server: the script is loaded again, once
    monkeypatch.undo()
    assert states.record([tr(tasks[0], S.SUCCEEDED, now - 1, key="k:shared")]).written == 1


def test_a_large_batch_goes_in_short_scripts_keeping_each_task_in_one(
    states: StateStore,
) -> None:
    from celery_reliable.states.stores.redis import SCRIPT_ROWS, _chunks

    now = time.time()
    tasks = [tid() for _ in range(40)]
    batch = [t for task in tasks
             for t in path(task, [S.PENDING, S.RECEIVED, S.STARTED], now - 10, key="k:big")]
    chunks = _chunks(batch, lambda task_id: "one shard")
    assert len(chunks) > 1 and all(len(rows) <= SCRIPT_ROWS + 2 for _, rows in chunks)
    assert sorted(i for _, rows in chunks for i in rows) == list(range(len(batch)))
    for _, rows in chunks:  # a task's consecutive transitions are never split
        first, last = batch[rows[0]].task_id, batch[rows[-1]].task_id
        assert rows[0] == 0 or batch[rows[0] - 1].task_id != first
        assert rows[-1] == len(batch) - 1 or batch[rows[-1] + 1].task_id != last
    result = states.record(batch)
    assert (result.written, result.duplicates, result.rejected) == (120, 0, ())
    assert [t.state for t in states.timeline(tasks[-1])] == [S.PENDING, S.RECEIVED, S.STARTED]
    assert len(states.stuck(1, limit=100)) == 40


def test_concurrent_first_transitions_of_the_same_tasks_are_all_recorded(
    states: StateStore,
) -> None:
    """A producer's PENDING and a worker's RECEIVED, flushed at the same moment by two
    processes, for tasks nothing is recorded of yet: both land, in time order."""
    now = time.time()
    tasks = sorted(tid() for _ in range(40))
    barrier = threading.Barrier(2)
    results: dict[State, RecordResult] = {}

    def flush(state: State, at: float) -> None:
        batch = [tr(task, state, at) for task in tasks]
        barrier.wait(timeout=10)
        results[state] = states.record(batch)

    threads = [threading.Thread(target=flush, args=(S.PENDING, now - 2)),
               threading.Thread(target=flush, args=(S.RECEIVED, now - 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [(r.written, r.rejected) for r in results.values()] == [(40, ())] * 2
    for task in tasks:
        assert [t.state for t in states.timeline(task)] == [S.PENDING, S.RECEIVED]
        current = states.current(task)
        assert current is not None and current.state is S.RECEIVED


def test_redis_forgets_tasks_by_itself_and_prune_clears_what_they_left_in_indexes(
    prefix: str,
) -> None:
    import fakeredis

    from celery_reliable.stores.redis import RedisStore

    store = RedisStore("redis://fake", prefix=prefix,
                       client=fakeredis.FakeRedis(decode_responses=True))
    states = RedisStateStore(store, retention=600)
    task, now = tid(), time.time()
    states.record(path(task, [S.PENDING, S.RECEIVED, S.STARTED], now - 100))
    base = f"{{{prefix}:st:0}}:"
    for name in (f"c:{task}", f"h:{task}", "k:receipt:42", f"n:{int((now - 100) // 60)}"):
        assert 590_000 < states.client.pttl(base + name) <= 600_000, name
    states.client.delete(f"{base}c:{task}", f"{base}h:{task}")  # what the TTL does
    assert states.stuck(1) == []  # the index entry left behind is not shown
    assert states.client.zcard(f"{base}i:STARTED") == 1
    assert states.prune(now - 50) == 1
    assert states.client.zcard(f"{base}i:STARTED") == 0

    # A finished task is in no state index: its keys expire, nothing is left to prune.
    done = tid()
    states.record(path(done, [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED], now - 100))
    for name in (f"c:{done}", f"h:{done}"):
        assert 590_000 < states.client.pttl(base + name) <= 600_000, name
    assert [k for k in states.client.scan_iter(match=f"{base}i:*")
            if states.client.zscore(k, done) is not None] == []
    assert states.prune(now - 50) == 0


def test_redis_forgets_a_keys_expired_tasks_when_a_new_one_joins_it(prefix: str) -> None:
    """The by-key index grows only when a task joins a key; that is when the tasks of
    the key whose retention ran out leave it (their own keys expired by themselves)."""
    import fakeredis

    from celery_reliable.stores.redis import RedisStore

    store = RedisStore("redis://fake", prefix=prefix,
                       client=fakeredis.FakeRedis(decode_responses=True))
    states = RedisStateStore(store, retention=600)
    by_key = f"{{{prefix}:st:0}}:k:receipt:42"
    old, running, new, now = tid(), tid(), tid(), time.time()
    states.record(path(old, [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED], now - 900))
    states.record(path(running, [S.PENDING], now - 700))
    states.record([tr(running, S.RECEIVED, now - 100)])  # its score moves on: it stays
    states.record(path(new, [S.PENDING, S.RECEIVED], now))
    assert set(states.client.zrange(by_key, 0, -1)) == {running, new}


def test_transitions_a_microsecond_apart_keep_their_order(states: StateStore) -> None:
    """What a recorder makes of a burst: whole microseconds, strictly increasing."""
    task, start_us = tid(), int((time.time() - 10) * 1_000_000)
    steps = [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.RECEIVED, S.STARTED,
             S.SUCCEEDED]
    # The first id sorts last: the order must come from the times, never from a tie.
    batch = [tr(task, state, (start_us + i) / 1_000_000, id="f" * 32 if i == 0 else "")
             for i, state in enumerate(steps)]
    assert states.record(batch).written == len(steps)
    assert [t.state for t in states.timeline(task)] == steps


def test_every_field_of_a_transition_reads_back_as_written(states: StateStore) -> None:
    """Separators, quotes and other alphabets in messages, details and worker names; ids
    not made by ``new_id``; attempts on two workers and a transition without one; a
    late one written last."""
    task, now = tid(), time.time()
    first, other = "celery@a|b \"c\"", "celery@" + "x" * 70
    steps = [
        tr(task, S.PENDING, now - 10, id="custom-id-1"),
        tr(task, S.RECEIVED, now - 9, worker=first),
        tr(task, S.STARTED, now - 8.5, worker=first),
        tr(task, S.RETRY_SCHEDULED, now - 8, worker=first, error_type="ValueError",
           error_message='bad | "quoted" \\ 数据 ✓', detail={"countdown": 1.5, "note": "x|y"}),
        tr(task, S.RECEIVED, now - 7, attempt=2, worker=other),
        tr(task, S.STARTED, now - 6, attempt=2),
    ]
    # time-first like new_id's, but in capitals: kept as given
    steps[-1].id = f"{round(steps[-1].at * 1e6):014x}" + "ABCDEF0123456789AB"
    assert states.record(steps[1:]).written == 5
    assert states.record(steps[:1]).written == 1  # late: fitted in before RECEIVED
    fields = ("task_id", "name", "key", "state", "attempt", "worker", "error_type",
              "error_message", "detail", "id")
    got = states.timeline(task)
    assert [[getattr(t, f) for f in fields] for t in got] == [
        [getattr(t, f) for f in fields] for t in steps]
    assert [round(t.at * 1e6) for t in got] == [round(t.at * 1e6) for t in steps]  # µs kept
    assert states.record(steps).duplicates == 6  # the same entries, recognised


def test_redis_keeps_a_finished_task_history_compact() -> None:
    """Members of at most 64 bytes keep a small sorted set a listpack, about 5 x smaller
    than the skiplist it becomes otherwise (server config zset-max-listpack-value),
    whatever the length of the worker's name."""
    from tests.servers import REDIS

    store = open_store(REDIS.require() + "/15", prefix=f"compact-{uuid.uuid4().hex[:8]}")
    states = RedisStateStore(store, retention=600)
    task, now = tid(), time.time()
    worker = "celery@ip-10-0-1-23.eu-west-1.compute.internal-worker-2"  # 55 characters
    states.record([tr(task, state, now - 5 + i, worker=None if i == 0 else worker)
                   for i, state in enumerate([S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED])])
    history = f"{states.tags[0]}h:{task}"
    try:
        assert states.client.object("encoding", history) == "listpack"
        assert [t.state for t in states.timeline(task)][-1] is S.SUCCEEDED
    finally:
        states.client.delete(history, f"{states.tags[0]}c:{task}", f"{states.tags[0]}k:receipt:42")
        store.close()
