"""The Redis store's packed done value: 64 bits of fingerprint, an embedded string,
and done keys written before (32 bits) still read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from celery_reliable.stores import ClaimStatus, PublishStatus, open_store
from celery_reliable.stores.redis import RedisStore
from tests.servers import REDIS

FP = "0123456789abcdef"


@pytest.fixture
def store(prefix: str) -> Iterator[RedisStore]:
    store = open_store(REDIS.require() + "/15", prefix=prefix)
    assert isinstance(store, RedisStore)
    yield store
    for name in store.client.scan_iter(f"*{prefix}*"):
        store.client.delete(name)
    store.close()


def done(store: RedisStore, key: str, result: str | None = None) -> str:
    task_id = str(uuid.uuid4())
    assert store.claim(key, FP, task_id, "a", 30, max_lost=3).runs
    assert store.complete(key, FP, "a", task_id, result, retention=60)
    return task_id


@pytest.mark.parametrize("result", [None, "null", "1"], ids=["not kept", "None", "1"])
def test_a_done_key_is_an_embedded_string_with_the_whole_fingerprint(
    store: RedisStore, result: str | None
) -> None:
    task_id = done(store, "receipt:1", result)
    name = store._names("receipt:1", "")[0]
    raw = str(store.client.get(name))
    assert raw.startswith("E" + FP)  # all 16 hex digits: 64 bits
    assert len(raw.encode()) <= 44
    assert store.client.object("encoding", name) == "embstr"
    state = store.get_key("receipt:1")
    assert state is not None and (state.fingerprint, state.task_id) == (FP, task_id)


def test_a_done_key_written_before_is_still_read(store: RedisStore) -> None:
    """The format before 64 bits were kept: 'D', 8 fingerprint characters, '!' + hex id."""
    task_id = str(uuid.uuid4())
    name = store._names("receipt:2", "")[0]
    store.client.set(name, f"D{FP[:8]}!{uuid.UUID(task_id).hex}\t7", px=60_000)
    state = store.get_key("receipt:2")
    assert state is not None and state.state == "done"
    assert (state.fingerprint, state.task_id, state.result) == (FP[:8], task_id, "7")
    claim = store.claim("receipt:2", FP, "t2", "b", 30, max_lost=3)
    assert (claim.status, claim.task_id, claim.result) == (ClaimStatus.DONE, task_id, "7")
    # what it kept (32 bits) is still compared: other first 8 characters conflict
    other = "f" * 16
    assert store.claim("receipt:2", other, "t3", "c", 30, max_lost=3).status is (
        ClaimStatus.CONFLICT)
    assert store.lookup("receipt:2", FP).status is PublishStatus.DONE
