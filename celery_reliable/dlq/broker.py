"""Taking messages off the DLQ queue: how replay, purge and reconcile keep it in step.

kombu has no "delete this message" operation, so :func:`sweep` consumes every
message that is in the queue when it starts, with manual acknowledgements, and
asks a decision per message: remove it (ack) or keep it (requeue).  The kept
ones are requeued at the end, in the order they were taken, which keeps their
order on both transports: RabbitMQ puts a rejected message back at its
position, kombu's Redis transport pushes it at the tail, behind nothing older.

A sweep that dies half-way (a crash, a lost connection) loses nothing: the
messages it had taken are unacknowledged and come back (RabbitMQ at once, Redis
after ``visibility_timeout``).  The queue is meant for dead letters only; no
worker should consume it.

On kombu's Redis transport a sweep costs about three round trips per message
(get, the unacked bookkeeping, ack).  :func:`remove_by_task_id` has a fast path
there: one Lua script per thousand messages rotates the queue's list (a kombu
5.x Redis queue is a list of JSON envelopes with a ``headers`` object), dropping
the messages whose ``x-reliable-task-id`` is to go.  Each call is atomic, so a
crash loses nothing either.  Anything else (RabbitMQ, a ``global_keyprefix``,
unreadable messages, which have no task id) takes the generic sweep.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from celery import Celery

from celery_reliable.dlq.message import H_TASK_ID, DeadLetterMessage, Unreadable, parse
from celery_reliable.dlq.publisher import dlq_connection, dlq_queue


@dataclass(frozen=True)
class Taken:
    """One message taken off the DLQ queue."""

    parsed: DeadLetterMessage | Unreadable
    identity: str
    """The task id of a dead letter; for an unreadable message, ``<kind>-<digest>``."""
    body: bytes
    content_type: str
    content_encoding: str
    headers: Mapping[str, Any]


@dataclass(frozen=True)
class SweepResult:
    removed: int
    kept: int


def identity(parsed: DeadLetterMessage | Unreadable, body: bytes,
             headers: Mapping[str, Any] | None) -> str:
    """A stable id: the task id, or a digest of an unreadable message's body and headers."""
    if isinstance(parsed, DeadLetterMessage):
        return parsed.task_id
    digest = hashlib.sha256(body)
    digest.update(json.dumps(headers, sort_keys=True, default=repr).encode())
    return f"{parsed.kind}-{digest.hexdigest()[:24]}"


def sweep(app: Celery, queue: str, remove: Callable[[Taken], bool]) -> SweepResult:
    """Take each message now in ``queue`` once; ack those ``remove`` says to, requeue the rest."""
    removed, kept = 0, []
    with dlq_connection(app) as connection:
        channel = connection.channel()
        bound = dlq_queue(queue).bind(channel)
        bound.declare()
        _, count, _ = bound.queue_declare()  # idempotent; passive fails on an empty Redis list
        try:
            for _ in range(count):
                message = bound.get(no_ack=False)
                if message is None:
                    break
                if remove(_taken(message)):
                    message.ack()
                    removed += 1
                else:
                    kept.append(message)
        finally:
            for message in kept:
                message.requeue()
    return SweepResult(removed, len(kept))


#: One call looks at this many messages (keeps each script short).
_ROTATE_BATCH = 1000
_ROTATE = (resources.files("celery_reliable.dlq") / "lua" / "rotate.lua").read_text()

def remove_by_task_id(app: Celery, queue: str, task_ids: set[str]) -> int:
    """Take the dead letters of ``task_ids`` off ``queue`` (every copy); how many."""
    with dlq_connection(app) as connection:
        channel = connection.default_channel
        redis_list = connection.transport.driver_type == "redis" and not getattr(
            channel, "global_keyprefix", "")
        if redis_list:
            dlq_queue(queue).bind(channel).declare()
            return _rotate(channel.client, queue, task_ids)
    return sweep(app, queue, lambda taken: taken.identity in task_ids).removed


def _rotate(client: Any, key: str, task_ids: set[str]) -> int:
    rotate = client.register_script(_ROTATE)
    left, removed = int(client.llen(key)), 0
    ids = sorted(task_ids)
    while left > 0:
        n = min(left, _ROTATE_BATCH)
        removed += int(rotate(keys=[key], args=[n, H_TASK_ID, *ids]))
        left -= n
    return removed


def _taken(message: Any) -> Taken:
    raw = message.body
    body = raw if isinstance(raw, bytes) else str(raw).encode()
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    parsed = parse(message.headers, raw, message.content_type, message.content_encoding)
    return Taken(parsed, identity(parsed, body, headers), body, message.content_type or "",
                 message.content_encoding or "", headers)
