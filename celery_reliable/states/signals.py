"""Recording for tasks that are not ReliableTasks (third-party tasks), through signals.

With ``reliable_record_all_tasks = True`` every task of the app is recorded,
not only the reliable ones: a library's ``@shared_task`` shows up in timelines,
stuck lists and stats too.  Reliability (claims, rescue, dead letters) still
needs ``ReliableTask``; these tasks are only observed.  ReliableTasks record
themselves and are skipped here.  An observed task's key is its publish (its task
id), as for a ReliableTask that declares none: ``reliable-tasks timeline --key`` finds it.

Publishing is recorded from ``before_task_publish``, which names no app: the
task is looked up in the current app.

The handlers are connected only once an app turns the setting on (read when
the app is configured), not for every app that has a ReliableTask: a connected
receiver makes Celery dispatch the signal for every publish and every run of
every task of the process, about a microsecond each, for nothing when no app
observes.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, current_app
from celery.signals import (
    before_task_publish,
    task_failure,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
)

from celery_reliable.headers import HEADER_KEY
from celery_reliable.identity import is_reliable
from celery_reliable.states.machine import State
from celery_reliable.states.runtime import recorder

logger = logging.getLogger("celery_reliable")


def _observed(task: Any) -> Celery | None:
    """The app of ``task`` when it is a plain task of an app that records all tasks."""
    if task is None or is_reliable(task):
        return None  # records itself
    app: Celery = task._get_app()
    if not app.conf.get("reliable_record_all_tasks"):
        return None
    from celery_reliable.runtime import runtime

    return app if runtime(app).settings.record_all_tasks else None



def _record(
    task: Any, task_id: str, *states: State, request: Any = None, **extra: Any
) -> None:
    """Record that an observed task moved through ``states`` (``extra``: for the last)."""
    app = _observed(task)
    if app is None or not task_id:
        return
    request = request if request is not None else task.request
    recorder(app).transitions(
        task_id, task.name, task_id, states,
        attempt=int(getattr(request, "retries", 0) or 0) + 1,
        worker=getattr(request, "hostname", None), **extra,
    )


def on_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    if not headers or HEADER_KEY in headers:
        return  # a ReliableTask's message: it records itself
    task = current_app.tasks.get(sender) if isinstance(sender, str) else None
    if task is None or not headers or _observed(task) is None:
        return
    recorder(task._get_app()).transition(
        headers.get("id"), task.name, headers.get("id"), State.PENDING,
        attempt=int(headers.get("retries") or 0) + 1,
    )


def on_prerun(sender: Any = None, task_id: str = "", **_: Any) -> None:
    _record(sender, task_id, State.RECEIVED, State.STARTED)


def on_success(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        _record(sender, sender.request.id, State.SUCCEEDED)


def on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    if request is not None:
        error = reason if isinstance(reason, BaseException) else None
        _record(sender, request.id, State.RETRY_SCHEDULED, request=request, error=error)


def on_failure(
    sender: Any = None, task_id: str = "", exception: BaseException | None = None, **_: Any
) -> None:
    # A plain task has no dead letters of its own: its failure is final.
    _record(sender, task_id, State.FAILED, error=exception)
    _record(sender, task_id, State.DEAD_LETTERED, detail={"reason": "failed", "observed": True})


def on_revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    if request is not None:
        _record(sender, request.id, State.EXPIRED if expired else State.REVOKED,
                State.DEAD_LETTERED, request=request,
                detail={"reason": "expired" if expired else "revoked", "observed": True})


def install(app: Celery) -> None:
    """Connect the handlers if ``app`` records all its tasks: now if it is configured,
    else once it is (``on_after_configure``)."""
    if app.configured:
        _connect_if_observing(app)
    else:
        app.on_after_configure.connect(_after_configure, weak=False,
                                       dispatch_uid="celery_reliable.observe.configure")


def _after_configure(sender: Celery, **_: Any) -> None:
    _connect_if_observing(sender)


def _connect_if_observing(app: Celery) -> None:
    if app.conf.get("reliable_record_all_tasks"):
        connect()


def connect() -> None:
    """Connect once per process; each handler checks the task's app setting."""
    for signal, handler in (
        (before_task_publish, on_publish), (task_prerun, on_prerun),
        (task_success, on_success), (task_retry, on_retry), (task_failure, on_failure),
        (task_revoked, on_revoked),
    ):
        signal.connect(handler, dispatch_uid=f"celery_reliable.observe.{handler.__name__}",
                       weak=False)
