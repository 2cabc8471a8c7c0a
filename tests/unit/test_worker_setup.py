"""What the worker bootstep sets up: default time limits and broker transport options."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def test_a_bad_setting_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    """The real ``celery worker``: a typo in a setting is one line naming the setting and
    the fix, not Celery's 55-line start-up traceback with the message at the bottom."""
    (tmp_path / "typo_app.py").write_text(
        "from celery import Celery\n"
        "from celery_reliable import ReliableTask\n"
        "app = Celery('typo_app', broker='memory://')\n"
        "app.conf.reliable_store_url = 'memory://'\n"
        "app.conf.reliable_lease_second = 10\n"
        "@app.task(base=ReliableTask)\n"
        "def noop():\n"
        "    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run([str(celery), "-A", "typo_app", "worker", "-P", "solo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert ("celery_reliable: the worker cannot start: unknown setting "
            "reliable_lease_second; did you mean reliable_lease_seconds?") in done.stderr


def test_a_bad_task_definition_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    """The real ``celery worker``: Celery finalizes the app (where a task's key template
    and options are checked) before any bootstep; the error is still one line naming the
    task and the fix, not the start-up traceback."""
    (tmp_path / "bad_tasks.py").write_text(
        "from celery import Celery\n"
        "from celery_reliable import ReliableTask\n"
        "app = Celery('bad_tasks', broker='memory://')\n"
        "app.conf.reliable_store_url = 'memory://'\n"
        "@app.task(base=ReliableTask, idempotency_key='receipt:{order}')\n"
        "def send_receipt(order_id):\n"
        "    pass\n"
        "@app.task(base=ReliableTask, lease_second=5)\n"
        "def refund(order_id):\n"
        "    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run([str(celery), "-A", "bad_tasks", "worker", "-P", "solo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if "celery_reliable" in line]
    assert line.startswith("celery_reliable: the worker cannot start: ")
    assert ("idempotency_key template 'receipt:{order}' names 'order', but "
            "bad_tasks.send_receipt takes (order_id); use one of those names") in line
    assert "sets lease_second=5, which is not a ReliableTask option; did you mean " \
           "lease_seconds?" in line


def test_outside_a_worker_a_bad_definition_raises_at_once(app: Celery) -> None:
    from celery_reliable import IdempotencyKeyError

    @app.task(base=ReliableTask, shared=False, idempotency_key="receipt:{order}")
    def send_receipt(order_id: int) -> None: ...

    with pytest.raises(IdempotencyKeyError, match="names 'order'"):
        app.finalize()
