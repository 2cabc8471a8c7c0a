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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celery_reliable.findings import Finding
from celery_reliable.identity import is_reliable
from celery_reliable.settings import Settings

logger = logging.getLogger("celery_reliable")

MIN_VISIBILITY_TIMEOUT = 3600.0
MARGIN = 60.0


def is_redis_broker(app: Celery) -> bool:
    url = str(app.conf.broker_url or "")
    return url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))


@dataclass(frozen=True)
class Hold:
    """One way a worker keeps a message unacknowledged for ``seconds``: a late-ack task
    running to its time limit, or a retry or deferral waiting for its ETA (the worker
    holds an ETA message unacknowledged until it is due)."""

    seconds: float
    what: str
    reliable: bool


def holds(app: Celery, settings: Settings, tasks: Iterable[Any]) -> list[Hold]:
    """How long each of ``tasks`` can hold a message, as the worker will run it: a
    reliable task with the default time limit the worker gives it, its retry backoff
    cap and its deferrals; a plain task with ``acks_late`` its time limit, a plain
    task with ``autoretry_for`` its retry delay.  Delays a body passes itself
    (``self.retry(countdown=...)``, ``apply_async(eta=...)``) are not known here."""
    found = []
    for task in tasks:
        if is_reliable(task):
            s = task.reliable_settings()
            limit = task.time_limit or app.conf.task_time_limit or settings.default_time_limit
            found.append(Hold(float(limit), f"{task.name}'s time limit", True))
            found.append(Hold(s.retry_backoff_cap, f"{task.name}'s retry backoff cap "
                                                   "(reliable_retry_backoff_cap)", True))
            found.append(Hold(s.retry_budget_window * 1.5, f"{task.name}'s deferral when its "
                              "retry budget is spent (1.5 x reliable_retry_budget_window)", True))
            if task.dependency is not None:
                found.append(Hold(settings.breaker_cool_down + 1.0, f"{task.name}'s deferral "
                                  "while its breaker is open (reliable_breaker_cool_down)", True))
        elif not task.name.startswith("celery."):
            found.extend(_plain_holds(app, task))
    return found


def _plain_holds(app: Celery, task: Any) -> list[Hold]:
    found = []
    limit = task.time_limit or app.conf.task_time_limit
    if task.acks_late and limit:
        found.append(Hold(float(limit), f"{task.name}'s time limit (acks_late)", False))
    if getattr(task, "autoretry_for", ()):
        if getattr(task, "retry_backoff", False):
            delay, option = getattr(task, "retry_backoff_max", 600), "retry_backoff_max"
        else:
            delay, option = task.default_retry_delay or 0, "default_retry_delay"
        found.append(Hold(float(delay), f"{task.name}'s retry delay ({option})", False))
    return found


def longest_hold(app: Celery, settings: Settings, tasks: Sequence[Any]) -> float:
    """The longest a worker may hold a message of ``tasks`` unacknowledged."""
    found = [h.seconds for h in holds(app, settings, tasks)]
    return float(max([app.conf.task_time_limit or 0.0, settings.retry_backoff_cap, *found]))


def visibility_timeout(app: Celery, settings: Settings, tasks: Sequence[Any]) -> float:
    """The Redis broker's ``visibility_timeout`` the worker runs with: the user's, else
    the longest hold of the reliable ``tasks`` plus a margin, at least an hour."""
    options = app.conf.broker_transport_options or {}
    if "visibility_timeout" in options:
        return float(options["visibility_timeout"])
    return max(MIN_VISIBILITY_TIMEOUT, longest_hold(app, settings, tasks) + MARGIN)


def apply_defaults(app: Celery, settings: Settings, tasks: Sequence[Any]) -> list[str]:
    """Set transport defaults the user left unset, warn of what they cannot fix; lines
    describing the recovery bound.  ``tasks``: the reliable tasks."""
    if is_redis_broker(app):
        options = dict(app.conf.broker_transport_options or {})
        if "visibility_timeout" not in options:
            options["visibility_timeout"] = visibility_timeout(app, settings, tasks)
            app.conf.broker_transport_options = options
        for finding in hold_findings(app, settings, list(app.tasks.values())):
            logger.warning("celery_reliable: %s", finding)
    return recovery_lines(app, settings, tasks)


def recovery_lines(app: Celery, settings: Settings, tasks: Sequence[Any]) -> list[str]:
    """How fast a crashed worker's task comes back, in words (``tasks``: the reliable
    tasks, whose holds decide the default ``visibility_timeout``)."""
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
        timeout = visibility_timeout(app, settings, tasks)
        lines.append(
            f"Redis broker visibility_timeout={timeout:g} s (backstop redelivery"
            + ("" if settings.rescue_enabled else "; the ONLY crash recovery: the rescuer is off")
            + ")"
        )
    elif not settings.rescue_enabled:
        lines.append("crash recovery relies on the broker alone: the rescuer is off")
    return lines


def hold_findings(app: Celery, settings: Settings, tasks: Sequence[Any]) -> list[Finding]:
    """What the Redis broker's ``visibility_timeout`` (as the worker will run with it)
    makes Redis deliver twice: a message held longer than it, and a completion of a
    task without a declared key forgotten before a lost acknowledgement's redelivery.
    ``tasks``: every task of the app."""
    if not is_redis_broker(app):
        return []
    reliable = [t for t in tasks if is_reliable(t)]
    timeout = visibility_timeout(app, settings, reliable)
    found = []
    over = sorted((h for h in holds(app, settings, tasks) if h.seconds >= timeout),
                  key=lambda h: -h.seconds)
    if over:
        plain = [h for h in over if not h.reliable]
        others = f" (and {len(over) - 1} more: {', '.join(h.what for h in over[1:4])})" if (
            len(over) > 1) else ""
        effect = ("a task that is not a ReliableTask then runs twice" if plain else
                  "the claim holds the copy off, at the cost of a redelivery each time")
        found.append(Finding(
            "broker.visibility_timeout", "error" if plain else "warning",
            f"{over[0].what} ({over[0].seconds:g} s) reaches the Redis visibility_timeout "
            f"({timeout:g} s){others}: Redis will deliver it again while the first copy is "
            f"held; {effect}",
            f"Raise broker_transport_options['visibility_timeout'] above "
            f"{over[0].seconds + MARGIN:g} s",
            "operating.md#visibility-timeout",
        ))
    retention = min([settings.publish_key_retention] + [
        t.publish_key_retention for t in reliable
        if getattr(t, "publish_key_retention", None) is not None])
    if reliable and retention <= timeout + MARGIN:
        found.append(Finding(
            "broker.publish_key_retention", "error",
            f"reliable_publish_key_retention ({retention:g} s) is not longer than the Redis "
            f"visibility_timeout ({timeout:g} s): a task without a declared key whose "
            "acknowledgement is lost can be delivered again after its completion was "
            "forgotten, and run twice",
            f"Raise reliable_publish_key_retention above {timeout + MARGIN:g} s",
            "operating.md#visibility-timeout",
        ))
    return found
