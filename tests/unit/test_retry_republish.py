"""A retry is published again with the countdown the retry policy drew (full jitter),
through Celery's own Request and tracer on kombu's memory transport."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.retry.policy import Decision, RetryPolicy
from celery_reliable.states import State, flush_all, queries
from tests.unit.test_claim_ahead import received, taken


def test_the_republished_retry_waits_the_policys_draw(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.reliable_retry_backoff_base = 40.0  # draws spread over 0-40 s
    draws: list[float] = []
    decide = RetryPolicy.decide

    def drawn(self: RetryPolicy, exc: BaseException, attempt: int,
              rng: random.Random | None = None) -> Decision:
        decision = decide(self, exc, attempt, rng)
        draws.append(decision.delay)
        return decision

    monkeypatch.setattr(RetryPolicy, "decide", drawn)

    @app.task(base=ReliableTask, shared=False, retry_on=(ConnectionError,),
              idempotency_key="mail:{n}")
    def mail(n: int) -> Any:
        raise ConnectionError("smtp timed out")

    first = received(app, mail, 1)
    before = time.time()
    first.execute()  # fails: the policy draws, the task is published again, then acked
    after = time.time()
    [delay] = draws
    retry = taken(app, mail)
    assert retry.id == first.id and retry.request_dict["retries"] == 1
    assert retry.eta is not None
    assert before + delay - 0.01 <= retry.eta.timestamp() <= after + delay + 0.01
    flush_all()
    [scheduled] = [t for t in queries.timeline(app, task_id=first.id)
                   if t.state is State.RETRY_SCHEDULED]
    assert scheduled.detail == {"countdown": round(delay, 3)}
