"""What the worker bootstep sets up: default time limits and broker transport options."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.runtime import reset, runtime
from celery_reliable.worker.limits import apply_default_limits
from celery_reliable.worker.transport import apply_defaults


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery(f"setup{uuid.uuid4().hex[:6]}", broker="redis://127.0.0.1:6379/14",
                 set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    yield app
    reset(app)


def test_tasks_without_limits_get_the_defaults(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False)
    def unlimited() -> None: ...

    @app.task(base=ReliableTask, shared=False, time_limit=60)
    def limited() -> None: ...

    app.finalize()
    changed = apply_default_limits(app, runtime(app).settings, [unlimited, limited])
    assert unlimited.time_limit == 1800 and unlimited.soft_time_limit == 1740
    assert limited.time_limit == 60 and limited.soft_time_limit == pytest.approx(58.2)
    assert changed == [unlimited.name, limited.name]


def test_app_wide_limits_are_respected(app: Celery) -> None:
    app.conf.task_time_limit, app.conf.task_soft_time_limit = 100, 90

    @app.task(base=ReliableTask, shared=False)
    def task() -> None: ...

    app.finalize()
    assert apply_default_limits(app, runtime(app).settings, [task]) == []
    assert (task.time_limit, task.soft_time_limit) == (100, 90)  # the app's limits apply


def test_redis_visibility_timeout_covers_the_longest_hold(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, time_limit=7200)
    def long_task() -> None: ...

    app.finalize()
    lines = apply_defaults(app, runtime(app).settings, [long_task])
    assert app.conf.broker_transport_options["visibility_timeout"] == 7260
    assert any("visibility_timeout=7260" in line for line in lines)
    assert any("within about 35 s" in line for line in lines)


def test_a_visibility_timeout_set_by_the_user_is_kept(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.broker_transport_options = {"visibility_timeout": 60}

    @app.task(base=ReliableTask, shared=False, time_limit=600)
    def long_task() -> None: ...

    app.finalize()
    apply_defaults(app, runtime(app).settings, [long_task])
    assert app.conf.broker_transport_options["visibility_timeout"] == 60
    assert "reaches the Redis visibility_timeout" in caplog.text
