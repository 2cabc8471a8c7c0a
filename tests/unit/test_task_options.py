"""Per-task options: typos refused at definition, the forced ones, ``deadline``."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest
from celery import Celery

from celery_reliable import ConfigurationError, ReliableTask
from celery_reliable.runtime import runtime
from celery_reliable.worker.signals import connect
from tests.harness import wait_for
from tests.unit.test_claim_ahead import received, taken


def define(app: Celery, **options: Any) -> Any:
    """A reliable task with ``options``, created at once (as at worker start-up)."""

    @app.task(base=ReliableTask, shared=False, **options)
    def send_receipt(order_id: int) -> int:
        return order_id

    return send_receipt._get_current_object()


@pytest.mark.parametrize("typo, meant", [
    ("lease_second", "lease_seconds"), ("max_attempt", "max_attempts"),
    ("retry_onn", "retry_on"), ("dependancy", "dependency"), ("deadlines", "deadline"),
    ("idempotency_keys", "idempotency_key"), ("on_key_conflicts", "on_key_conflict"),
])
def test_a_typo_of_an_option_fails_at_definition_with_the_closest_name(
    app: Celery, typo: str, meant: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"sets {typo}=.*did you mean {meant}\?"):
        define(app, **{typo: 2})


def test_a_typo_in_a_subclass_body_is_refused_too() -> None:
    with pytest.raises(ConfigurationError, match="did you mean lease_seconds"):

        class PaymentTask(ReliableTask):
            lease_second = 120


def test_an_app_wide_setting_given_per_task_says_where_it_goes(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match=r"set it on the app, e\.g\. "
                                                 r"app\.conf\.reliable_rescue_after = 3"):
        define(app, rescue_after=3)
    app.namespace = "CELERY"  # config_from_object(..., namespace="CELERY"): Django
    with pytest.raises(ConfigurationError, match="add CELERY_RELIABLE_RESCUE_AFTER = 3 to"):
        define(app, rescue_after=3)


def test_celerys_own_options_and_the_users_attributes_are_left_alone(app: Celery) -> None:
    celerys = dict(
        queue="mail", routing_key="mail", exchange="mail", rate_limit="10/s",
        autoretry_for=(KeyError,), dont_autoretry_for=(ValueError,), retry_backoff=True,
        retry_backoff_max=60, retry_jitter=False, retry_kwargs={"max_retries": 2},
        max_retries=3, default_retry_delay=5, typing=False, serializer="json",
        time_limit=60, soft_time_limit=50, ignore_result=True, track_started=True,
        priority=3, expires=600, store_eager_result=True, throws=(KeyError,), trail=False,
        acks_on_failure_or_timeout=True, store_errors_even_if_ignored=True,
        send_events=True, resultrepr_maxsize=1024, compression="gzip",
    )
    ours = dict(lease_seconds=120, max_attempts=2, retry_on=(ConnectionError,),
                dependency="mailer", deadline=30.0, dependencies=["smtp"], owner_team="mail")
    task = define(app, **celerys, **ours)
    settings = task.reliable_settings()
    assert (settings.lease_seconds, settings.max_attempts) == (120, 2)
    assert task.queue == "mail" and task.dependencies == ["smtp"]


def test_turning_off_reject_on_worker_lost_is_refused(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match=r"reject_on_worker_lost=False.*needs"):
        define(app, reject_on_worker_lost=False)


def test_the_deadline_becomes_the_messages_expiry_unless_the_call_sets_one(
    app: Celery,
) -> None:
    task = define(app, deadline=30.0)
    before = time.time()
    task.delay(1)
    expires = taken(app, task).expires
    assert expires is not None and before + 29 < expires.timestamp() < time.time() + 31
    task.apply_async((2,), expires=5)
    expires = taken(app, task).expires
    assert expires is not None and expires.timestamp() < time.time() + 6


def test_a_task_that_misses_its_deadline_is_dead_lettered_as_expired(app: Celery) -> None:
    connect()  # what the worker does: Celery's task_revoked signal reaches us
    runs: list[int] = []

    @app.task(base=ReliableTask, shared=False, deadline=0.2, idempotency_key="r:{order_id}")
    def send_receipt(order_id: int) -> None:
        runs.append(order_id)

    request = received(app, send_receipt, 3)
    expires = request.expires
    assert expires is not None
    wait_for(lambda: datetime.now(timezone.utc) > expires, 5, "the deadline to pass")
    request.execute()  # Celery sees the expiry and revokes it
    assert runs == []
    letter = runtime(app).store.get_dead_letter(request.id)
    assert letter is not None and letter.record.reason == "expired"
