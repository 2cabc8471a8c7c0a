"""How the workers are configured to hold late-ack messages and to stop: prefetch,
soft shutdown, and what happens to running tasks when the broker connection drops.

Judged from the configuration (``worker_*`` settings); options given on the worker's
command line (``-c``, ``--prefetch-multiplier``) are not visible here, except the
concurrency ``reliable-check --concurrency`` is told.
"""

from __future__ import annotations

import os

import celery

from celery_reliable.doctor.deployment import Deployment
from celery_reliable.findings import Finding
from celery_reliable.worker.transport import is_redis_broker


def prefetch(d: Deployment) -> list[Finding]:
    """Every prefetched message is unacknowledged (late ack): a worker crash leaves them
    all to redelivery or rescue, and on Redis one that waits behind long tasks reaches
    the ``visibility_timeout`` and is delivered again."""
    multiplier = int(d.conf.worker_prefetch_multiplier)
    concurrency = d.concurrency or d.conf.worker_concurrency or os.cpu_count() or 1
    where = ("--concurrency" if d.concurrency else "worker_concurrency"
             if d.conf.worker_concurrency else "this machine's CPU count")
    limit = d.settings.check_max_prefetch
    if multiplier <= 0:
        held = "every message in the queue (worker_prefetch_multiplier 0: no limit)"
    elif multiplier * concurrency > limit:
        held = (f"{multiplier * concurrency} messages (worker_prefetch_multiplier "
                f"{multiplier} x {concurrency} processes, {where})")
    else:
        return []
    return [Finding(
        "worker.prefetch", "warning",
        f"each worker holds up to {held} unacknowledged: a crash sends them all back at "
        f"once, and one waiting behind long tasks can be delivered again (more than "
        f"reliable_check_max_prefetch {limit})",
        "Set worker_prefetch_multiplier = 1 for long-running tasks (and start workers with "
        "-O fair), or raise reliable_check_max_prefetch if this is intended",
        "operating.md#prefetch",
    )]


def soft_shutdown(d: Deployment) -> list[Finding]:
    """Celery 5.5+ soft shutdown lets running tasks finish, and requeues prefetched and
    ETA messages on a warm shutdown (celery/kombu#533); off by default."""
    version = tuple(int(p) for p in celery.__version__.split(".")[:2])
    if version < (5, 5):
        return [Finding(
            "worker.soft_shutdown", "warning",
            f"Celery {celery.__version__} has no soft shutdown: a warm shutdown with Redis "
            "can lose prefetched and ETA messages (celery/kombu#533)",
            "Upgrade to Celery 5.5 or later and set worker_soft_shutdown_timeout",
            "operating.md#soft-shutdown",
        )]
    if float(d.conf.worker_soft_shutdown_timeout or 0) <= 0:
        return [Finding(
            "worker.soft_shutdown", "warning",
            "worker_soft_shutdown_timeout is 0 (soft shutdown off): a second Ctrl-C or "
            "a deploy's SIGQUIT kills running tasks at once, and with Redis prefetched and "
            "ETA messages can be lost on shutdown (celery/kombu#533)",
            "Set worker_soft_shutdown_timeout to the seconds a deploy waits (e.g. 30, "
            "below its SIGKILL), and worker_enable_soft_shutdown_on_idle = True with Redis",
            "operating.md#soft-shutdown",
        )]
    if is_redis_broker(d.app) and not d.conf.worker_enable_soft_shutdown_on_idle:
        return [Finding(
            "worker.soft_shutdown_on_idle", "warning",
            "worker_enable_soft_shutdown_on_idle is off with a Redis broker: a worker that "
            "holds only ETA and countdown messages (retries, deferrals) counts as idle and "
            "skips the soft shutdown that would requeue them",
            "Set worker_enable_soft_shutdown_on_idle = True",
            "operating.md#soft-shutdown",
        )]
    return []


def connection_loss(d: Deployment) -> list[Finding]:
    """A late-ack task still running when the broker connection drops is redelivered,
    and then runs twice unless Celery cancels it (Celery 6 turns this on)."""
    if d.conf.get("worker_cancel_long_running_tasks_on_connection_loss"):
        return []
    return [Finding(
        "worker.connection_loss", "warning",
        "worker_cancel_long_running_tasks_on_connection_loss is off: a late-ack task "
        "still running when the broker connection drops is delivered again and runs "
        "a second time (a ReliableTask's claim holds the copy off; other tasks run twice)",
        "Set worker_cancel_long_running_tasks_on_connection_loss = True",
        "operating.md#connection-loss",
    )]
