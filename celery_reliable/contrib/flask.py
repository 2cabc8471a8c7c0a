"""Reliable tasks in a Flask app: the body runs inside the app's context.

Flask's documented Celery pattern is a task base class whose ``__call__`` wraps
the body in ``app.app_context()``.  With ReliableTask that pattern is safe (the
guarantees live in ``run``, see :mod:`celery_reliable.task.guard`), and this
module ships it ready-made::

    from celery_reliable.contrib.flask import celery_init_app

    flask_app = Flask(__name__)
    flask_app.config["CELERY"] = {"broker_url": "redis://...", "reliable_store_url": "..."}
    celery_app = celery_init_app(flask_app)

    @celery_app.task(idempotency_key="receipt:{order_id}")
    def send_receipt(order_id): ...          # current_app and db sessions work here

Needs Flask (``pip install celery-reliable[flask]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery

from celery_reliable.errors import ConfigurationError
from celery_reliable.task import ReliableTask

if TYPE_CHECKING:
    from flask import Flask

#: where :func:`celery_init_app` keeps the Flask app on the Celery app
FLASK_APP_ATTRIBUTE = "flask_app"


class FlaskReliableTask(ReliableTask):
    """A ReliableTask whose body runs in its Flask app's ``app_context()``.

    The Flask app is the one :func:`celery_init_app` attached to the task's Celery
    app (or ``celery_app.flask_app = flask_app``, set by hand).
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with flask_app_of(self._get_app()).app_context():
            return super().__call__(*args, **kwargs)


def flask_app_of(celery_app: Celery) -> Flask:
    """The Flask app attached to ``celery_app``; a clear error when there is none."""
    flask_app = getattr(celery_app, FLASK_APP_ATTRIBUTE, None)
    if flask_app is None:
        raise ConfigurationError(
            f"FlaskReliableTask needs the Flask app of Celery app {celery_app.main!r}: create "
            "it with celery_reliable.contrib.flask.celery_init_app(flask_app), or set "
            "celery_app.flask_app = flask_app"
        )
    return flask_app  # type: ignore[no-any-return]


def celery_init_app(flask_app: Flask, config_key: str = "CELERY") -> Celery:
    """A Celery app for ``flask_app`` whose tasks are reliable and run in its context.

    Flask's own ``celery_init_app`` recipe with :class:`FlaskReliableTask` as the
    task class: the configuration is read from ``flask_app.config[config_key]``
    (``reliable_*`` settings included), the Celery app is the default one and is
    kept in ``flask_app.extensions["celery"]``.
    """
    celery_app = Celery(flask_app.name, task_cls=FlaskReliableTask)
    celery_app.config_from_object(flask_app.config.get(config_key, {}))
    setattr(celery_app, FLASK_APP_ATTRIBUTE, flask_app)
    celery_app.set_default()
    flask_app.extensions["celery"] = celery_app
    return celery_app
