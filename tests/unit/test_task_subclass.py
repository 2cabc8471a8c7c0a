"""Subclasses of ReliableTask that override ``__call__`` keep every guarantee.

Flask's documented pattern (``with app.app_context(): return self.run(...)``)
replaced the guard when it lived in ``__call__``: three copies of one key ran
three times and left only PENDING behind.  The guard is in ``run`` now.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.runtime import runtime
from celery_reliable.states import State, flush_all, queries
from tests.harness import dead_records

entered: list[str] = []


@contextlib.contextmanager
def app_context() -> Iterator[None]:
    """Stands for Flask's ``app.app_context()``: counts how often the body got it."""
    entered.append("in")
    try:
        yield
    finally:
        entered.append("out")


class CallsRun(ReliableTask):
    """Flask's documented pattern, verbatim but for the base class."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with app_context():
            return self.run(*args, **kwargs)


class CallsSuper(ReliableTask):
    """The other common way: wrap the base class's ``__call__``."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with app_context():
            return super().__call__(*args, **kwargs)


@pytest.fixture(autouse=True)
def _forget_contexts() -> None:
    entered.clear()


@pytest.mark.parametrize("base", [CallsRun, CallsSuper], ids=["self.run", "super().__call__"])
def test_three_copies_of_one_key_run_once_with_a_complete_timeline(
    app: Celery, base: type[ReliableTask]
) -> None:
    effects: list[int] = []

    @app.task(base=base, bind=True, shared=False, idempotency_key="receipt:{order_id}")
    def send_receipt(self: ReliableTask, order_id: int) -> str:
        assert entered[-1] == "in"  # the body runs inside the context
        effects.append(order_id)
        return str(self.idempotency_key)

    ids = [str(uuid.uuid4()) for _ in range(3)]
    results = [send_receipt.apply((2,), task_id=task_id).get() for task_id in ids]
    assert results == ["receipt:2"] * 3
    assert effects == [2]
    assert entered == ["in", "out"] * 3
    done = runtime(app).store.get_key("receipt:2")
    assert done is not None and done.state == "done" and done.task_id == ids[0]
    flush_all()
    first = [t.state for t in queries.timeline(app, task_id=ids[0])]
    assert first == [State.RECEIVED, State.STARTED, State.SUCCEEDED]
    for copy in ids[1:]:
        assert [t.state for t in queries.timeline(app, task_id=copy)] == [
            State.RECEIVED, State.DEDUPLICATED]


def test_a_failure_inside_the_overridden_call_is_dead_lettered(app: Celery) -> None:
    from celery_reliable import PermanentError

    @app.task(base=CallsRun, shared=False, idempotency_key="refund:{n}")
    def refund(n: int) -> None:
        raise PermanentError("no such order")

    with pytest.raises(PermanentError):
        refund.apply((1,), throw=True)
    [letter] = dead_records(runtime(app).store)
    assert letter.reason == "permanent_error"
    assert runtime(app).store.get_key("refund:1") is None  # released: a replay can run


@pytest.mark.parametrize("base", [CallsRun, CallsSuper], ids=["self.run", "super().__call__"])
def test_a_direct_call_still_just_runs_the_function(
    app: Celery, base: type[ReliableTask]
) -> None:
    calls: list[int] = []

    @app.task(base=base, shared=False, idempotency_key="double:{x}")
    def double(x: int) -> int:
        calls.append(x)
        return x * 2

    assert double(2) == 4 and double(2) == 4
    assert calls == [2, 2]
    assert runtime(app).store.get_key("double:2") is None  # nothing claimed


def test_a_class_based_task_with_its_own_run_and_call_is_guarded(app: Celery) -> None:
    effects: list[int] = []

    class Charge(CallsRun):
        name = f"charge-{uuid.uuid4().hex[:6]}"
        idempotency_key = "charge:{order_id}"

        def run(self, order_id: int) -> int:
            effects.append(order_id)
            return order_id

    charge = app.register_task(Charge())
    assert [charge.apply((4,)).get() for _ in range(2)] == [4, 4]
    assert effects == [4]
    assert charge.key_for((4,), {})[0] == "charge:4"  # the key binds to run's own signature


def test_autoretry_for_stays_inside_the_claim(app: Celery) -> None:
    # Celery's autoretry_for sets task.run to a wrapper of the run it read: the wrapper
    # must end up inside the guard, or the guard dead-letters the failure (one attempt
    # allowed here) before the wrapper retries a task that is already a dead letter.
    app.conf.reliable_max_attempts = 1
    runs: list[int] = []

    @app.task(base=CallsRun, shared=False, idempotency_key="mail:{n}",
              autoretry_for=(KeyError,), retry_kwargs={"countdown": 0})
    def mail(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            raise KeyError("template")
        return n

    assert hasattr(mail, "_orig_run")  # Celery wrapped it
    assert mail.apply((3,)).get() == 3
    assert runs == [3, 3]
    assert dead_records(runtime(app).store) == []
    assert mail.apply((3,)).get() == 3 and runs == [3, 3]  # a copy: skipped by the claim
