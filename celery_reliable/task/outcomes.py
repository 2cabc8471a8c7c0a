"""What a worker does with a task that does not simply run and succeed.

A claim that does not run (done, conflict, lost too often, dead-lettered,
busy), a store that is down (deferred, never run unguarded), a deferral or
retry (the same task published again, then this copy acknowledged), and a
final failure (dead-lettered before the message is acknowledged).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from celery.exceptions import Ignore, Reject, Retry

from celery_reliable import keys
from celery_reliable.errors import (
    IdempotencyKeyConflict,
    StoreError,
    TaskInFlight,
    TaskLostTooOften,
)
from celery_reliable.events import TaskEvent, emit
from celery_reliable.headers import HEADER_DEFERS, HEADER_KEY
from celery_reliable.settings import Settings
from celery_reliable.states import State, recorder
from celery_reliable.stores.model import Claim, ClaimStatus
from celery_reliable.task.base import TaskBase

logger = logging.getLogger("celery_reliable")


class Outcomes(TaskBase):
    """ReliableTask's outcomes other than a body that runs and succeeds, and the helpers
    every outcome uses (recording a transition, releasing the key)."""

    def _dead_letter(
        self, key: str, reason: str, exc: BaseException | None, started: bool
    ) -> None:
        """Keep the task as a dead letter; ``started``: its body ran (and failed).

        Through the one dead-letter path (:mod:`celery_reliable.dlq.dead_letter`),
        before Celery acknowledges this message.  When the DLQ queue does not take
        it, the message is requeued (``Reject``) instead of acknowledged: the
        failure is never acknowledged unrecorded.
        """
        from celery_reliable.dlq import routing
        from celery_reliable.dlq.dead_letter import DeadLetterCause, dead_letter
        from celery_reliable.dlq.publisher import DeadLetterPublishError

        request = self.request
        attempt = (request.retries or 0) + 1
        record = self._dead_record(key)
        failure = routing.failure_of(
            exc, attempts=attempt,
            worker=routing.EAGER if request.is_eager else request.hostname,
            queue=routing.queue_of(self._get_app(), record, request.delivery_info),
        )
        letter = DeadLetterCause(
            record, reason, f"{type(exc).__name__}: {exc}" if exc is not None else None,
            failure, exc=exc, started=started, before=() if started else (State.RECEIVED,),
            attempt=attempt, worker=request.hostname, delivery_info=request.delivery_info,
            require_publish=not request.is_eager, task=self,
        )
        try:
            dead_letter(self._get_app(), letter)
        except DeadLetterPublishError as err:
            logger.error("%s[%s] not dead-lettered: %s; the message is requeued",
                         self.name, request.id, err)
            raise Reject(err, requeue=True) from err

    def _dead_record(self, key: str) -> Any:
        """The task's record as persisted at publish (its routing options), else built
        from the request."""
        try:
            stored = self.reliable.store.get_record(self.request.id, key)
        except StoreError:
            stored = None
        if stored is not None and stored.name:
            return stored
        from celery_reliable.dlq.dead_letter import record_from_request

        return record_from_request(self, self.request, key)

    def _not_claimed(self, claim: Claim, key: str, settings: Settings) -> Any:
        request = self.request
        if claim.status is ClaimStatus.DONE:
            self.reliable.count("deduplicated")
            if claim.task_id != request.id:
                self._record(key, State.RECEIVED)
                self._record(key, State.DEDUPLICATED, detail={"existing_task": claim.task_id})
            logger.info(
                "%s[%s] skipped: key %r already succeeded as task %s",
                self.name, request.id, key, claim.task_id,
            )
            return keys.decode_result(claim.result)
        if claim.status is ClaimStatus.CONFLICT:
            error = IdempotencyKeyConflict(
                f"idempotency key {key!r} of {self.name} is held by task {claim.task_id} with "
                "different arguments; this copy is not run"
            )
            if settings.on_key_conflict == "skip":
                self.reliable.count("deduplicated")
                self._record(key, State.RECEIVED)
                self._record(key, State.DEDUPLICATED, detail={"key_conflict": claim.task_id})
                logger.warning("%s", error)
                return None
            self._dead_letter(key, "key_conflict", error, started=False)
            raise error
        if claim.status is ClaimStatus.LOST_TOO_OFTEN:
            lost = TaskLostTooOften(
                f"{self.name}[{request.id}] with key {key!r} died with its worker {claim.lost} "
                "times (out of memory? a crashing library?); dead-lettered, not run again"
            )
            self._dead_letter(key, "worker_lost", lost, started=False)
            raise lost
        if claim.status is ClaimStatus.SUPERSEDED:
            # This task was published again with corrected arguments (a replay) after
            # this copy was: the newer message is the task, this one is stale.
            self._absorb("superseded_copy_absorbed", logging.WARNING,
                         "this copy has the arguments the task had before it was replayed "
                         "with corrected ones")
        if claim.status is ClaimStatus.DEAD_LETTERED:
            # Its final failure is in the dead letters; a copy still around (a
            # redelivery, an earlier rescue) must not run it again behind the
            # operator's back.  Ignore: acknowledged, and the FAILURE it left in
            # the result backend stays.
            self._absorb("dead_letter_copy_absorbed", logging.INFO,
                         "it is dead-lettered and was not replayed")
        return self._busy(claim, key, settings)

    def _absorb(self, counter: str, level: int, why: str) -> NoReturn:
        """Acknowledge a stale copy without running it (``Ignore``): counted and logged."""
        self.reliable.count(counter)
        logger.log(level, "%s[%s] not run: %s (a stale copy, absorbed)", self.name,
                   self.request.id, why)
        raise Ignore()

    def _busy(self, claim: Claim, key: str, settings: Settings) -> Any:
        request = self.request
        if request.is_eager:
            raise TaskInFlight(
                f"key {key!r} of {self.name} is being run by task {claim.task_id} "
                f"(lease {claim.lease_left:.0f} s left)"
            )
        self.reliable.count("busy")
        if claim.task_id == request.id and settings.persist_on_publish:
            logger.info(
                "%s[%s] delivered again while it runs: absorbed (the rescuer takes over if "
                "its worker died)", self.name, request.id,
            )
            raise Ignore()
        # Poll with a doubling delay, never later than the holder's lease could lapse.
        delay = min(claim.lease_left + random.uniform(0.5, 2.0), 2.0 ** self._defers())
        return self._defer(delay, f"key in flight as task {claim.task_id}")

    def _defers(self) -> int:
        """How often this task was deferred already (a header, survives republishing)."""
        return int((self.request.headers or {}).get(HEADER_DEFERS, 0))

    def _store_down(self, exc: StoreError) -> Any:
        self.reliable.count("store_error")
        if self.request.is_eager:
            raise exc
        base = self.reliable_settings().store_down_retry_delay
        delay = random.uniform(0, min(60.0, base * 2 ** self._defers())) + base / 2
        logger.error(
            "%s[%s] not run: the store is unavailable (%s); failing closed, trying again in "
            "%.1f s", self.name, self.request.id, exc, delay,
        )
        return self._defer(delay, "store unavailable")

    def _defer(self, countdown: float, reason: str) -> Any:
        """Publish this task again later without using an attempt; ack this copy."""
        # Stamped before the republish: its next copy (same attempt) may be received and
        # recorded elsewhere before this copy's states are.
        at = time.time()
        retry = self._republish(countdown)
        key = (self.request.headers or {}).get(HEADER_KEY, "")
        self._record(key, State.RECEIVED, State.DEFERRED,
                     detail={"reason": reason, "countdown": round(countdown, 3)}, at=at)
        self.reliable.count("deferred")
        logger.info("%s[%s] deferred %.1f s: %s", self.name, self.request.id, countdown, reason)
        raise retry

    def _republish(
        self, countdown: float, exc: BaseException | None = None, next_attempt: bool = False
    ) -> Retry:
        """Publish this task again (same id and key) in ``countdown`` seconds.

        Returns the ``Retry`` to raise, so the current message is acknowledged only
        after its successor is on the broker.  ``next_attempt`` counts an attempt
        (a retry); otherwise the attempt count is kept (a deferral).
        """
        request = self.request
        options: dict[str, Any] = {"countdown": countdown}
        headers = dict(request.headers or {})
        if next_attempt:
            options["retries"] = (request.retries or 0) + 1
            headers.pop(HEADER_DEFERS, None)
        else:
            headers[HEADER_DEFERS] = self._defers() + 1
        signature = self.signature_from_request(request, **options)
        signature.options["headers"] = headers
        if request.is_eager:  # apply() runs the signature again at once
            return Retry(exc=exc, when=countdown, is_eager=True, sig=signature)
        try:
            signature.apply_async()
        except Exception as err:  # the broker is down too: let it redeliver this copy
            logger.error(
                "%s[%s] could not be published again (%s); requeued", self.name, request.id, err
            )
            raise Reject(err, requeue=True) from err
        return Retry(exc=exc, when=countdown, sig=signature)

    def _release(self, key: str, owner: str, requeued: bool) -> None:
        self._quietly(
            "release",
            lambda: self.reliable.store.release(key, owner, self.request.id, requeued),
        )

    def _record(
        self, key: str, *states: State, error: BaseException | None = None,
        detail: Mapping[str, Any] | None = None, task_id: str | None = None,
        at: float | None = None,
    ) -> None:
        """Record that this task moved through ``states`` now, in order (buffered; never
        raises into the task; ``error`` and ``detail`` belong to the last), and send a
        Celery event for the states Celery has no name for, so monitors such as Flower
        show them (workers started with ``-E``)."""
        request = self.request
        app = self._get_app()
        recorder(app).transitions(
            task_id or request.id, self.name, key, states,
            attempt=(request.retries or 0) + 1, worker=request.hostname, error=error,
            detail=detail, at=at,
        )
        if request.is_eager or not app.conf.worker_send_task_events:
            return
        for i, state in enumerate(states):
            event = TaskEvent.of_state(state.value)
            if event is not None:
                final = i == len(states) - 1
                fields: dict[str, Any] = {"idempotency_key": key,
                                          **((detail or {}) if final else {})}
                if final and error is not None:
                    fields["exception"] = f"{type(error).__name__}: {error}"
                emit(app, event, request.id, count=self.reliable.count, task=self, **fields)

    def _quietly(self, what: str, call: Callable[[], Any]) -> None:
        """Store writes after the outcome is decided: a failure is logged and counted."""
        try:
            call()
        except StoreError as exc:
            self.reliable.count("store_error")
            logger.error(
                "%s[%s]: could not %s in the store (%s); the lease lapses and the rescuer "
                "takes it from there", self.name, self.request.id, what.replace("_", " "), exc,
            )
