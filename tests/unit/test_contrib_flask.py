"""celery_reliable.contrib.flask: reliable tasks that run in their Flask app's context."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import celery._state
import pytest
from celery import Celery

from celery_reliable import ConfigurationError
from celery_reliable.contrib.flask import FlaskReliableTask, celery_init_app
from celery_reliable.runtime import reset, runtime

flask = pytest.importorskip("flask", reason="Flask is in the test extra: pip install -e '.[test]'")


@pytest.fixture
def celery_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    # celery_init_app makes its app the default one, as Flask's recipe does: undone after
    monkeypatch.setattr(celery._state, "default_app", celery._state.default_app)
    name = uuid.uuid4().hex[:6]
    flask_app = flask.Flask(f"shop{name}")
    flask_app.config["CELERY"] = {
        "broker_url": "memory://", "reliable_store_url": "memory://",
        "task_default_queue": f"work-{name}", "reliable_dlq_queue": f"dlq-{name}",
    }
    app = celery_init_app(flask_app)
    yield app
    reset(app)


def test_tasks_run_once_per_key_inside_the_app_context(celery_app: Celery) -> None:
    effects: list[str] = []

    @celery_app.task(shared=False, idempotency_key="receipt:{order_id}")
    def send_receipt(order_id: int) -> str:
        effects.append(flask.current_app.name)  # fails outside an app context
        return str(flask.current_app.name)

    flask_app = celery_app.flask_app  # type: ignore[attr-defined]
    assert isinstance(send_receipt._get_current_object(), FlaskReliableTask)
    assert flask_app.extensions["celery"] is celery_app
    assert celery_app.conf.reliable_store_url == "memory://"  # read from app.config["CELERY"]
    results = [send_receipt.apply((1,), task_id=str(uuid.uuid4())).get() for _ in range(3)]
    assert results == [flask_app.name] * 3
    assert effects == [flask_app.name]
    done = runtime(celery_app).store.get_key("receipt:1")
    assert done is not None and done.state == "done"
    assert send_receipt(1) == flask_app.name  # a direct call runs in the context too
    assert len(effects) == 2


def test_a_celery_app_without_its_flask_app_says_how_to_attach_it() -> None:
    app = Celery(f"bare{uuid.uuid4().hex[:6]}", broker="memory://", set_as_current=False,
                 task_cls=FlaskReliableTask)
    app.conf.reliable_store_url = "memory://"

    @app.task(shared=False)
    def task() -> None: ...

    try:
        with pytest.raises(ConfigurationError, match=r"celery_init_app\(flask_app\)"):
            task.apply(throw=True)
    finally:
        reset(app)
