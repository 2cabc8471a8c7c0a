"""ReliableTask: persist → publish on the producer, claim → run → complete on the worker.

Producer side (:meth:`ReliableTask.apply_async`): derive the idempotency key,
put it in the message *headers* (the only place every transport keeps), write
the task record to the store (persist-on-publish; it also answers "is this key
already done or in flight?" in the same round trip) and only then publish.

Worker side (:meth:`ReliableTask.__call__`): claim the key's lease, run the
body while a heartbeat renews the lease, then complete (success) or release
(retry, failure).  What the claim answers decides everything else:

=============  =================================================================
claimed        run the body
taken over     run the body; the previous owner died (a *lost attempt*)
done           skip; return the first run's result (recorded as deduplicated)
busy           another copy runs now: never concurrently. A redelivery of the
               running task itself is absorbed (the rescuer covers its owner);
               another copy is deferred until the lease would have lapsed
conflict       same key, other arguments: refused (IdempotencyKeyConflict)
lost too often dead-lettered with reason ``worker_lost``; never run again
store down     fail closed: deferred with backoff, never run unguarded
=============  =================================================================

``acks_late`` and ``reject_on_worker_lost`` are forced on: the message is
acknowledged only after the outcome is written.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import time
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from celery.result import AsyncResult

from celery_reliable import keys
from celery_reliable.errors import (
    ConfigurationError,
    IdempotencyKeyConflict,
    ReliableError,
    StoreError,
    StoreUnavailable,
    TaskInFlight,
)
from celery_reliable.records import encode
from celery_reliable.retry.policy import Classifier, RetryPolicy, Verdict
from celery_reliable.runtime import Runtime, runtime
from celery_reliable.settings import Settings, per_task_names
from celery_reliable.states import State, recorder
from celery_reliable.stores.base import (
    Answer,
    BreakerCheck,
    Claim,
    ClaimStatus,
    Lease,
    PublishStatus,
)
from celery_reliable.worker.owner import owner_token

logger = logging.getLogger("celery_reliable")

HEADER_KEY = "reliable_key"
HEADER_FINGERPRINT = "reliable_fp"
HEADER_DEFERS = "reliable_defers"

#: states Celery has no event for; sent as ``task-<state>`` custom events
EVENT_STATES = frozenset({State.DEDUPLICATED, State.DEFERRED, State.DEAD_LETTERED})

#: completing is retried this often when the store blips: the body already ran.
_COMPLETE_TRIES = 5


class TaskLostTooOften(ReliableError):
    """The task's runs died with their worker too often; it was dead-lettered."""


class RetryBudgetExhausted(ReliableError):
    """A retry was refused by the budget and dead-lettered (reliable_on_retry_budget_exhausted)."""


class _AlreadyPublished(Exception):
    """Stops Celery's publish from inside the producer: an existing task stands for the
    call (caught in ``apply_async``, never seen by callers)."""

    def __init__(self, task_id: str | None) -> None:
        super().__init__(task_id)
        self.task_id = task_id


class _PublishGate:
    """The producer Celery gets while the persist/dedupe call is under way.

    Celery builds the message, then calls ``publish``: the gate takes the store's
    verdict first (``verdict`` returns to let the message go, raises to stop it),
    so the store's round trip overlaps building the message.  Anything published
    after the task's message (a ``task-sent`` event) goes straight through.
    """

    def __init__(self, producer: Any, verdict: Callable[[], None]) -> None:
        self._producer = producer
        self._verdict: Callable[[], None] | None = verdict

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self._verdict is not None:
            verdict, self._verdict = self._verdict, None
            verdict()
        return self._producer.publish(*args, **kwargs)


class _CurrentKey:
    """``task.idempotency_key``: the key source on the class, the current key in a body."""

    def __get__(self, instance: ReliableTask | None, owner: type[ReliableTask]) -> Any:
        if instance is None:
            return owner.key_source
        return (instance.request.headers or {}).get(HEADER_KEY)


class ReliableTask(Task):  # type: ignore[misc]
    """Base class of tasks that are durable, effectively-once and tracked.

    Use it as ``@app.task(base=ReliableTask, idempotency_key="receipt:{order_id}")``,
    as a subclass, or app-wide with ``Celery(..., task_cls="celery_reliable:ReliableTask")``.
    Per-task settings (``lease_seconds``, ``retention``, ``max_lost_attempts``,
    ``persist_on_publish``, ``dedupe_on_publish``, ``on_key_conflict``) are
    decorator options or class attributes; ``apply_async(idempotency_key=...)``
    overrides the key per call.
    """

    abstract = True
    acks_late = True
    reject_on_worker_lost = True

    #: template ("receipt:{order_id}"), callable(*args, **kwargs) -> str, or None (hash)
    key_source: ClassVar[Any] = None
    idempotency_key: Any = _CurrentKey()

    #: transient exception types (retried with backoff), and permanent ones (never retried)
    retry_on: Sequence[type[BaseException]] = ()
    permanent_on: Sequence[type[BaseException]] = ()
    #: optional ``classify(exc) -> True (transient) | False (permanent) | None (no opinion)``
    retry_classifier: Classifier | None = None

    #: the external system the body calls: scope of the retry budget and circuit breaker
    dependency: str | None = None
    #: seconds after publishing by which the task must have started, else it is
    #: dead-lettered with reason ``expired`` (sets Celery's ``expires`` per call)
    deadline: float | None = None

    lease_seconds: float | None = None
    retention: float | None = None
    max_lost_attempts: int | None = None
    persist_on_publish: bool | None = None
    dedupe_on_publish: bool | None = None
    on_key_conflict: str | None = None
    max_attempts: int | None = None
    retry_budget_ratio: float | None = None
    retry_budget_floor: float | None = None
    retry_budget_window: float | None = None
    on_retry_budget_exhausted: str | None = None
    retry_backoff_base: float | None = None
    retry_backoff_cap: float | None = None
    retry_unclassified: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Celery sets decorator options as class attributes: move a template or
        # callable given as ``idempotency_key`` aside and keep the descriptor.
        source = cls.__dict__.get("idempotency_key")
        if "idempotency_key" in cls.__dict__ and not isinstance(source, _CurrentKey):
            if isinstance(source, staticmethod):
                source = source.__func__
            elif source is not None and _is_method(source):
                # ``def idempotency_key(self, order_id)`` in a subclass: called on the task
                source = _MethodKey(source)
            cls.key_source = source
            cls.idempotency_key = _CurrentKey()

    @classmethod
    def on_bound(cls, app: Celery) -> None:
        """Checks at definition time, and the worker bootsteps installed on the app."""
        from celery_reliable.worker.steps import install

        name = cls.__dict__.get("name") or cls.__name__
        for option in ("acks_late", "reject_on_worker_lost"):
            if getattr(cls, option) is not True:
                raise ConfigurationError(
                    f"{name} sets {option}={getattr(cls, option)!r}, but ReliableTask needs "
                    f"{option}=True: without it a crashed worker loses the task. Remove the "
                    "option, or do not use ReliableTask for this task"
                )
        if isinstance(cls.key_source, str) and "run" in cls.__dict__:
            keys.check_template(cls.key_source, _run_signature_target(cls), name)
        install(app)

    # -- settings ---------------------------------------------------------------
    @property
    def reliable(self) -> Runtime:
        return runtime(self._get_app())

    def reliable_settings(self, rt: Runtime | None = None) -> Settings:
        """The app's settings with this task's overrides (validated once per process)."""
        rt = rt or self.reliable
        cached = self.__dict__.get("_reliable_settings")
        if cached is not None and cached[0] is rt:
            return cached[1]  # type: ignore[no-any-return]
        overrides = {
            name: getattr(self, name)
            for name in per_task_names()
            if getattr(self, name, None) is not None
        }
        settings = rt.settings.for_task(overrides)
        self.__dict__["_reliable_settings"] = (rt, settings)
        return settings

    def key_for(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], key: str | None = None
    ) -> tuple[str, str]:
        """(idempotency key, argument fingerprint) of a call."""
        arguments = keys.bind_arguments(self.run, args, kwargs)
        fingerprint = keys.fingerprint(arguments)
        if key is not None:
            return keys.validate_key(key, self.name), fingerprint
        source: Any = self.key_source
        if isinstance(source, _MethodKey):
            source = functools.partial(source.method, self)
        return keys.derive_key(self.name, source, arguments, args, kwargs), fingerprint

    # -- producer ----------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        per_call_key = options.pop("idempotency_key", None)
        headers = dict(options.pop("headers", None) or {})
        if HEADER_KEY in headers and per_call_key is None:
            key, fingerprint = headers[HEADER_KEY], headers[HEADER_FINGERPRINT]
        else:
            key, fingerprint = self.key_for(args, kwargs, per_call_key)
        headers[HEADER_KEY], headers[HEADER_FINGERPRINT] = key, fingerprint
        # A call that names its task id has promised that id to someone: Celery's canvas
        # (chain, group, chord freeze their members' ids) or the caller; a call with
        # callbacks has promised to run them.  It must get a message of its own, so the
        # claim dedupes it (skipped, with the first run's result), not the producer.
        # Retries and deferrals republish the running task under its own id: promised too.
        promised = task_id is not None or bool(link or link_error)
        task_id = task_id or str(uuid.uuid4())
        if self.deadline is not None and options.get("expires") is None:
            options["expires"] = self.deadline
        # A republish of the running task itself (retry, deferral) goes out even with the
        # store down, and its PENDING was recorded by the first publish.
        internal = task_id == self.request.id
        app = self._get_app()
        connection = options.pop("connection", None)
        if connection is not None and producer is None:  # what send_task would do with it
            producer = app.amqp.Producer(connection, auto_declare=False)
        publish = functools.partial(
            super().apply_async, args, kwargs, task_id=task_id, link=link,
            link_error=link_error, shadow=shadow, headers=headers, **options,
        )
        if app.conf.task_always_eager:
            return publish(producer=producer)
        answer = self._before_publish(
            task_id, key, fingerprint, args, kwargs,
            {**options, "headers": headers, "link": link, "link_error": link_error,
             "shadow": shadow},
            dedupe=not promised,
        )
        if answer is None:
            result = publish(producer=producer)
        else:
            with app.producer_or_acquire(producer) as real:
                gate = _PublishGate(real, lambda: self._judge(answer, task_id, key, internal))
                try:
                    result = publish(producer=gate)
                except _AlreadyPublished as existing:
                    rec = recorder(app)
                    rec.transition(task_id, self.name, key, State.PENDING)
                    rec.transition(task_id, self.name, key, State.DEDUPLICATED,
                                   detail={"existing_task": existing.task_id})
                    return self.AsyncResult(existing.task_id)
        if not internal:
            attempt = int(options.get("retries") or 0) + 1
            recorder(app).transition(task_id, self.name, key, State.PENDING, attempt=attempt)
        return result

    def _before_publish(
        self, task_id: str, key: str, fingerprint: str, args: Sequence[Any],
        kwargs: Mapping[str, Any], options: Mapping[str, Any], dedupe: bool,
    ) -> Answer | None:
        """Start persisting the record and the dedupe check (``dedupe``: this call may be
        answered by an existing task); None when there is nothing to do.

        The answer is read by :meth:`_judge` only when Celery hands the built message
        to the producer, so the store's round trip overlaps building it.
        """
        settings = self.reliable_settings()
        dedupe = dedupe and settings.dedupe_on_publish
        store = self.reliable.store
        if settings.persist_on_publish:
            record, delay = encode(
                self._get_app(), name=self.name, task_id=task_id, key=key,
                fingerprint=fingerprint, args=args, kwargs=kwargs, options=options,
            )
            return store.publish_soon(record, delay + settings.rescue_after, dedupe)
        if dedupe:
            return store.lookup_soon(key, fingerprint)
        return None

    def _judge(self, answer: Answer, task_id: str, key: str, internal: bool) -> None:
        """The store's answer, just before the message goes out: returns to publish it;
        raises :class:`_AlreadyPublished` (an existing task stands for this call),
        :class:`IdempotencyKeyConflict` or :class:`StoreUnavailable` to stop it."""
        settings = self.reliable_settings()
        try:
            outcome = answer()
        except StoreUnavailable as exc:
            if internal or settings.on_store_down_at_publish == "publish":
                self.reliable.count("published_unrecorded")
                logger.error("publishing %s[%s] unrecorded: %s", self.name, task_id, exc)
                return
            raise
        if outcome.status is PublishStatus.NEW:
            return
        if outcome.status is PublishStatus.CONFLICT and settings.on_key_conflict == "error":
            raise IdempotencyKeyConflict(
                f"idempotency key {key!r} of {self.name} was used by task {outcome.task_id} "
                "with different arguments; build the key from every argument that changes "
                "the outcome, or pass a distinct idempotency_key"
            )
        self.reliable.count("deduplicated_on_publish")
        logger.info(
            "not publishing %s with key %r: %s as task %s",
            self.name, key, outcome.status.value.replace("_", " "), outcome.task_id,
        )
        raise _AlreadyPublished(outcome.task_id)

    # -- worker ------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            # A plain function call: no message, nothing to guard.
            return super().__call__(*args, **kwargs)
        return self._execute(args, kwargs)

    def _execute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = self.request
        headers = request.headers if request.headers is not None else {}
        request.headers = headers
        if HEADER_KEY in headers:
            key, fingerprint = headers[HEADER_KEY], headers[HEADER_FINGERPRINT]
        else:  # sent by name (send_task) or by an older producer: derive it here
            key, fingerprint = self.key_for(args, kwargs)
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
            self._record(key, State.RECEIVED)
            self._record(key, State.STARTED,
                         detail={"taken_over": True, "lost": claim.lost} if taken_over else None)
            if taken_over:
                rt.count("taken_over")
                logger.warning(
                    "%s[%s] key %r: the previous run died with its worker (lost attempt %d of "
                    "%d); running it again", self.name, request.id, key, claim.lost,
                    settings.max_lost_attempts,
                )
            return self._run_claimed(
                rt, request, key, fingerprint, owner, args, kwargs, settings, breaker
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
        if not request.retries:
            rt.budget.first_attempt(scope)
        elif not rt.store.budget_withdraw(
            scope, settings.retry_budget_ratio, settings.retry_budget_floor,
            settings.retry_budget_window,
        ):
            rt.count("retry_budget_exhausted")
            if settings.on_retry_budget_exhausted == "dead_letter" or request.is_eager:
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
        args: tuple[Any, ...], kwargs: dict[str, Any], settings: Settings,
        breaker: BreakerCheck | None,
    ) -> Any:
        task_id = request.id
        store = rt.store
        heartbeat = rt.heartbeat
        heartbeat.track(Lease(key, owner, task_id), settings.lease_seconds)
        try:
            result = self.run(*args, **kwargs)
        except Retry as retry:
            self._release(key, owner, requeued=True)
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
            self._report(breaker, exc)
            self._after_failure(key, owner, exc, settings)
            raise
        except BaseException:
            # Shutdown or a time limit: the message is not acknowledged, so it is
            # delivered again, or rescued when the lease lapses.
            self._release(key, owner, requeued=True)
            raise
        finally:
            heartbeat.untrack(owner)
        if breaker is not None:
            self._report(breaker, None)
        self._complete(rt, request, key, fingerprint, owner, result, settings)
        self._record(key, State.SUCCEEDED)
        return result

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
            retry = self._republish(decision.delay, exc=exc, next_attempt=True)
            self._release(key, owner, requeued=True)
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
    ) -> None:
        """Record the success; the message is acknowledged after this returns.

        The answer is checked when it comes (the Redis store reads it before the
        next store call of this thread: see ``stores/redis_calls.py``); a store
        that cannot take the call is tried again for a few seconds: the body ran.
        """
        kept = keys.encode_result(result, settings.result_max_bytes)
        store, task_id = rt.store, request.id
        then = functools.partial(self._completed, self.name, task_id, key)
        for attempt in range(_COMPLETE_TRIES):
            try:
                store.complete_soon(
                    key, fingerprint, owner, task_id, kept, settings.retention, then
                )
            except StoreUnavailable as exc:
                rt.count("store_error")
                logger.warning("completing %s[%s]: %s", self.name, task_id, exc)
                _sleep_backoff(attempt)
                continue
            if request.is_eager:
                self._quietly("complete", store.drain)  # apply() returns a settled outcome
            return
        self._completed(self.name, task_id, key, None, None)

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
                "took it over: the body may run twice (raise reliable_lease_seconds, or "
                "check the store's latency)", name, task_id, key,
            )
            return
        self.reliable.count("complete_failed")
        logger.error(
            "%s[%s] finished, but the store could not record it%s: the lease on key %r "
            "lapses and the task will be run again", name, task_id,
            f" ({error})" if error is not None else "", key,
        )

    def _release(self, key: str, owner: str, requeued: bool) -> None:
        self._quietly(
            "release",
            lambda: self.reliable.store.release(key, owner, self.request.id, requeued),
        )

    def _dead_letter(
        self, key: str, reason: str, exc: BaseException | None, started: bool
    ) -> None:
        """Keep the task as a dead letter; ``started``: its body ran (and failed).

        The dead letter is published to the DLQ queue and indexed before Celery
        acknowledges this message (:mod:`celery_reliable.dlq.routing`).  When the
        DLQ queue does not take it, the message is requeued (``Reject``) instead
        of acknowledged: the failure is never acknowledged unrecorded.
        """
        from celery_reliable.dlq import routing
        from celery_reliable.dlq.publisher import DeadLetterPublishError

        request = self.request
        error = f"{type(exc).__name__}: {exc}" if exc is not None else None
        record = self._dead_record(key)
        failure = routing.failure_of(
            exc, attempts=(request.retries or 0) + 1, worker=request.hostname,
            queue=routing.queue_of(self._get_app(), record, request.delivery_info),
        )
        try:
            routing.dead_letter(
                self._get_app(), record, key, reason, error, failure,
                delivery_info=request.delivery_info, require_publish=not request.is_eager,
            )
        except DeadLetterPublishError as err:
            logger.error("%s[%s] not dead-lettered: %s; the message is requeued",
                         self.name, request.id, err)
            raise Reject(err, requeue=True) from err
        except StoreError as err:
            self.reliable.count("store_error")
            logger.error(
                "%s[%s]: published to the DLQ queue, but the store could not index it (%s); "
                "the lease lapses and the rescuer takes it from there", self.name, request.id,
                err,
            )
        if started:
            self._record(key, State.FAILED, error=exc)
        else:
            self._record(key, State.RECEIVED)
        self._record(key, State.DEAD_LETTERED, error=None if started else exc,
                     detail={"reason": reason, "error": error})
        logger.warning("%s[%s] dead-lettered (%s): %s", self.name, request.id, reason, error)
        self.reliable.count(f"dead_lettered_{reason}")

    def _dead_record(self, key: str) -> Any:
        """The task's record as persisted at publish (its routing options), else built
        from the request."""
        try:
            stored = self.reliable.store.get_record(self.request.id, key)
        except StoreError:
            stored = None
        if stored is not None and stored.name:
            return stored
        return self._fallback_record(key)

    def _fallback_record(self, key: str) -> Any:
        """The record to keep when none was persisted at publish (persist off)."""
        from celery_reliable.stores.base import TaskRecord

        request = self.request
        try:
            record, _ = encode(
                self._get_app(), name=self.name, task_id=request.id, key=key,
                fingerprint=(request.headers or {}).get(HEADER_FINGERPRINT, ""),
                args=request.args or (), kwargs=request.kwargs or {},
                options={"headers": request.headers or {}},
            )
        except ReliableError:
            # Arguments that cannot be serialized: keep who and why, without the call.
            return TaskRecord(request.id, self.name, key, "", "", "", "", "{}")
        return record

    def _record(
        self, key: str, state: State, *, error: BaseException | None = None,
        detail: Mapping[str, Any] | None = None, task_id: str | None = None,
    ) -> None:
        """Record a transition of this task (buffered; never raises into the task), and
        send a Celery event for the states Celery has no name for, so monitors such as
        Flower show them (workers started with ``-E``)."""
        request = self.request
        app = self._get_app()
        recorder(app).transition(
            task_id or request.id, self.name, key, state,
            attempt=(request.retries or 0) + 1, worker=request.hostname, error=error,
            detail=detail,
        )
        if state in EVENT_STATES and app.conf.worker_send_task_events and not request.is_eager:
            self._send_state_event(state, key, error, detail)

    def _send_state_event(
        self, state: State, key: str, error: BaseException | None,
        detail: Mapping[str, Any] | None,
    ) -> None:
        fields: dict[str, Any] = {"idempotency_key": key, **(detail or {})}
        if error is not None:
            fields["exception"] = f"{type(error).__name__}: {error}"
        try:
            self.send_event(f"task-{state.value.lower()}", **fields)
        except Exception as exc:  # noqa: BLE001 - an event must never fail the task
            self.reliable.count("event_error")
            logger.warning("%s[%s]: could not send the %s event: %s",
                           self.name, self.request.id, state.value, exc)

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
        if claim.status is ClaimStatus.DEAD_LETTERED:
            # Its final failure is in the dead letters; a copy still around (a
            # redelivery, an earlier rescue) must not run it again behind the
            # operator's back.  Ignore: acknowledged, and the FAILURE it left in
            # the result backend stays.
            self.reliable.count("dead_letter_copy_absorbed")
            logger.info(
                "%s[%s] not run: it is dead-lettered and was not replayed (a stale copy, "
                "absorbed)", self.name, request.id,
            )
            raise Ignore()
        return self._busy(claim, key, settings)

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
        retry = self._republish(countdown)
        key = (self.request.headers or {}).get(HEADER_KEY, "")
        self._record(key, State.RECEIVED)
        self._record(key, State.DEFERRED,
                     detail={"reason": reason, "countdown": round(countdown, 3)})
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


def _is_method(source: Any) -> bool:
    if not isinstance(source, types.FunctionType):
        return False
    params = list(inspect.signature(source).parameters)
    return bool(params) and params[0] == "self"


class _MethodKey:
    """A key method of a ReliableTask subclass: called with the task instance."""

    def __init__(self, method: Callable[..., str]) -> None:
        self.method = method


def _run_signature_target(cls: type[Task]) -> Callable[..., Any]:
    """``run`` as called on an instance: without ``self`` when it is a plain method."""
    run = inspect.getattr_static(cls, "run")
    if isinstance(run, staticmethod):
        return run.__func__
    if isinstance(run, types.FunctionType):
        params = list(inspect.signature(run).parameters.values())[1:]

        def stand_in(*args: Any, **kwargs: Any) -> None: ...

        stand_in.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return stand_in
    return run  # type: ignore[no-any-return]


def _sleep_backoff(attempt: int) -> None:
    time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
