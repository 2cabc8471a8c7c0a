"""The Celery app the integration and chaos tests run in real worker processes.

``build(env)`` makes the app from environment-style settings, so a test can
point a subprocess worker (``celery -A tests.apps.shop``, which reads
``os.environ``) and its own producer (``build(env)``) at the same broker, store,
key prefix and queue.  Side effects are counted in Redis, outside the worker,
so a test counts outcomes after a SIGKILL instead of reading logs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from celery.schedules import crontab
from flask import Flask, current_app

from celery_reliable import ARGUMENTS, PermanentError, ReliableTask
from tests.apps.counter import COUNTER_URL, Counter


def fast_clock() -> datetime:
    """Time running ``TEST_CLOCK_SPEED`` times faster since ``TEST_CLOCK_START`` (epoch
    seconds): the same in every process of a test, so a crontab minute takes seconds."""
    start = float(os.environ["TEST_CLOCK_START"])
    speed = float(os.environ["TEST_CLOCK_SPEED"])
    return datetime.fromtimestamp(start + (time.time() - start) * speed, tz=timezone.utc)


def beat_entry(env: Mapping[str, str]) -> dict[str, Any]:
    """``TEST_BEAT=interval:<seconds>`` or ``crontab`` (every minute, on :func:`fast_clock`)."""
    kind, _, every = env["TEST_BEAT"].partition(":")
    if kind == "crontab":
        when: Any = crontab(minute="*", nowfun=fast_clock)
    else:
        when = timedelta(seconds=float(every))
    return {"task": "shop.tick", "schedule": when, "args": ("fixed",)}


def build(env: Mapping[str, str]) -> Celery:
    prefix = env.get("TEST_PREFIX", "shop")
    counter = Counter(prefix, env.get("TEST_COUNTER_URL", COUNTER_URL))
    app = Celery(
        "shop",
        broker=env.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/14"),
        backend=env.get("TEST_BACKEND_URL", "redis://127.0.0.1:6379/14"),
    )
    app.conf.update(
        task_default_queue=env.get("TEST_QUEUE", "celery"),
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=600,
        reliable_store_url=env.get("TEST_STORE_URL", "redis://127.0.0.1:6379/15"),
        reliable_key_prefix=prefix,
        reliable_lease_seconds=float(env.get("TEST_LEASE", "3")),
        reliable_rescue_interval=float(env.get("TEST_RESCUE_INTERVAL", "0.5")),
        reliable_rescue_after=float(env.get("TEST_RESCUE_AFTER", "4")),
        reliable_max_lost_attempts=int(env.get("TEST_MAX_LOST", "3")),
        reliable_store_down_retry_delay=float(env.get("TEST_STORE_DOWN_DELAY", "0.5")),
        reliable_retry_backoff_base=float(env.get("TEST_BACKOFF", "0.2")),
        reliable_retry_budget_ratio=float(env.get("TEST_BUDGET_RATIO", "0.2")),
        reliable_retry_budget_floor=float(env.get("TEST_BUDGET_FLOOR", "1")),
        reliable_on_retry_budget_exhausted=env.get("TEST_BUDGET_EXHAUSTED", "defer"),
        reliable_breaker_threshold=int(env.get("TEST_BREAKER_THRESHOLD", "5")),
        reliable_breaker_cool_down=float(env.get("TEST_BREAKER_COOL_DOWN", "30")),
        reliable_record_all_tasks=env.get("TEST_RECORD_ALL", "0") == "1",
        reliable_state_store_url=env.get("TEST_STATE_STORE_URL") or None,
        reliable_state_flush_interval=float(env.get("TEST_STATE_FLUSH_INTERVAL", "0.2")),
        reliable_dlq_queue=env.get("TEST_DLQ_QUEUE", "reliable.dlq"),
    )
    if env.get("TEST_VISIBILITY_TIMEOUT"):
        app.conf.broker_transport_options = {
            "visibility_timeout": float(env["TEST_VISIBILITY_TIMEOUT"]),
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }

    @app.task(name="shop.send_receipt", shared=False, base=ReliableTask, bind=True,
              idempotency_key="receipt:{order_id}")
    def send_receipt(self: ReliableTask, order_id: int, hold: float = 0.0) -> dict[str, Any]:
        """The effect happens once per key: counted as 'effect'."""
        counter.incr("start", order_id)
        time.sleep(hold)
        counter.incr("effect", order_id)
        return {"order": order_id, "key": self.idempotency_key}

    @app.task(name="shop.send_receipt_consumer_dedupe", shared=False, base=ReliableTask,
              bind=True, idempotency_key="receipt:{order_id}", dedupe_on_publish=False)
    def send_receipt_consumer_dedupe(
        self: ReliableTask, order_id: int, hold: float = 0.0
    ) -> dict[str, Any]:
        """Same body, but every publish reaches the broker: the claim alone dedupes."""
        counter.incr("start", order_id)
        time.sleep(hold)
        counter.incr("effect", order_id)
        return {"order": order_id, "key": self.idempotency_key}

    flask_app = Flask(f"shop-{prefix}")

    class FlaskTask(ReliableTask):
        """Flask's documented Celery task class ("Background Tasks with Celery"), with
        ReliableTask as its base: its own ``__call__`` must not bypass the guarantees."""

        abstract = True

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    @app.task(name="shop.flask_receipt", shared=False, base=FlaskTask,
              idempotency_key="receipt:{order_id}", dedupe_on_publish=False)
    def flask_receipt(order_id: int, hold: float = 0.0) -> str:
        """The receipt of a Flask app: needs the app's context."""
        counter.incr("start", order_id)
        time.sleep(hold)
        counter.incr("effect", order_id)
        return str(current_app.name)

    @app.task(name="shop.slow_effect", shared=False, base=ReliableTask,
              idempotency_key="slow:{order_id}")
    def slow_effect(order_id: int, seconds: float) -> int:
        """Runs ``seconds`` (a test kills its worker meanwhile), then counts the effect."""
        counter.incr("start", order_id)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return counter.incr("effect", order_id)

    @app.task(name="shop.flaky_send", shared=False, base=ReliableTask, bind=True,
              idempotency_key="flaky:{order_id}", retry_on=(ConnectionError,))
    def flaky_send(self: ReliableTask, order_id: int, failures: int) -> int:
        """Fails with a transient error ``failures`` times, then counts the effect."""
        if counter.incr("start", order_id) <= failures:
            raise ConnectionError("smtp timed out")
        counter.incr("effect", order_id)
        return int(self.request.retries) + 1

    @app.task(name="shop.reject_input", shared=False, base=ReliableTask,
              idempotency_key="reject:{order_id}")
    def reject_input(order_id: int) -> None:
        counter.incr("start", order_id)
        raise PermanentError(f"order {order_id} has no e-mail address")

    @app.task(name="shop.mail_receipt", shared=False, base=ReliableTask,
              idempotency_key="mail:{order_id}")
    def mail_receipt(order_id: int, email: str) -> str:
        """Fails for good on an address without '@' (bad input: replayed corrected);
        else counts the effect and keeps the address it was sent to."""
        counter.incr("start", order_id)
        if "@" not in email:
            raise PermanentError(f"order {order_id}: {email!r} is not an e-mail address")
        counter.client.rpush(f"{prefix}:mailed:{order_id}", email)
        counter.incr("effect", order_id)
        return email

    @app.task(name="shop.always_failing", shared=False, base=ReliableTask,
              idempotency_key="down:{order_id}", retry_on=(ConnectionError,))
    def always_failing(order_id: int) -> None:
        counter.incr("start", order_id)
        raise ConnectionError("the dependency is down")

    @app.task(name="shop.call_smtp", shared=False, base=ReliableTask, dependency="smtp",
              idempotency_key="smtp:{order_id}", retry_on=(ConnectionError,), max_attempts=20)
    def call_smtp(order_id: int) -> int:
        """Fails while the test's 'smtp is down' flag is set."""
        counter.incr("start", order_id)
        if counter.client.exists(f"{prefix}:smtp_down"):
            raise ConnectionError("smtp is down")
        return counter.incr("effect", order_id)

    @app.task(name="shop.charge", shared=False, base=ReliableTask,
              idempotency_key="charge:{order_id}", retry_on=(ConnectionError,), max_attempts=2)
    def charge(order_id: int, note: str = "") -> int:
        """Fails (ConnectionError: retried, then dead-lettered) until the test sets
        '<prefix>:gateway_fixed'; then counts the effect."""
        counter.incr("start", order_id)
        if not counter.client.exists(f"{prefix}:gateway_fixed"):
            raise ConnectionError(f"the gateway is down ({note or 'no note'})")
        return counter.incr("effect", order_id)

    # Only in the worker process (its real environment), never in the test's: the signal
    # is process-wide.
    if os.environ.get("TEST_KILL_AFTER_DLQ") == "1" and env is os.environ:
        from celery_reliable.dlq.signals import task_dead_lettered

        @task_dead_lettered.connect(weak=False)
        def die_once(sender: str, task_id: str, **kwargs: Any) -> None:
            """Dies right after the dead letter is published and indexed, before the ack
            (the first time per task only: the redelivered copy must get through)."""
            if kwargs.get("app") is app and counter.incr("killed", task_id) == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    @app.task(name="shop.refresh", shared=False, base=ReliableTask)
    def refresh(item: int, hold: float = 0.0) -> int:
        """No declared key: each publish is one outcome.  Counts 'start' and 'effect'."""
        counter.incr("start", item)
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return counter.incr("effect", item)

    @app.task(name="shop.refresh_unique", shared=False, base=ReliableTask,
              idempotency_key=ARGUMENTS)
    def refresh_unique(item: int) -> int:
        """Opted in: the same arguments are the same outcome."""
        return counter.incr("effect", item)

    @app.task(name="shop.refresh_gated", shared=False, base=ReliableTask)
    def refresh_gated(item: int) -> int:
        """No declared key; fails for good until the test sets '<prefix>:refresh_fixed'."""
        counter.incr("start", item)
        if not counter.client.exists(f"{prefix}:refresh_fixed"):
            raise PermanentError(f"item {item} cannot be refreshed yet")
        return counter.incr("effect", item)

    @app.task(name="shop.tick", shared=False, base=ReliableTask, bind=True)
    def tick(self: ReliableTask, label: str) -> int:
        """A periodic task with fixed arguments: counts its runs per schedule slot."""
        return counter.incr("slot", self.idempotency_key)

    if env.get("TEST_BEAT"):
        app.conf.beat_scheduler = "celery_reliable.beat:PersistentScheduler"
        app.conf.beat_max_loop_interval = 0.2  # wake often: slots are seconds apart here
        app.conf.beat_schedule = {"tick": beat_entry(env)}

    @app.task(name="shop.third_party_add", shared=False)
    def third_party_add(x: int, y: int) -> int:
        """A plain Celery task, as a library would ship it."""
        return x + y

    @app.task(name="shop.orders_of", shared=False)
    def orders_of(receipts: list[dict[str, Any]]) -> list[int]:
        """A chord's callback: the orders of its members' receipts."""
        return [receipt["order"] for receipt in receipts]

    @app.task(name="shop.kill_own_worker", shared=False, base=ReliableTask,
              idempotency_key="crash:{order_id}")
    def kill_own_worker(order_id: int) -> None:
        """Dies with its worker on every run, like a task that runs out of memory."""
        counter.incr("start", order_id)
        os.kill(os.getpid(), signal.SIGKILL)

    return app


app = build(os.environ)
