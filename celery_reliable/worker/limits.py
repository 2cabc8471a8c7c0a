"""Time limits are mandatory for reliable tasks.

A body that hangs forever holds its key's lease forever (the heartbeat keeps
renewing it), so the task can never be retried or rescued.  At worker start,
every reliable task without a time limit (its own or the app's
``task_time_limit``) gets ``reliable_default_time_limit`` and
``reliable_default_soft_time_limit``.  The soft limit raises
``SoftTimeLimitExceeded`` in the body, which the retry policy treats as transient.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery

from celery_reliable.settings import Settings

logger = logging.getLogger("celery_reliable")


def apply_default_limits(app: Celery, settings: Settings, tasks: Iterable[Any]) -> list[str]:
    """Give limit-less reliable tasks the default limits; the names of the tasks changed."""
    changed = []
    for task in tasks:
        touched = False
        if task.time_limit is None and app.conf.task_time_limit is None:
            task.time_limit = settings.default_time_limit
            touched = True
        if task.soft_time_limit is None and app.conf.task_soft_time_limit is None:
            soft = settings.default_soft_time_limit
            hard = task.time_limit or app.conf.task_time_limit
            task.soft_time_limit = min(soft, hard * 0.97) if hard else soft
            touched = True
        if touched:
            changed.append(task.name)
    if changed:
        logger.info(
            "celery_reliable: default time limits (hard %g s, soft %g s) given to %s",
            settings.default_time_limit, settings.default_soft_time_limit, ", ".join(changed),
        )
    return changed
