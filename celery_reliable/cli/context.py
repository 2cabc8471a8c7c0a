"""Which Celery app a sub-command works on, checked before the command does anything.

``celery reliable-dlq list`` without ``-A`` runs on Celery's fallback app, which has
no configuration at all: the user forgot ``-A``, and saying "reliable_store_url is
not set" would send them looking for a setting they did set, in their own app.

Every command validates the app's configuration first (the ``reliable_*``
settings, then each reliable task's options and key template, which are checked
when Celery binds the tasks), so that a configuration error ends any command the
same way: one ``error:`` line on standard error and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from celery import Celery, _state

from celery_reliable.errors import ReliableError
from celery_reliable.identity import is_reliable
from celery_reliable.runtime import runtime

_FALLBACK_MAIN = "default"


def app_of(ctx: click.Context) -> Celery:
    """The app given with ``-A``, its configuration validated; exits 2 with one
    ``error:`` line when no app was given or its configuration is invalid."""
    app: Celery = ctx.obj.app
    if _is_fallback(app):
        words = ctx.command_path.split()
        command = " ".join(words[1:] if words[:1] == ["celery"] else words)
        _fail(f"no Celery app given: name yours with -A before the sub-command, e.g. "
              f"`celery -A proj {command}` (proj: the module that creates your Celery app)")
    try:
        validate(app)
    except ReliableError as exc:
        _fail(str(exc))
    return app


def validate(app: Celery) -> None:
    """Raise the first configuration error of ``app``: its settings, then its tasks
    (binding them checks their key templates and options)."""

    runtime(app)
    app.loader.import_default_modules()
    for task in list(app.tasks.values()):
        if is_reliable(task):
            task.reliable_settings()


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _is_fallback(app: Celery) -> bool:
    """Celery's own fallback app (``-A`` omitted), unless a config module (``--config``,
    CELERY_CONFIG_MODULE) gave it a store: then it is what the user meant to use."""
    if app is not _state.default_app or app.main != _FALLBACK_MAIN:
        return False
    conf = app.conf
    return not (conf.get("reliable_store_url") or conf.get("CELERY_RELIABLE_STORE_URL"))
