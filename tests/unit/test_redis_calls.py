"""The store's lean script calls: same answers and same failure handling as redis-py's."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
import redis

from celery_reliable.stores.redis import RedisStore
from celery_reliable.stores.redis_calls import ScriptCaller, pack
from tests.servers import REDIS


def test_pack_writes_one_resp_array_of_bulk_strings() -> None:
    assert pack(("EVALSHA", b"ab", 2, 1.5, "é")) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\n1.5\r\n$2\r\n\xc3\xa9\r\n"
    )


@pytest.mark.parametrize("call", [
    ("EVALSHA", "a" * 40, 2, "{p:0}:k:receipt:42", "{p:0}:due", "0123abcd", 300000, 2.5, -1),
    ("EVALSHA", "a" * 40, 1, "{p:0}:k:reçu:42", "x"),  # not ASCII: the general path
    ("SET", "k", b"\x00\xff"),
])
def test_pack_writes_what_redis_py_writes(call: tuple[object, ...]) -> None:
    expected = b"".join(redis.Connection().pack_command(*call))
    assert pack(call) == expected


@pytest.mark.parametrize("bad", [None, True, {"a": 1}])
def test_pack_refuses_what_redis_py_would_not_send(bad: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        pack(("GET", bad))


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(REDIS.require() + "/15", decode_responses=True)


def test_a_call_answers_like_redis_py(client: redis.Redis) -> None:
    script = client.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
    caller = ScriptCaller(client)
    assert caller.call(script, ["k"], ["v", 41]) == script(keys=["k"], args=["v", 41])


def test_a_script_the_server_forgot_is_loaded_again(client: redis.Redis) -> None:
    body = f"return '{uuid.uuid4().hex}'"  # a script no other test has loaded
    script = client.register_script(body)
    assert not client.script_exists(script.sha)[0]
    assert ScriptCaller(client).call(script, [], []) == body[8:-1]
    assert client.script_exists(script.sha)[0]


def _connection_id(caller: ScriptCaller) -> int:
    """The server's id of the connection the calling thread uses."""
    connection = caller._held().connection
    connection.send_command("CLIENT", "ID")
    return int(connection.read_response())


def test_a_connection_the_server_dropped_is_replaced(client: redis.Redis) -> None:
    script = client.register_script("return ARGV[1]")
    caller = ScriptCaller(client)
    assert caller.call(script, [], ["a"]) == "a"
    first = _connection_id(caller)
    client.client_kill_filter(_id=str(first))
    assert caller.call(script, [], ["b"]) == "b"
    assert _connection_id(caller) != first


def test_each_thread_and_each_process_gets_its_own_connection(client: redis.Redis) -> None:
    import threading

    caller = ScriptCaller(client)
    here = _connection_id(caller)
    assert _connection_id(caller) == here  # kept
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(_connection_id(caller)))
    thread.start()
    thread.join()
    assert other and other[0] != here
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, str(_connection_id(caller)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = int(os.read(read, 100) or 0)
    os.close(read)
    assert child and child != here
    assert _connection_id(caller) == here  # the parent's socket was left alone


def test_a_store_on_an_injected_client_uses_it(client: redis.Redis) -> None:
    prefix = "t" + uuid.uuid4().hex[:10]
    store = RedisStore("redis://unused", prefix=prefix, client=client)
    store.ping()
    assert store.lookup("k", "f" * 16).task_id is None


def test_a_sent_call_runs_at_once_and_its_reply_comes_before_the_next_call(
    client: redis.Redis,
) -> None:
    key = "t" + uuid.uuid4().hex
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    client.script_load(script.script)
    caller = ScriptCaller(client)
    replies: list[tuple[object, object, bool]] = []
    caller.send(script, [key], [], lambda *answer: replies.append(answer))
    caller.send(script, [key], [], lambda *answer: replies.append(answer))
    assert replies == []  # nothing read yet ...
    deadline = 50
    while client.get(key) != "2" and deadline:  # ... but the server ran both
        deadline -= 1
        import time

        time.sleep(0.01)
    assert client.get(key) == "2"
    assert caller.call(script, [key], []) == 3
    assert replies == [(1, None, False), (2, None, False)]
    client.delete(key)


def test_a_reply_lost_with_its_connection_makes_the_call_again(client: redis.Redis) -> None:
    key = "t" + uuid.uuid4().hex
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    client.script_load(script.script)
    caller = ScriptCaller(client)
    first = _connection_id(caller)
    replies: list[tuple[object, object, bool]] = []
    caller.send(script, [key], [], lambda *answer: replies.append(answer))
    client.client_kill_filter(_id=str(first))  # may come before or after the INCR
    caller.drain()
    assert len(replies) == 1 and replies[0][1] is None and replies[0][2] in (True, False)
    assert int(client.get(key) or 0) in (1, 2)  # at least once: callers check the state
    client.delete(key)


def test_a_sent_call_the_server_did_not_know_is_made_again(client: redis.Redis) -> None:
    key = "t" + uuid.uuid4().hex
    script = client.register_script(f"return redis.call('INCR', KEYS[1]) -- {key}")
    caller = ScriptCaller(client)
    replies: list[tuple[object, object, bool]] = []
    caller.send(script, [key], [], lambda *answer: replies.append(answer))  # NOSCRIPT
    caller.drain()
    assert replies == [(1, None, True)]
    assert client.get(key) == "1"
    client.delete(key)


def test_complete_soon_answers_like_complete(client: redis.Redis) -> None:
    store = RedisStore("redis://unused", prefix="t" + uuid.uuid4().hex[:10], client=client)
    task_id, fp = str(uuid.uuid4()), "0123456789abcdef"
    assert store.claim("k", fp, task_id, "me", 30, 3).runs
    # loads the script: a server that does not know it answers both sent calls NOSCRIPT,
    # and both are made again (see the test above), which is not what this one is about
    assert not store.complete("other", fp, "me", task_id, None, 60)
    answers: list[tuple[object, object]] = []
    store.complete_soon("k", fp, "me", task_id, None, 60, lambda *a: answers.append(a))
    store.complete_soon("k", fp, "me", task_id, None, 60, lambda *a: answers.append(a))
    store.drain()
    # the second one finds the key done: not this owner's lease any more
    assert answers == [(True, None), (False, None)]
    state = store.get_key("k")
    assert state is not None and state.state == "done" and state.task_id == task_id


def test_publish_soon_answers_like_publish(client: redis.Redis) -> None:
    from celery_reliable.stores.model import PublishStatus, TaskRecord

    store = RedisStore("redis://unused", prefix="t" + uuid.uuid4().hex[:10], client=client)
    first, second = (
        TaskRecord(str(uuid.uuid4()), "t", "k", "0123456789abcdef", "[]", "application/json",
                   "utf-8", "{}")
        for _ in range(2)
    )
    answer_first = store.publish_soon(first, 60, dedupe=True)
    answer_second = store.publish_soon(second, 60, dedupe=True)
    assert answer_second().status is PublishStatus.IN_FLIGHT  # read in any order
    assert answer_second().task_id == first.task_id
    assert answer_first().status is PublishStatus.NEW
    assert store.get_record(first.task_id, "k") is not None


def _lose_the_reply_once_it_ran(store: RedisStore, ran: Callable[[], bool]) -> None:
    """Wait until the server ran the call sent ahead (``ran``), then make its reply
    lost with the connection when it is read."""
    import time

    for _ in range(100):
        if ran():
            break
        time.sleep(0.01)
    connection = store._caller._held().connection
    read = connection.read_response

    def lost(*args: object, **kwargs: object) -> object:
        connection.read_response = read
        connection.disconnect()
        raise redis.ConnectionError("connection lost")

    connection.read_response = lost


def test_a_publish_made_again_after_a_lost_reply_finds_its_own_record(
    client: redis.Redis,
) -> None:
    from celery_reliable.stores.model import PublishStatus, TaskRecord

    store = RedisStore("redis://unused", prefix="t" + uuid.uuid4().hex[:10], client=client)
    mine = TaskRecord(str(uuid.uuid4()), "t", "k", "0123456789abcdef", "[]",
                      "application/json", "utf-8", "{}")
    answer = store.publish_soon(mine, 60, dedupe=True)
    _lose_the_reply_once_it_ran(store, lambda: store.get_record(mine.task_id, "k") is not None)
    outcome = answer()  # made again: the key is queued for this very task
    assert (outcome.status, outcome.task_id) == (PublishStatus.NEW, mine.task_id)


def test_a_claim_made_again_after_a_lost_reply_is_still_a_first_claim(
    client: redis.Redis,
) -> None:
    from celery_reliable.stores.model import ClaimStatus

    store = RedisStore("redis://unused", prefix="t" + uuid.uuid4().hex[:10], client=client)
    answer = store.claim_soon("k", "0123456789abcdef", str(uuid.uuid4()), "me", 30, 3)

    def running() -> bool:
        state = store.get_key("k")
        return state is not None and state.state == "running"

    _lose_the_reply_once_it_ran(store, running)
    claim = answer()  # made again: the key runs for this very owner
    assert (claim.status, claim.lost) == (ClaimStatus.CLAIMED, 0)
    state = store.get_key("k")
    assert state is not None and state.owner == "me" and state.lost == 0


def test_many_calls_go_in_one_round_trip_and_survive_a_forgotten_script(
    client: redis.Redis,
) -> None:
    key = "t" + uuid.uuid4().hex
    script = client.register_script(f"return redis.call('INCRBY', KEYS[1], ARGV[1]) -- {key}")
    caller = ScriptCaller(client)
    # not loaded yet: the first reply is NOSCRIPT, and all are made again one by one
    assert caller.call_many(script, [([key], [1]), ([key], [2])]) == [1, 3]
    assert caller.call_many(script, [([key], [10]), ([key], [20])]) == [13, 33]
    assert caller.call_many(script, []) == []
    client.delete(key)


def _claimed_store(client: redis.Redis) -> tuple[RedisStore, str]:
    store = RedisStore("redis://unused", prefix="t" + uuid.uuid4().hex[:10], client=client)
    task_id = str(uuid.uuid4())
    assert store.claim("k", "0123456789abcdef", task_id, "me", 30, 3).runs
    assert not store.complete("other", "0123456789abcdef", "me", task_id, None, 60)  # loaded
    return store, task_id


def test_a_completion_made_again_after_a_lost_reply_is_still_a_success(
    client: redis.Redis,
) -> None:
    """The second call finds the key done (by the first one): not a lapsed lease."""
    store, task_id = _claimed_store(client)
    answers: list[tuple[object, object]] = []
    store.complete_soon("k", "0123456789abcdef", "me", task_id, None, 60,
                        lambda *a: answers.append(a))

    def done() -> bool:
        state = store.get_key("k")
        return state is not None and state.state == "done"

    _lose_the_reply_once_it_ran(store, done)
    store.drain()
    assert answers == [(True, None)]


def test_a_completion_the_server_refuses_comes_back_as_a_store_error(
    client: redis.Redis,
) -> None:
    from celery_reliable.errors import StoreError

    store, task_id = _claimed_store(client)
    state_key = store._names("k", task_id)[0]
    client.delete(state_key)
    client.hset(state_key, "not", "a string")  # the script's GET fails: WRONGTYPE
    answers: list[tuple[object, object]] = []
    store.complete_soon("k", "0123456789abcdef", "me", task_id, None, 60,
                        lambda *a: answers.append(a))
    store.drain()
    [(ok, error)] = answers
    assert ok is None and isinstance(error, StoreError) and "WRONGTYPE" in str(error)
    client.delete(state_key)


def test_a_completion_that_cannot_be_sent_is_made_at_once(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, task_id = _claimed_store(client)

    def dead(*args: object) -> None:
        raise redis.ConnectionError("connection reset by peer")

    monkeypatch.setattr(store._caller, "send", dead)
    answers: list[tuple[object, object]] = []
    store.complete_soon("k", "0123456789abcdef", "me", task_id, None, 60,
                        lambda *a: answers.append(a))
    assert answers == [(True, None)]  # through redis-py's own path, before returning
    state = store.get_key("k")
    assert state is not None and state.state == "done"
