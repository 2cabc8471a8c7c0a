"""The worker side of ReliableTask: claim → run → complete, or release.

:meth:`Execution._execute` claims the key's lease, runs the body while a
heartbeat renews the lease, then completes (success) or releases (retry,
failure).  It is reached through the task's ``run`` (:mod:`celery_reliable.task.guard`),
so a subclass's own ``__call__`` cannot bypass it.  What the claim answers decides everything else:

=============  =================================================================
claimed        run the body
taken over     run the body; the previous owner died (a *lost attempt*)
done           skip; return the first run's result (recorded as deduplicated)
busy           another copy runs now: never concurrently. A redelivery of the
               running task itself is absorbed (the rescuer covers its owner);
               another copy is deferred until the lease would have lapsed
conflict       same key, other arguments: refused (IdempotencyKeyConflict)
superseded     this task id was replayed with corrected arguments since this copy:
               absorbed, never run
lost too often dead-lettered with reason ``worker_lost``; never run again
store down     fail closed: deferred with backoff, never run unguarded
=============  =================================================================

Everything but running the body lives in :mod:`celery_reliable.task.outcomes`.
``acks_late`` and ``reject_on_worker_lost`` are forced on: the message is
acknowledged only after the outcome is written.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import Ignore, Reject, Retry

from celery_reliable import keys
from celery_reliable.errors import (
    ArgumentsMismatch,
    RetryBudgetExhausted,
    StoreError,
    StoreUnavailable,
)
from celery_reliable.headers import HEADER_FINGERPRINT, HEADER_KEY, HEADER_SLOT
from celery_reliable.retry.policy import RetryPolicy, Verdict
from celery_reliable.runtime import Runtime
from celery_reliable.settings import Settings
from celery_reliable.states import State
from celery_reliable.stores.model import BreakerCheck, ClaimStatus, Lease
from celery_reliable.task.guard import GuardedCall, GuardedRun
from celery_reliable.task.outcomes import Outcomes
from celery_reliable.worker.owner import owner_token

logger = logging.getLogger("celery_reliable")

class Execution(Outcomes):
    """ReliableTask in a worker: the claim, the body under a lease, the completion."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__ and not isinstance(cls.__dict__["run"], GuardedRun):
            cls.run = GuardedRun(cls.__dict__["run"])  # see task/guard.py: why run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's tracer calls this, or a subclass's own ``__call__``: either way the
        body is reached through ``self.run``, which holds the guarantees."""
        request = self.request
        if request.called_directly:
            # ``task(...)`` as a plain function: Celery's __call__ pushes a request
            # (called directly: the guard steps aside) and runs the body.
            return super().__call__(*args, **kwargs)
        # In the delivery's request (Celery pushed it); a subclass's
        # ``super().__call__`` in eager mode lands here too, not in a new request.
        run = self.run
        if isinstance(run, GuardedCall):
            return run.within(request, args, kwargs)
        return run(*args, **kwargs)

    def _execute(
        self, body: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """One delivery: gate, claim, run ``body`` under the lease (``run`` calls it)."""
        request = self.request
        headers = request.headers if request.headers is not None else {}
        request.headers = headers
        if HEADER_KEY in headers:
            key, fingerprint = headers[HEADER_KEY], headers[HEADER_FINGERPRINT]
        else:  # sent by name (send_task) or by an older producer: derive it here
            key, fingerprint = self.key_for(args, kwargs, headers.get(HEADER_SLOT), request.id)
            headers[HEADER_KEY], headers[HEADER_FINGERPRINT] = key, fingerprint
        rt = self.reliable
        settings = self.reliable_settings(rt)
        # A solo worker may have sent the claim when the message arrived
        # (worker/claim_ahead.py): then only its answer is read here.
        ahead = rt.claim_ahead.take(request.id, key) if rt.claim_ahead.enabled else None
        owner = ahead.owner if ahead is not None else owner_token(request.hostname)
        try:
            breaker = self._gate(rt, request, key, owner, settings)
            if ahead is not None:
                claim = ahead.answer()
            else:
                claim = rt.store.claim(
                    key, fingerprint, request.id, owner, settings.lease_seconds,
                    settings.max_lost_attempts,
                )
        except StoreError as exc:
            return self._store_down(exc)
        if claim.runs:
            taken_over = claim.status is ClaimStatus.TAKEN_OVER
            self._record(key, State.RECEIVED, State.STARTED,
                         detail={"taken_over": True, "lost": claim.lost} if taken_over else None)
            if taken_over:
                rt.count("taken_over")
                logger.warning(
                    "%s[%s] key %r: the previous run died with its worker (lost attempt %d of "
                    "%d); running it again", self.name, request.id, key, claim.lost,
                    settings.max_lost_attempts,
                )
            return self._run_claimed(
                rt, request, key, fingerprint, owner, body, args, kwargs, settings, breaker
            )
        return self._not_claimed(claim, key, settings)

    def _gate(
        self, rt: Runtime, request: Any, key: str, owner: str, settings: Settings
    ) -> BreakerCheck | None:
        """Circuit breaker and retry budget, before the claim: defers or dead-letters
        (raising) what may not run now; the breaker's answer when there is one."""
        scope = self.dependency or self.name
        breaker = None
        if self.dependency is not None:
            breaker = rt.breakers.check(self.dependency, owner)
            if not breaker.allowed:
                rt.count("deferred_breaker_open")
                self._defer(
                    breaker.wait + random.uniform(0.1, 1.0),
                    f"circuit breaker of {self.dependency!r} is {breaker.state}",
                )
        if request.is_eager:
            # apply() runs in the caller, retries at once and stops at max_attempts: the
            # budget guards a dependency against a storm of workers' retries, and an
            # eager call must not spend it (nor fail on what other calls spent).
            return breaker
        if not request.retries:
            rt.budget.first_attempt(scope)
        elif not rt.store.budget_withdraw(
            scope, settings.retry_budget_ratio, settings.retry_budget_floor,
            settings.retry_budget_window,
        ):
            rt.count("retry_budget_exhausted")
            if settings.on_retry_budget_exhausted == "dead_letter":
                error = RetryBudgetExhausted(
                    f"{self.name}[{request.id}]: the retry budget of {scope!r} is spent "
                    f"({settings.retry_budget_ratio:g} x first attempts + "
                    f"{settings.retry_budget_floor:g}/s over {settings.retry_budget_window:g} s)"
                )
                self._dead_letter(key, "retry_budget_exhausted", error, started=False)
                raise error
            self._defer(
                settings.retry_budget_window * random.uniform(0.5, 1.5),
                f"retry budget of {scope!r} spent",
            )
        return breaker

    def _run_claimed(
        self, rt: Runtime, request: Any, key: str, fingerprint: str, owner: str,
        body: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        settings: Settings, breaker: BreakerCheck | None,
    ) -> Any:
        task_id = request.id
        store = rt.store
        heartbeat = rt.heartbeat
        heartbeat.track(Lease(key, owner, task_id), settings.lease_seconds)
        request.reliable_lease = (key, owner)  # for retry(), which releases it first
        # The lease is held until the outcome is written (the heartbeat renews it
        # meanwhile, through a store outage too): settling from the body's end, so a
        # renewal that races with the task's own completion or release is no alarm.
        try:
            try:
                result = body(*args, **kwargs)
            finally:
                heartbeat.settle(owner)
        except Retry as retry:
            self._release_held(request, requeued=True)
            self._record(key, State.RETRY_SCHEDULED, detail={"countdown": retry.when})
            raise
        except Ignore:
            self._release(key, owner, requeued=False)
            self._quietly("discard", lambda: store.discard(task_id, key))
            self._record(key, State.SUCCEEDED, detail={"ignored": True})
            raise
        except Reject as exc:
            self._release(key, owner, requeued=bool(exc.requeue))
            if not exc.requeue:
                self._dead_letter(key, "rejected", exc, started=True)
            raise
        except Exception as exc:
            if isinstance(exc, TypeError) and not _fits(self.run, args, kwargs):
                # A call that does not fit the task (typing=False lets it through):
                # no retry can fix it, so it fails at once, as in Celery.
                self._release(key, owner, requeued=False)
                self._dead_letter(key, "permanent_error", exc, started=True)
                raise
            self._report(breaker, exc)
            self._after_failure(key, owner, exc, settings)
            raise
        except BaseException:
            # Shutdown or a time limit: the message is not acknowledged, so it is
            # delivered again, or rescued when the lease lapses.
            self._release(key, owner, requeued=True)
            raise
        else:
            if breaker is not None:
                self._report(breaker, None)
            completed = self._complete(rt, request, key, fingerprint, owner, result, settings)
            self._record(key, State.SUCCEEDED, detail=None if completed is not False else {
                "completion_refused": "the lease had lapsed and another run took the key "
                                      "over: the body may have run twice",
            })
            return result
        finally:
            heartbeat.untrack(owner)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``self.retry()``, with this delivery's lease released before Celery
        publishes the next attempt: published first, that attempt could reach a worker
        while this one still holds the lease and be absorbed as a copy of a running task."""
        self._release_held(self.request, requeued=True)
        return super().retry(*args, **kwargs)

    def _release_held(self, request: Any, requeued: bool) -> None:
        """Release the lease this delivery holds, once (``retry()`` may have already)."""
        held = getattr(request, "reliable_lease", None)
        if held is not None:
            request.reliable_lease = None
            # let go of before the release lands: a renewal in flight is no alarm
            self.reliable.heartbeat.settle(held[1])
            self._release(held[0], held[1], requeued=requeued)

    def _report(self, breaker: BreakerCheck | None, exc: Exception | None) -> None:
        """Tell the dependency's breaker how the call went (transient failures count)."""
        if breaker is None or self.dependency is None:
            return
        if exc is not None and not self.retry_policy().is_transient(exc):
            return  # bad input says nothing about the dependency's health
        name = self.dependency
        self._quietly(
            "report to the circuit breaker",
            lambda: self.reliable.breakers.report(name, exc is None, breaker),
        )

    def retry_policy(self, settings: Settings | None = None) -> RetryPolicy:
        """The task's retry policy: its ``retry_on``/``permanent_on``/``retry_classifier``
        with the (per-task) ``reliable_max_attempts`` and backoff settings."""
        settings = settings or self.reliable_settings()
        return RetryPolicy(
            max_attempts=settings.max_attempts,
            backoff_base=settings.retry_backoff_base,
            backoff_cap=settings.retry_backoff_cap,
            unclassified=settings.retry_unclassified,
            retry_on=tuple(self.retry_on),
            permanent_on=tuple(self.permanent_on),
            classify=self.retry_classifier,
        )

    def _after_failure(
        self, key: str, owner: str, exc: Exception, settings: Settings
    ) -> None:
        """Retry a transient failure later, or dead-letter it; returns only to re-raise."""
        attempt = (self.request.retries or 0) + 1
        decision = self.retry_policy(settings).decide(exc, attempt)
        if decision.verdict is Verdict.RETRY:
            # Released before the next attempt is published: published first, it could
            # reach a worker while this one still holds the lease, be absorbed as a copy
            # of a running task, and wait for the rescuer.  (If the publish then fails,
            # this message is requeued and its redelivery finds the key free.)
            self._release(key, owner, requeued=True)
            retry = self._republish(decision.delay, exc=exc, next_attempt=True)
            self._record(key, State.RETRY_SCHEDULED, error=exc,
                         detail={"countdown": round(decision.delay, 3)})
            self.reliable.count("retried")
            logger.info(
                "%s[%s] attempt %d of %d failed (%s: %s); retrying in %.1f s",
                self.name, self.request.id, attempt, settings.max_attempts,
                type(exc).__name__, exc, decision.delay,
            )
            raise retry from exc
        self._release(key, owner, requeued=False)
        self._dead_letter(key, decision.reason, exc, started=True)

    def _complete(
        self, rt: Runtime, request: Any, key: str, fingerprint: str, owner: str, result: Any,
        settings: Settings,
    ) -> bool | None:
        """Record the success; the message is acknowledged after this returns.

        The answer is checked when it comes (the Redis store reads it before the
        next store call of this thread: see ``stores/redis_calls.py``); what this
        returns is the answer when it came here (None: it comes later).  The body
        ran, so a store that cannot take the call is tried again, for up to
        ``reliable_complete_timeout``, with the lease still held and renewed: a store
        that was down for every worker paused its lease clock, and the completion
        lands as the owner's when it is back.
        """
        kept = keys.encode_result(result, settings.result_max_bytes)
        store, task_id = rt.store, request.id
        retention = (settings.publish_key_retention if keys.is_publish_key(key, task_id)
                     else settings.retention)
        answers: list[bool | None] = []

        def then(ok: bool | None, error: StoreError | None) -> None:
            answers.append(ok)
            if ok is None:  # sent, and its answer lost with the connection: maybe it landed
                self._finish_later(rt, key, fingerprint, owner, task_id, kept, retention,
                                   settings, error)
                return
            self._completed(self.name, task_id, key, ok, error)

        give_up_at = time.monotonic() + settings.complete_timeout
        attempt = 0
        while True:
            try:
                store.complete_soon(
                    key, fingerprint, owner, task_id, kept, retention, then
                )
            except StoreUnavailable as exc:
                rt.count("store_error")
                if attempt == 0:
                    logger.warning(
                        "%s[%s] finished, but the store is unreachable (%s): trying to record "
                        "it for up to %.0f s, holding its lease", self.name, task_id, exc,
                        settings.complete_timeout,
                    )
                if time.monotonic() >= give_up_at:
                    self._completed(self.name, task_id, key, None, exc)
                    return None
                _sleep_backoff(attempt)
                attempt += 1
                continue
            if request.is_eager:
                self._quietly("complete", store.drain)  # apply() returns a settled outcome
            if attempt:
                logger.warning("%s[%s]: recorded its success after %d tries", self.name,
                               task_id, attempt + 1)
            return answers[0] if answers else None

    def _finish_later(
        self, rt: Runtime, key: str, fingerprint: str, owner: str, task_id: str,
        kept: str | None, retention: float, settings: Settings, error: StoreError | None,
    ) -> None:
        """A completion's answer was lost (the store went down after it was sent, and
        the message may be acknowledged by now): the heartbeat holds the lease and makes
        the completion again until the store answers."""
        store, name = rt.store, self.name
        logger.warning(
            "%s[%s]: the answer to its completion was lost (%s); completing it again in the "
            "background for up to %.0f s, holding its lease", name, task_id, error,
            settings.complete_timeout,
        )

        def complete() -> bool:
            if store.complete(key, fingerprint, owner, task_id, kept, retention):
                return True
            state = store.get_key(key)  # refused: unless the lost call had landed
            return state is not None and state.state == "done" and state.task_id == task_id

        rt.heartbeat.finish(
            Lease(key, owner, task_id), settings.lease_seconds, complete,
            time.monotonic() + settings.complete_timeout,
            functools.partial(self._completed, name, task_id, key),
        )

    def _completed(
        self, name: str, task_id: str, key: str, ok: bool | None, error: StoreError | None
    ) -> None:
        """The store's answer to a completion (maybe while another task starts: hence the
        names passed in, not read from ``self.request``).  Never raises."""
        if ok:
            return
        if ok is False:
            self.reliable.count("lease_lost")
            logger.error(
                "%s[%s] finished, but its lease on key %r had lapsed and another worker "
                "took it over: the body may have run twice. With the store reachable by "
                "the other workers, this worker could not renew it (stalled, or cut off "
                "from the store alone); raise reliable_lease_seconds or check the store's "
                "latency", name, task_id, key,
            )
            return
        self.reliable.count("complete_failed")
        logger.error(
            "%s[%s] finished, but the store could not record it%s: the lease on key %r "
            "lapses and the task will be run again", name, task_id,
            f" ({error})" if error is not None else "", key,
        )


def _fits(fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the call binds to ``fun``'s signature (asked only after a TypeError)."""
    try:
        keys.bind_arguments(fun, args, kwargs)
    except ArgumentsMismatch:
        return False
    return True



def _sleep_backoff(attempt: int) -> None:
    """Full jitter, doubling from 50 ms to at most 1 s: a store back from an outage
    gets the completion within about a second."""
    time.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
