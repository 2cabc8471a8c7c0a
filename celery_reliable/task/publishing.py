"""The producer side of ReliableTask: persist, then publish; deduplicated at the source.

:meth:`Publishing.apply_async` derives the idempotency key, puts it in the
message *headers* (the only place every transport keeps), writes the task
record to the store (persist-on-publish; it also answers "is this key already
done or in flight?" in the same round trip) and only then publishes.  Without a
declared key the store's round trip overlaps Celery building the message
(:class:`_PublishGate`).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery.result import AsyncResult

from celery_reliable.errors import IdempotencyKeyConflict, StoreUnavailable
from celery_reliable.headers import BEAT_HEADER, HEADER_FINGERPRINT, HEADER_KEY, HEADER_SLOT
from celery_reliable.keys import is_publish_key
from celery_reliable.records import encode
from celery_reliable.settings import Settings
from celery_reliable.states import State, recorder
from celery_reliable.stores.base import Answer
from celery_reliable.stores.model import PublishStatus
from celery_reliable.task.base import TaskBase

logger = logging.getLogger("celery_reliable")


class _AlreadyPublished(Exception):
    """An existing task stands for the call: nothing is published (caught in
    ``apply_async``, never seen by callers)."""

    def __init__(self, task_id: str | None) -> None:
        super().__init__(task_id)
        self.task_id = task_id


class _PublishGate:
    """The producer Celery gets while the persist call is under way.

    Celery builds the message, then calls ``publish``: the gate takes the store's
    verdict first (``verdict`` returns to let the message go, raises to stop it:
    the store is down), so the store's round trip overlaps building the message.
    Anything published after the task's message (a ``task-sent`` event) goes
    straight through.  A call that may be deduplicated does not use it: its verdict
    is read before Celery's publish starts, so that ``before_task_publish`` fires
    only for a message that is sent.
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


class Publishing(TaskBase):
    """ReliableTask on the producer: ``apply_async`` persists, deduplicates, publishes."""

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
        dump = getattr(self, "_dump_pydantic_arguments", None)  # pydantic=True (Celery 5.7)
        if dump is not None and options.get("serializer", self.serializer) != "pickle":
            # Celery's apply_async dumps the models: key, fingerprint and record are of
            # the call as it is sent (dumping what is dumped already changes nothing).
            dumped_args, dumped_kwargs = dump(args, kwargs)
            args, kwargs = tuple(dumped_args), dict(dumped_kwargs)
        headers = dict(options.pop("headers", None) or {})
        per_call_key = options.pop("idempotency_key", None) or headers.get(HEADER_SLOT)
        # A call that names its task id has promised that id to someone: Celery's canvas
        # (chain, group, chord freeze their members' ids) or the caller; a call with
        # callbacks has promised to run them.  It must get a message of its own, so the
        # claim dedupes it (skipped, with the first run's result), not the producer.
        # Retries and deferrals republish the running task under its own id: promised too.
        promised = task_id is not None or bool(link or link_error)
        task_id = task_id or str(uuid.uuid4())
        if HEADER_KEY in headers and per_call_key is None:
            key, fingerprint = headers[HEADER_KEY], headers[HEADER_FINGERPRINT]
        else:
            key, fingerprint = self.key_for(args, kwargs, per_call_key, task_id)
        headers[HEADER_KEY], headers[HEADER_FINGERPRINT] = key, fingerprint
        if headers.get(BEAT_HEADER) and HEADER_SLOT not in headers:
            self._warn_unslotted()
        if self.deadline is not None and options.get("expires") is None:
            options["expires"] = self.deadline
        # A republish of the running task itself (retry, deferral) goes out even with the
        # store down, and its PENDING was recorded by the first publish.  It always names
        # its id, so a call without one needs no look at the request.
        internal = promised and task_id == self.request.id
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
        settings = self.reliable_settings()
        # PENDING happened before the message went out: a worker may record RECEIVED
        # before this call returns, so stamp it now and record it after (the store
        # orders by these times, whoever's flush comes first).
        published_at = time.time()
        # Only a declared key can stand for an existing task: a publish's own key is new.
        dedupe = (settings.dedupe_on_publish and not promised
                  and not is_publish_key(key, task_id))
        answer = self._before_publish(
            settings, task_id, key, fingerprint, args, kwargs,
            lambda: {**options, "headers": headers, "link": link, "link_error": link_error,
                     "shadow": shadow},
            dedupe=dedupe,
        )
        if answer is None:
            result = publish(producer=producer)
        elif dedupe:
            # Decided before Celery's publish starts: before_task_publish and
            # after_task_publish fire only for a message that is sent.
            try:
                self._judge(settings, answer, task_id, key, internal)
            except _AlreadyPublished as existing:
                recorder(app).transitions(
                    task_id, self.name, key, (State.PENDING, State.DEDUPLICATED),
                    detail={"existing_task": existing.task_id}, at=published_at)
                return self._existing(existing.task_id, options)
            result = publish(producer=producer)
        else:
            with app.producer_or_acquire(producer) as real:
                gate = _PublishGate(
                    real, lambda: self._judge(settings, answer, task_id, key, internal))
                result = publish(producer=gate)
        if not internal:
            attempt = int(options.get("retries") or 0) + 1
            recorder(app).transition(task_id, self.name, key, State.PENDING, attempt=attempt,
                                     at=published_at)
        return result

    def _existing(self, task_id: str | None, options: Mapping[str, Any]) -> AsyncResult:
        """The handle of the task that stands for a deduplicated call, as Celery's
        ``send_task`` would have built it (``ignored`` keeps ``.get()`` of an
        ``ignore_result`` task from waiting for a result that is never stored)."""
        result = self.AsyncResult(task_id)
        result.ignored = options.get("ignore_result", self.ignore_result)
        return result

    def _warn_unslotted(self) -> None:
        """Once per task and process: beat published this task with a scheduler that does
        not key its calls by schedule slot, so each beat process runs every slot."""
        if self.__dict__.get("_warned_unslotted"):
            return
        self.__dict__["_warned_unslotted"] = True
        logger.warning(
            "%s was published by celery beat without a schedule-slot key: every beat "
            "process that runs will run each slot. Run beat with a slot-keyed scheduler "
            "(beat_scheduler = 'celery_reliable.beat:PersistentScheduler', or "
            "'celery_reliable.beat:DatabaseScheduler' for django-celery-beat; see "
            "docs/periodic-tasks.md)", self.name,
        )

    def _before_publish(
        self, settings: Settings, task_id: str, key: str, fingerprint: str,
        args: Sequence[Any], kwargs: Mapping[str, Any],
        options: Callable[[], Mapping[str, Any]], dedupe: bool,
    ) -> Answer | None:
        """Start persisting the record and the dedupe check (``dedupe``: this call may be
        answered by an existing task); None when there is nothing to do.  ``options``:
        the publish options, built only when a record is written.

        The answer is read by :meth:`_judge` only when Celery hands the built message
        to the producer, so the store's round trip overlaps building it.
        """
        dedupe = dedupe and settings.dedupe_on_publish
        if settings.persist_on_publish:
            record, delay = encode(
                self._get_app(), name=self.name, task_id=task_id, key=key,
                fingerprint=fingerprint, args=args, kwargs=kwargs, options=options(),
                serializer=self.serializer,
            )
            return self.reliable.store.publish_soon(
                record, delay + settings.rescue_after, dedupe)
        if dedupe:
            return self.reliable.store.lookup_soon(key, fingerprint)
        return None

    def _judge(
        self, settings: Settings, answer: Answer, task_id: str, key: str, internal: bool
    ) -> None:
        """The store's answer, just before the message goes out: returns to publish it;
        raises :class:`_AlreadyPublished` (an existing task stands for this call),
        :class:`IdempotencyKeyConflict` or :class:`StoreUnavailable` to stop it."""
        try:
            outcome = answer()
        except StoreUnavailable as exc:
            if internal or settings.on_store_down_at_publish == "publish":
                self.reliable.count("published_unrecorded")
                logger.error("publishing %s[%s] unrecorded: %s", self.name, task_id, exc)
                return
            raise self._not_published(task_id, key, exc) from exc
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

    def _not_published(self, task_id: str, key: str, exc: StoreUnavailable) -> StoreUnavailable:
        """The error of a publish refused because the store is down: what was lost and
        what to do.  Inside the caller's transaction it rolls the transaction back; in
        a callback run after the commit (Django's ``transaction.on_commit``) the call
        is gone unless the caller makes it again."""
        self.reliable.count("publish_refused_store_down")
        spelling = self.reliable.spelling
        error = StoreUnavailable(
            f"{self.name}[{task_id}] with key {key!r} was neither published nor recorded: "
            f"{exc}. Inside a transaction, let this error roll it back; after a commit "
            "(transaction.on_commit) the task is lost unless you call it again when the "
            f"store is back, or set {spelling('on_store_down_at_publish')} = 'publish' to "
            "publish it unrecorded (no rescue if the broker loses it)"
        )
        logger.error("%s", error)
        return error
