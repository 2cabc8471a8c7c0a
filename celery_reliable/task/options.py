"""Task options that look like ours but are not: refused when the task is defined.

Celery sets every decorator option as a class attribute of the task
(``@app.task(base=ReliableTask, lease_second=120)`` makes ``lease_second = 120``)
and never complains about a name it does not know, so a typo of one of our
options would silently run the task with the default.  As with the
``reliable_*`` settings, a near miss of one of our option names is an error
naming the closest one.  Only near misses are refused: Celery's own options
(``queue``, ``autoretry_for``, ``retry_backoff``, ``rate_limit``, ...) and the
user's own attributes are none of our business.
"""

from __future__ import annotations

import difflib

from celery import Task

from celery_reliable.errors import ConfigurationError
from celery_reliable.settings import Settings, per_task_names
from celery_reliable.spelling import Spelling

#: options a task class carries besides the per-task settings
_CLASS_OPTIONS = frozenset({
    "idempotency_key", "key_source", "retry_on", "permanent_on", "retry_classifier",
    "dependency", "deadline", "fingerprint_exclude",
})

#: Celery's task options that are not attributes of ``celery.Task`` (read with
#: ``getattr(task, name, default)`` by Celery 5.x: autoretry, routing, pydantic)
_CELERY_OPTIONS = frozenset({
    "autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff",
    "retry_backoff_max", "retry_jitter", "override_max_retries", "queue", "routing_key",
    "exchange", "exchange_type", "binding_key", "store_eager_result", "stamped_headers",
    "pydantic", "pydantic_strict", "pydantic_context", "pydantic_dump_kwargs",
})

#: how close a name must be to ours to be called a typo (difflib's ratio):
#: ``lease_second`` 0.96, ``lease_secs`` 0.87; ``dependencies`` (0.82) is left alone
_CUTOFF = 0.85


def options() -> frozenset[str]:
    """Every option name a ReliableTask class understands."""
    return per_task_names() | _CLASS_OPTIONS


def check(cls: type[Task]) -> None:
    """Refuse a class attribute of ``cls`` that is a near miss of one of our options,
    or an app-wide setting given as a task option."""
    ours = options()
    app_wide = {name for name in Settings.__dataclass_fields__ if name not in ours}
    for name, value in cls.__dict__.items():
        if name.startswith("_") or name in ours or name in _CELERY_OPTIONS:
            continue
        if any(name in base.__dict__ for base in cls.__mro__[1:]) or hasattr(Task, name):
            continue  # defined by a base class: Celery's, ours or the user's
        task = cls.__dict__.get("name") or cls.__qualname__
        if name in app_wide:
            app = cls.__dict__.get("app")  # a decorator task's (the namespace spells it)
            spelling = Spelling.of_namespace(getattr(app, "namespace", None))
            raise ConfigurationError(
                f"{task} sets {name}={value!r}, but {name} is an app-wide setting, not a "
                f"task option: {spelling.where(name, value)}"
            )
        close = difflib.get_close_matches(name, sorted(ours), n=1, cutoff=_CUTOFF)
        if close:
            raise ConfigurationError(
                f"{task} sets {name}={value!r}, which is not a ReliableTask option; did you "
                f"mean {close[0]}? (an attribute of your own: give it another name)"
            )
