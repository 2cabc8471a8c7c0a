"""The harness with a Flask app factory: the tasks run in the Flask app's context, on
the test's store, as docs/testing.md tells a Flask user to set it up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from flask import Flask, current_app

from celery_reliable.contrib.flask import celery_init_app
from celery_reliable.testing import Harness

welcomed: list[str] = []


def create_app(testing: bool = False) -> Flask:
    flask_app = Flask("flaskshop")
    flask_app.config["CELERY"] = {
        "broker_url": "memory://",
        "reliable_store_url": "redis://127.0.0.1:1/1",  # development: never reached here
        "task_default_queue": "flaskshop",
    }
    flask_app.config["TESTING"] = testing
    celery_app = celery_init_app(flask_app)

    @celery_app.task(idempotency_key="welcome:{user_id}", shared=False)
    def send_welcome(user_id: int) -> None:
        welcomed.append(f"{current_app.name} welcomed {user_id}")  # needs the app context

    return flask_app


@pytest.fixture
def reliable_celery_app() -> Iterator[Celery]:
    celery_app: Celery = create_app(testing=True).extensions["celery"]
    yield celery_app


def test_a_flask_task_runs_once_in_its_app_context(
    reliable: Harness, reliable_worker: Any
) -> None:
    welcomed.clear()
    send_welcome = reliable.app.tasks[f"{__name__}.send_welcome"]
    first = send_welcome.delay(3)
    send_welcome.delay(3)
    reliable.assert_ran_once(first)
    assert welcomed == ["flaskshop welcomed 3"]
