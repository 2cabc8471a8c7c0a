"""Rides (stores/base.py ``Ride``): another part's writes inside the store's claim and
completion scripts, on real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celery_reliable.stores.base import Ride
from celery_reliable.stores.redis import RedisStore
from tests.servers import REDIS

RIDER = "local function ride(key, args) redis.call('SET', key, args[1]) return {'set'} end\n"
FAILING = "local function ride(key, args) return redis.call('INCR', 'no-number:' .. key) end\n"


@pytest.fixture
def store(prefix: str) -> Iterator[RedisStore]:
    opened = RedisStore(REDIS.require() + "/14", prefix=prefix)
    yield opened
    opened.close()


def test_a_claim_carries_its_ride_only_on_its_status(store: RedisStore, prefix: str) -> None:
    assert store.carries_rides()  # a standalone server, not a cluster node
    mark = f"{prefix}:rode"
    first = Ride(RIDER, mark, ["first"], "claimed")
    assert store.claim_soon("k", "fp", "t1", "me", 30, 3, ride=first)().runs
    assert first.reply == ["set"] and store.client.get(mark) == "first"
    other = Ride(RIDER, mark, ["other"], "claimed")
    assert store.claim_soon("k", "fp", "t2", "you", 30, 3, ride=other)().status.value == "busy"
    assert other.reply is None and store.client.get(mark) == "first"


def test_a_completion_carries_its_ride_whatever_it_answers(
    store: RedisStore, prefix: str
) -> None:
    answers: list[tuple[Any, Any]] = []
    mark = f"{prefix}:rode"
    ride = Ride(RIDER, mark, ["done"], "")
    # not this owner's lease: the completion answers False, the rider runs anyway
    store.complete_soon("k", "fp", "me", "t1", None, 60, lambda *a: answers.append(a), ride)
    store.drain()
    assert answers == [(False, None)] and ride.reply == ["set"]
    assert store.client.get(mark) == "done"


def test_a_failing_rider_leaves_the_call_done(store: RedisStore, prefix: str) -> None:
    store.client.set(f"no-number:{prefix}:x", "text")
    ride = Ride(FAILING, f"{prefix}:x", [], "claimed")
    claim = store.claim_soon("k", "fp", "t1", "me", 30, 3, ride=ride)()
    assert claim.runs
    assert isinstance(ride.reply, str) and ride.reply.startswith("rider failed:")
    state = store.get_key("k")
    assert state is not None and state.state == "running" and state.owner == "me"
    store.client.delete(f"no-number:{prefix}:x")
