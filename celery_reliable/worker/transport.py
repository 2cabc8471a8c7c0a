"""Broker transport defaults for apps that use ReliableTask, and the recovery bound.

With kombu's Redis transport an unacknowledged message comes back only after
``visibility_timeout`` (1 h by default), and a *low* value makes the broker
deliver long-running and ETA tasks again while the first copy still holds them
(celery/kombu#337).  Our rescuer bounds crash recovery by the claim's lease
instead (``reliable_lease_seconds`` + ``reliable_rescue_interval``), so the
broker's redelivery is only a backstop, and the safe choice is a timeout
longer than any message may be held: we set ``visibility_timeout`` to the
longest hard time limit or retry backoff cap of the app's reliable tasks plus a
margin, at least one hour, unless the user set it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery

from celery_reliable.settings import Settings

logger = logging.getLogger("celery_reliable")

MIN_VISIBILITY_TIMEOUT = 3600.0
MARGIN = 60.0


def is_redis_broker(app: Celery) -> bool:
    url = str(app.conf.broker_url or "")
    return url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))


def longest_hold(app: Celery, settings: Settings, tasks: Sequence[Any]) -> float:
    """The longest a worker may hold a message unacknowledged: a time limit, or a
    retry's countdown (Redis delivers an ETA message again after visibility_timeout)."""
    holds = [app.conf.task_time_limit or 0.0, settings.retry_backoff_cap]
    for task in tasks:
        holds.append(getattr(task, "time_limit", None) or 0.0)
        cap = getattr(task, "retry_backoff_cap", None)
        holds.append(cap if cap is not None else settings.retry_backoff_cap)
    return float(max(holds))


def apply_defaults(app: Celery, settings: Settings, tasks: Sequence[Any]) -> list[str]:
    """Set transport defaults the user left unset; lines describing the recovery bound."""
    lines = []
    if settings.rescue_enabled:
        bound = settings.lease_seconds + settings.rescue_interval
        lines.append(
            f"crash recovery: a dead worker's task is republished within about {bound:.0f} s "
            f"(reliable_lease_seconds={settings.lease_seconds:g} + "
            f"reliable_rescue_interval={settings.rescue_interval:g}); a message the broker "
            f"lost, after reliable_rescue_after={settings.rescue_after:g} s"
        )
    if is_redis_broker(app):
        options = dict(app.conf.broker_transport_options or {})
        if "visibility_timeout" not in options:
            options["visibility_timeout"] = max(
                MIN_VISIBILITY_TIMEOUT, longest_hold(app, settings, tasks) + MARGIN
            )
            app.conf.broker_transport_options = options
        timeout = float(options["visibility_timeout"])
        lines.append(
            f"Redis broker visibility_timeout={timeout:g} s (backstop redelivery"
            + ("" if settings.rescue_enabled else "; the ONLY crash recovery: the rescuer is off")
            + ")"
        )
        retention = min([settings.publish_key_retention] + [
            t.publish_key_retention for t in tasks
            if getattr(t, "publish_key_retention", None) is not None])
        if retention <= timeout + MARGIN:
            logger.warning(
                "reliable_publish_key_retention (%g s) is not longer than the Redis "
                "visibility_timeout (%g s): a task without a declared key whose "
                "acknowledgement is lost can be delivered again after its completion was "
                "forgotten, and run twice; raise reliable_publish_key_retention above %g s",
                retention, timeout, timeout + MARGIN,
            )
        longest = longest_hold(app, settings, tasks)
        if longest >= timeout:
            logger.warning(
                "a task's time limit or retry delay (%g s) reaches the Redis visibility_timeout "
                "(%g s): Redis will deliver it again while the first copy is held; raise "
                "broker_transport_options['visibility_timeout']", longest, timeout,
            )
    elif not settings.rescue_enabled:
        lines.append("crash recovery relies on the broker alone: the rescuer is off")
    return lines
