"""A state that another process's next state follows is stamped before the message that
lets it: the producer's PENDING before the publish, a deferral before its republish.

Otherwise a fast worker's RECEIVED is older than the PENDING it follows (the task was
left looking PENDING, or its PENDING refused), and a deferred copy's states fall after
those of the copy that ran.  Checked against the time the message was handed to the
broker (``before_task_publish``), on kombu's memory transport.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish

from celery_reliable import ReliableTask, StoreUnavailable
from celery_reliable.runtime import runtime
from celery_reliable.states import State, Transition, recorder, state_store
from tests.unit.test_claim_ahead import received


@pytest.fixture
def sent() -> Iterator[list[float]]:
    """When each message went to the broker (time.time(), in order)."""
    import time

    times: list[float] = []

    def note(**_: Any) -> None:
        times.append(time.time())

    before_task_publish.connect(note, weak=False, dispatch_uid="test_states_stamps")
    yield times
    before_task_publish.disconnect(dispatch_uid="test_states_stamps")


def _timeline(app: Celery, task_id: str) -> list[Transition]:
    recorder(app).flush(force=True)
    return state_store(app).timeline(task_id)


def test_pending_is_stamped_before_the_message_goes_out(app: Celery, sent: list[float]) -> None:
    @app.task(base=ReliableTask, shared=False, idempotency_key="mail:{n}")
    def mail(n: int) -> None: ...

    handle = mail.delay(1)
    [pending] = _timeline(app, handle.id)
    assert pending.state is State.PENDING
    assert pending.at <= sent[0]


def test_a_deferral_is_stamped_before_its_copy_is_published_again(
    app: Celery, sent: list[float], monkeypatch: pytest.MonkeyPatch,
) -> None:
    @app.task(base=ReliableTask, shared=False, idempotency_key="mail:{n}")
    def mail(n: int) -> None: ...

    request = received(app, mail, 1)

    def down(*_: Any, **__: Any) -> None:
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(runtime(app).store, "claim", down)
    request.execute()  # fails closed: deferred, published again
    assert len(sent) == 2
    timeline = _timeline(app, request.id)
    assert [t.state for t in timeline] == [State.PENDING, State.RECEIVED, State.DEFERRED]
    assert timeline[1].at < timeline[2].at <= sent[1]
