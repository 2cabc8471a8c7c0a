"""Make the DLQ queue(s) and the dead-letter index agree, and say what was fixed.

What can still disagree after a crash at the wrong moment, a purge whose queue
step failed, or someone else's messages in the queue:

* a message without an entry is indexed (an unreadable one with reason
  ``foreign`` or ``malformed``, so it is listed and can be purged);
* a second copy of one task's message is removed;
* the message of an entry already replayed is removed;
* an unresolved entry whose message is gone is published again from the index.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import TYPE_CHECKING

from celery_reliable.dlq import broker, routing
from celery_reliable.dlq.message import UNREADABLE_REASONS, Unreadable, build
from celery_reliable.dlq.model import ReconcileResult
from celery_reliable.dlq.publisher import publisher
from celery_reliable.stores.model import DeadLetterQuery, Failure, TaskRecord

if TYPE_CHECKING:
    from celery_reliable.dlq.api import DeadLetters

def reconcile(letters: DeadLetters) -> ReconcileResult:
    """Make the DLQ queue(s) and the index agree, and say what was fixed.

    A message without an entry is indexed (an unreadable one as ``foreign`` or
    ``malformed``), a second copy of one task's message is removed, so is the
    message of an entry already replayed; an unresolved entry whose message is
    gone is published again from the index.
    """
    result = ReconcileResult()
    seen: set[str] = set()
    for queue in letters.queues():
        broker.sweep(letters.app, queue,
                     functools.partial(_reconcile_one, letters, queue=queue, seen=seen,
                                       result=result))
    for letter in letters.matching(DeadLetterQuery(replayed=False)):
        if letter.task_id in seen or letter.record.reason in UNREADABLE_REASONS:
            continue
        settings = routing.settings_for(letters.app, letter.record.name)
        if not routing.publishes(settings, letter.failure):
            continue  # DLQ off, or an eager run's (a test's): kept off the broker
        message = build(letter.record, letter.failure, settings.dlq_traceback_max)
        publisher(letters.app).publish(settings.dlq_queue, message)
        result.republished.append(letter.task_id)
    return result


def _reconcile_one(
    letters: DeadLetters, taken: broker.Taken, *, queue: str, seen: set[str],
    result: ReconcileResult,
) -> bool:
    """Whether to take ``taken`` off the queue; indexes it when it has no entry."""
    if taken.identity in seen:
        result.duplicates_removed += 1
        return True
    seen.add(taken.identity)
    letter = letters.store.get_dead_letter(taken.identity)
    parsed = taken.parsed
    if isinstance(parsed, Unreadable):
        result.unreadable[taken.identity] = f"{parsed.kind}: {parsed.problem}"
        if letter is None:
            _index_unreadable(letters, taken, parsed, queue)
        return False
    if letter is None:
        r = parsed.record
        letters.store.dead_letter(r.task_id, r.key, r.reason or "unknown", r.error,
                                  fallback=r, failure=parsed.failure,
                                  dead_at=r.dead_at or None)
        result.indexed.append(r.task_id)
        return False
    if letter.replayed:
        result.stale_removed += 1
        return True
    return False


def _index_unreadable(
    letters: DeadLetters, taken: broker.Taken, parsed: Unreadable, queue: str,
) -> None:
    """Index a message that is not a dead letter of ours, so it is listed as such."""
    headers = {str(k): v for k, v in taken.headers.items()}
    record = TaskRecord(
        task_id=taken.identity, name=str(headers.get("task") or f"({parsed.kind})"),
        key="", fingerprint="", body=base64.b64encode(taken.body).decode(),
        content_type=taken.content_type, content_encoding="base64",
        options=json.dumps({"headers": headers}, default=repr),
    )
    letters.store.dead_letter(taken.identity, "", parsed.kind, parsed.problem,
                              fallback=record, failure=Failure(queue=queue))
