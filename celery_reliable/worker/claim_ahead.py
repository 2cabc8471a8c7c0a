"""Claiming a task while Celery prepares to run it (solo pool).

Why: the claim is the one store round trip a task waits for before its body.
The solo pool runs a task in the thread that received it, right after the
``task_received`` signal; in between, Celery builds the request and the tracer
and sends its own signals (85-105 us per task measured here, about a round trip
of the store).  Writing the claim at ``task_received`` and reading the answer
when the body is about to run lets that work overlap the round trip.

Only where nothing can come between the two:

* the solo pool (the worker step turns this on): other pools run the body in
  another thread or process, which has its own store connection;
* a message a ReliableTask producer sent (its key and fingerprint are in the
  headers; otherwise the body derives them);
* no ETA or countdown (Celery holds the task on a timer), no rate limit (a
  token bucket), a first attempt (a retry asks the retry budget before it
  claims) and no circuit breaker (asked before the claim).

The claim is the very call the body would make: same key, fingerprint, owner,
lease.  A claim whose task does not reach its body (Celery dropped it in between)
is released as requeued when the next message arrives: the record stays and the
rescuer brings the task back, as after a crash.  (A task revoked or expired in
between is dead-lettered, which forgets its key whoever holds it.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery_reliable.errors import StoreError
from celery_reliable.headers import HEADER_FINGERPRINT, HEADER_KEY
from celery_reliable.identity import is_reliable
from celery_reliable.stores.base import ClaimAnswer
from celery_reliable.worker.owner import owner_token

if TYPE_CHECKING:
    from celery_reliable.runtime import Runtime

logger = logging.getLogger("celery_reliable")


@dataclass(frozen=True)
class Ahead:
    """A claim sent ahead: for which task, under which key and owner, and its answer."""

    task_id: str
    key: str
    owner: str
    answer: ClaimAnswer


class ClaimAhead:
    """The claim sent ahead in this process, for the one task about to run.

    One at a time: the solo pool runs the task it received before it reads the
    next message.  ``enabled`` is set by the worker step (solo pool and
    ``reliable_claim_ahead``); a fresh runtime (a prefork child) has it off.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.enabled = False
        self._ahead: Ahead | None = None

    def send(self, task: Any, request: Any, consumer: Any) -> None:
        """At ``task_received``: write the claim now if the body will follow at once."""
        if self._ahead is not None:  # its task never reached the body
            self._give_back(self._ahead)
            self._ahead = None
        fields = request.request_dict
        key, fingerprint = fields.get(HEADER_KEY), fields.get(HEADER_FINGERPRINT)
        if (
            not key or not fingerprint or request.eta is not None or fields.get("retries")
            or task.dependency is not None or consumer.task_buckets[task.name] is not None
        ):
            return
        settings = task.reliable_settings(self.runtime)
        owner = owner_token(request.hostname)
        answer = self.runtime.store.claim_soon(
            key, fingerprint, request.id, owner, settings.lease_seconds,
            settings.max_lost_attempts,
        )
        self._ahead = Ahead(request.id, key, owner, answer)

    def take(self, task_id: str, key: str) -> Ahead | None:
        """The claim sent ahead for this task and key, once; None if there is none."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if ahead.task_id == task_id and ahead.key == key:
            return ahead
        self._give_back(ahead)
        return None

    def _give_back(self, ahead: Ahead) -> None:
        """Release a claim whose task did not reach its body: the key is queued again
        and the record, due at the lease's end, is rescued then."""
        try:
            if ahead.answer().runs:
                self.runtime.store.release(ahead.key, ahead.owner, ahead.task_id, requeued=True)
        except StoreError as exc:
            logger.warning(
                "task %s: could not give back the claim sent ahead for key %r (%s); its "
                "lease lapses and the rescuer brings the task back", ahead.task_id,
                ahead.key, exc,
            )
        self.runtime.count("claim_ahead_unused")


def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """``task_received`` handler (connected once per process by ``worker/signals.py``)."""
    task: Any = getattr(request, "task", None)
    if is_reliable(task):
        claims = task.reliable.claim_ahead
        if claims.enabled:
            claims.send(task, request, sender)
