"""Definition errors of reliable tasks met while a worker starts: kept for its start-up step.

A worker finalizes the app (creating every task: where ReliableTask checks its
options, key template and ``fingerprint_exclude``) in Celery's
``WorkController.__init__``, before any bootstep is built and before the
``celeryd_init``/``worker_init`` signals are sent.  An error raised there escapes
as Celery's whole start-up traceback, the message at the bottom.  So while the
app's loader is initializing a worker (Celery's ``init_worker`` sets
``loader.worker_initialized`` before that finalize; beat calls it too), such an
error is kept for the app instead, and the worker's reliable bootstep ends the
start with it: one line, the traceback at debug level
(:func:`celery_reliable.worker.steps.refuse_to_start`).  Anywhere else (a web
process, a test, a shell) it is raised at once, at definition.

A kept error stays with its task as well: a publish of that task raises it (beat,
which has no reliable bootstep, fails each send of that task with it, as it would
have failed formatting the key).
"""

from __future__ import annotations

import logging
from typing import Any
from weakref import WeakKeyDictionary

from celery import Celery

from celery_reliable.errors import ReliableError

logger = logging.getLogger("celery_reliable")

_kept: WeakKeyDictionary[Celery, list[ReliableError]] = WeakKeyDictionary()


def refuse(app: Celery | None, task: type[Any], error: ReliableError) -> None:
    """Raise ``error`` of the task class ``task`` now, or keep it for the worker's start."""
    if app is None or not getattr(app.loader, "worker_initialized", False):
        raise error
    if task.__dict__.get("definition_error") is None:
        task.definition_error = error
    errors = _kept.setdefault(app, [])
    if str(error) not in map(str, errors):  # a finalize binds each task again
        errors.append(error)
    logger.debug("celery_reliable: %s (kept for the worker's start-up step)", error)


def kept(app: Celery) -> list[ReliableError]:
    """The definition errors kept for ``app`` while its worker started, in order."""
    return list(_kept.get(app, ()))
