"""``fingerprint_exclude``: arguments that do not change the outcome leave a call the same."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_reliable import (
    ARGUMENTS,
    ConfigurationError,
    IdempotencyKeyConflict,
    IdempotencyKeyError,
    ReliableTask,
)


def define(app: Celery, **options: Any) -> Any:
    """``shop.ship(order_id, slow=0)`` with ``options``, created at once."""
    runs: list[tuple[int, int]] = []

    @app.task(base=ReliableTask, shared=False, name="shop.ship", **options)
    def ship(order_id: int, slow: int = 0) -> int:
        runs.append((order_id, slow))
        return order_id

    task = ship._get_current_object()
    task.runs = runs
    return task


def test_an_excluded_argument_does_not_make_the_same_key_a_conflict_at_publish(
    app: Celery,
) -> None:
    ship = define(app, idempotency_key="x:{order_id}", fingerprint_exclude=("slow",))
    first = ship.delay(2, slow=5)
    assert ship.delay(2).id == first.id  # the same outcome: answered by the first task


def test_without_the_exclusion_the_same_call_is_still_a_conflict(app: Celery) -> None:
    ship = define(app, idempotency_key="x:{order_id}")
    ship.delay(2, slow=5)
    with pytest.raises(IdempotencyKeyConflict, match="different arguments"):
        ship.delay(2)


def test_the_claim_sees_the_same_call_and_runs_it_once(app: Celery) -> None:
    ship = define(app, idempotency_key="x:{order_id}", fingerprint_exclude="slow")
    assert ship.apply((2,), {"slow": 5}).get() == 2
    assert ship.apply((2,)).get() == 2  # skipped with the first run's result
    assert ship.runs == [(2, 5)]


def test_an_arguments_key_leaves_the_excluded_arguments_out() -> None:
    ship = define(Celery("fpx", set_as_current=False), idempotency_key=ARGUMENTS,
                  fingerprint_exclude=("slow",))
    plain = define(Celery("fpy", set_as_current=False), idempotency_key=ARGUMENTS)
    fast, slow = ship.key_for((2,), {}), ship.key_for((2,), {"slow": 9})
    other = ship.key_for((3,), {"slow": 9})
    assert fast == slow and fast != other
    # Only the excluded argument goes: the key and fingerprint are those of ``ship(2)``
    # hashed without it, as a task that does not take ``slow`` at all would have them.
    assert plain.key_for((2,), {"slow": 9}) != slow

    other_app = Celery("fpz", set_as_current=False)

    @other_app.task(base=ReliableTask, shared=False, name="shop.ship", idempotency_key=ARGUMENTS)
    def ship_without_slow(order_id: int) -> None: ...

    assert ship_without_slow._get_current_object().key_for((2,), {}) == slow


def test_a_template_still_sees_an_excluded_argument(app: Celery) -> None:
    ship = define(app, idempotency_key="x:{order_id}:{slow}", fingerprint_exclude=("slow",))
    assert ship.key_for((2,), {"slow": 5})[0] == "x:2:5"


def test_a_name_the_task_does_not_take_fails_at_definition(app: Celery) -> None:
    with pytest.raises(IdempotencyKeyError,
                       match=r"fingerprint_exclude of shop.ship names 'slwo', but shop.ship "
                             r"takes \(order_id, slow\); use one of those names"):
        define(app, fingerprint_exclude=("slwo",))


def test_names_must_be_strings(app: Celery) -> None:
    with pytest.raises(IdempotencyKeyError, match="must name arguments"):
        define(app, fingerprint_exclude=(1,))


def test_a_task_taking_any_keyword_may_exclude_any_name(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, fingerprint_exclude=("trace_id",),
              idempotency_key=ARGUMENTS)
    def log(event: str, **extra: Any) -> None: ...

    task = log._get_current_object()
    assert task.key_for(("a",), {"trace_id": 1}) == task.key_for(("a",), {"trace_id": 2})


def test_a_near_miss_of_the_option_is_refused_with_its_name(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="did you mean fingerprint_exclude"):
        define(app, fingerprint_exclud=("slow",))
