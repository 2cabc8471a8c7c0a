"""Observing plain tasks through Celery's signals costs nothing unless an app asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from celery.signals import before_task_publish, task_prerun

import celery_reliable
from celery_reliable import ReliableTask
from celery_reliable.states import signals as observe

HANDLERS = ((before_task_publish, "celery_reliable.observe.on_publish"),
            (task_prerun, "celery_reliable.observe.on_prerun"))


def observing() -> bool:
    """Whether our observing handlers are connected (to every sender)."""
    return any(key[0] == uid for signal, uid in HANDLERS for key, _ in signal.receivers)


@pytest.fixture
def disconnected() -> Iterator[None]:
    """Start without the handlers (other tests of this process may have connected them)."""
    def off() -> None:
        for signal, uid in HANDLERS:
            signal.disconnect(dispatch_uid=uid)

    off()
    yield
    observe.connect()  # as other tests may have left them: connected, each checks its app


def test_an_app_with_reliable_tasks_that_does_not_observe_adds_no_receivers(
    disconnected: None,
) -> None:
    app = Celery("quiet", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    assert app.conf.reliable_store_url  # reading it loads the configuration

    @app.task(base=ReliableTask, shared=False)
    def send_receipt(order_id: int) -> None: ...

    assert send_receipt.name  # the task is made, and the app installed
    assert app.steps["worker"] and not observing()


def test_an_app_that_observes_connects_them_once_it_is_configured(disconnected: None) -> None:
    app = Celery("observer", set_as_current=False)
    celery_reliable.install(app)  # before its configuration is loaded
    assert not app.configured and not observing()
    app.conf.reliable_record_all_tasks = True
    assert app.conf.reliable_record_all_tasks  # reading it loads the configuration
    assert observing()
