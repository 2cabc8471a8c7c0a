"""A ReliableTask takes the calls a Celery task takes, and refuses the ones Celery refuses
the way Celery does (found by running Celery's own integration suite, docs/compatibility.md)."""

from __future__ import annotations

import pytest
from celery import Celery, Task
from pydantic import BaseModel

from celery_reliable import ArgumentsMismatch, ReliableTask
from celery_reliable.records import decode
from celery_reliable.runtime import runtime


class Order(BaseModel):
    order_id: int
    amount: float


def test_a_call_that_does_not_fit_raises_a_type_error_as_celery_does(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    for args, kwargs in (((5,), {}), ((5,), {"wrong_arg": 5}), ((5, 5), {"wrong_arg": 5})):
        with pytest.raises(TypeError, match=r"do not fit the task: .* \(the task takes \(x"):
            add.apply_async(args, kwargs)
    with pytest.raises(ArgumentsMismatch):
        add.delay(5)


def test_typing_off_publishes_and_the_worker_fails_the_call_at_once(app: Celery) -> None:
    app.conf.reliable_retry_backoff_base = 0

    @app.task(base=ReliableTask, typing=False, shared=False)
    def add_not_typed(x: int, y: int) -> int:
        return x + y

    add_not_typed.delay(5)  # Celery does not check it: neither do we
    result = add_not_typed.apply((5,))
    assert isinstance(result.result, TypeError) and result.state == "FAILURE"
    rt = runtime(app)
    assert rt.counters["retried"] == 0  # no retry can fix a call that does not fit
    letter = rt.store.get_dead_letter(result.id)
    assert letter is not None and letter.record.reason == "permanent_error"


@pytest.mark.skipif(not hasattr(Task, "_dump_pydantic_arguments"),
                    reason="this Celery does not dump pydantic arguments at publish (5.7+)")
def test_pydantic_models_are_keyed_and_persisted_as_celery_sends_them(app: Celery) -> None:
    @app.task(base=ReliableTask, pydantic=True, shared=False)
    def charge(order: Order) -> float:
        return order.amount

    sent = charge.delay(Order(order_id=7, amount=9.5))
    record = runtime(app).store.get_record(sent.id, sent.id)
    assert record is not None
    args, kwargs, _ = decode(app, record)
    assert (args, kwargs) == ([{"order_id": 7, "amount": 9.5}], {})
