"""RabbitMQ queues of the reliable tasks: durable, and quorum rather than classic.

A non-durable (or auto-delete, exclusive) queue and transient messages vanish with a
broker restart.  A classic queue keeps one copy on one node and has no
``x-delivery-count``: a message that crashes every worker that takes it comes back
for ever; a quorum queue is replicated and counts deliveries.

The declarations are read from the app (``task_queues``, ``task_default_queue_type``,
``task_create_missing_queue_type``, each reliable task's route).  When the broker
answers, each queue that exists is declared again exactly as the app declares it (what
a starting worker does, so nothing is created or changed): RabbitMQ accepts it only
if the real queue is equivalent, and otherwise names the argument that differs.
Without the management API that is all AMQP tells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import OperationalError

from celery_reliable.doctor.deployment import Deployment
from celery_reliable.findings import Finding

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'.*?received (.+?) but current is (.+)$")


@dataclass(frozen=True)
class Declared:
    """One queue as the app declares it, and what the broker said of it."""

    queue: Any  # kombu.Queue
    tasks: tuple[str, ...]
    broker: str | None = None  # None: not asked or absent; "" equivalent; else the difference


def is_amqp_broker(d: Deployment) -> bool:
    return d.broker_url.split("://")[0] in {"amqp", "amqps", "pyamqp", "librabbitmq"}


def queues_of(d: Deployment) -> list[Declared]:
    """The queues the reliable tasks are routed to (a route that needs the call's
    arguments is skipped), with the tasks routed to each."""
    by_name: dict[str, tuple[Any, list[str]]] = {}
    router = d.app.amqp.router
    for task in d.reliable:
        name = getattr(task, "queue", None)
        try:
            queue = router.route({"queue": name} if name else {}, task.name, (), {})["queue"]
        except (TypeError, KeyError, ValueError):
            continue
        by_name.setdefault(queue.name, (queue, []))[1].append(task.name)
    return [Declared(q, tuple(names)) for q, names in by_name.values()]


def probe(d: Deployment, declared: list[Declared]) -> list[Declared] | str:
    """``declared`` with the broker's answer for each existing queue; the error text
    when the broker cannot be reached."""
    connection = d.app.connection_for_write()
    try:
        connection.ensure_connection(max_retries=1)
        return [Declared(x.queue, x.tasks, _ask(connection, x.queue)) for x in declared]
    except (OSError, OperationalError) as exc:
        return str(exc)
    finally:
        connection.release()


def _ask(connection: Any, queue: Any) -> str | None:
    errors = connection.channel_errors
    channel = connection.channel()
    try:
        channel.queue_declare(queue=queue.name, passive=True)
    except errors:
        return None  # not declared yet: the first worker declares it as the app says
    finally:
        channel.close()  # a no-op on a channel the broker closed
    channel = connection.channel()
    try:
        channel.queue_declare(
            queue=queue.name, durable=queue.durable, auto_delete=queue.auto_delete,
            exclusive=queue.exclusive, arguments=queue.queue_arguments or None,
        )
    except errors as exc:
        return str(exc)
    finally:
        channel.close()
    return ""


def queues(d: Deployment) -> list[Finding]:
    """Transient queues (error), classic queues (warning), queues on the broker that
    differ from the app's declaration (error)."""
    if not is_amqp_broker(d):
        return []
    declared = queues_of(d)
    answer = probe(d, declared)
    if isinstance(answer, str):
        return [Finding(
            "broker.unreachable", "error", f"the RabbitMQ broker {d.safe_broker_url} "
            f"cannot be reached: {answer}", "Start it, or correct broker_url",
            "operating.md#rabbitmq-queues",
        )]
    found = [_differs(x) for x in answer if x.broker]
    judged = [x for x in answer if not x.broker]
    transient = [x for x in judged if not x.queue.durable or x.queue.auto_delete
                 or x.queue.exclusive]
    if transient:
        found.append(Finding(
            "rabbitmq.durable", "error",
            f"queue {_names(transient)} is not durable (or is auto-delete or exclusive): "
            "a broker restart deletes it with every message in it",
            "Declare it Queue(name, durable=True) in task_queues (kombu's default)",
            "operating.md#rabbitmq-queues",
        ))
    classic = [x for x in judged if x not in transient and _type(x.queue) == "classic"]
    if classic:
        found.append(Finding(
            "rabbitmq.classic", "warning",
            f"queue {_names(classic)} is a classic queue: one copy on one node, and no "
            "x-delivery-count, so a message that kills every worker taking it is "
            "delivered for ever",
            "Use quorum queues: task_default_queue_type = 'quorum' (Celery 5.5+), "
            "task_create_missing_queue_type = 'quorum', or "
            "queue_arguments={'x-queue-type': 'quorum'} in task_queues; an existing queue "
            "must be deleted (drained) and declared again to change its type",
            "operating.md#rabbitmq-queues",
        ))
    mode = d.conf.task_default_delivery_mode
    if str(mode) in {"1", "transient"}:
        found.append(Finding(
            "rabbitmq.delivery_mode", "error",
            f"task_default_delivery_mode is {mode!r}: messages are not written to disk, "
            "so a broker restart loses them even in durable queues",
            "Set task_default_delivery_mode = 'persistent' (Celery's default)",
            "operating.md#rabbitmq-queues",
        ))
    return found


def _differs(x: Declared) -> Finding:
    text = str(x.broker)
    m = _INEQUIVALENT.search(text)
    what = (f"its {m.group(1)} is {m.group(3).strip()} on the broker, the app declares "
            f"{m.group(2).strip()}") if m else text
    return Finding(
        "rabbitmq.mismatch", "error",
        f"queue {x.queue.name!r} ({', '.join(x.tasks)}) differs from the app's "
        f"declaration: {what}; RabbitMQ refuses the workers' declaration of it "
        "(PRECONDITION_FAILED), so they cannot consume it",
        "Declare the queue in task_queues as it exists on the broker, or drain, delete "
        "and let the workers declare it again",
        "operating.md#rabbitmq-queues",
    )


def _type(queue: Any) -> str:
    return str((queue.queue_arguments or {}).get("x-queue-type", "classic"))


def _names(found: list[Declared]) -> str:
    return ", ".join(f"{x.queue.name!r} ({', '.join(x.tasks)})" for x in found)
