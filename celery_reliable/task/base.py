"""The part of ReliableTask every other part builds on: options, settings, keys."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from celery import Celery, Task

from celery_reliable import keys
from celery_reliable.errors import ArgumentsMismatch, ConfigurationError, ReliableError
from celery_reliable.headers import HEADER_KEY
from celery_reliable.retry.policy import Classifier
from celery_reliable.runtime import Runtime, runtime
from celery_reliable.settings import Settings, per_task_names
from celery_reliable.task import definition, options
from celery_reliable.task.guard import unwrap


class _CurrentKey:
    """``task.idempotency_key``: the key source on the class, the current key in a body."""

    def __get__(self, instance: TaskBase | None, owner: type[TaskBase]) -> Any:
        if instance is None:
            return owner.key_source
        return (instance.request.headers or {}).get(HEADER_KEY)


class TaskBase(Task):  # type: ignore[misc]
    """What every part of :class:`~celery_reliable.ReliableTask` shares: the task's
    options, its settings and how a call's idempotency key is derived."""

    abstract = True
    _celery_reliable_task: ClassVar[bool] = True  # celery_reliable.identity.MARK
    acks_late = True
    reject_on_worker_lost = True

    #: template ("receipt:{order_id}"), callable(*args, **kwargs) -> str,
    #: :data:`~celery_reliable.ARGUMENTS` (a hash of the arguments), or None: the key of
    #: a call is then its publish (the task id)
    key_source: ClassVar[Any] = None
    idempotency_key: Any = _CurrentKey()
    #: arguments that do not change the outcome (``slow``, ``trace_id``): left out of the
    #: fingerprint and of an :data:`~celery_reliable.ARGUMENTS` key, so two calls that
    #: differ only there are the same call (a template or callable still sees them)
    fingerprint_exclude: ClassVar[Sequence[str]] = ()
    #: what was wrong with this task's definition when a worker started (see
    #: task/definition.py): raised by every call of :meth:`key_for`
    definition_error: ClassVar[ReliableError | None] = None

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
    publish_key_retention: float | None = None
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
        try:
            options.check(cls)  # a typo of an option must not run the task with the default
        except ReliableError as exc:  # ``app``: set by the decorator (a worker's finalize)
            definition.refuse(cls.__dict__.get("app"), cls, exc)
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

        try:
            cls._check_definition()
        except ReliableError as exc:
            definition.refuse(app, cls, exc)
        install(app)

    @classmethod
    def _check_definition(cls) -> None:
        """Refuse forced options turned off, a bad key template or exclusion."""
        name = cls.__dict__.get("name") or cls.__name__
        for option in ("acks_late", "reject_on_worker_lost"):
            if getattr(cls, option) is not True:
                raise ConfigurationError(
                    f"{name} sets {option}={getattr(cls, option)!r}, but ReliableTask needs "
                    f"{option}=True: without it a crashed worker loses the task. Remove the "
                    "option, or do not use ReliableTask for this task"
                )
        if "run" in cls.__dict__:
            target = _run_signature_target(cls)
            if isinstance(cls.key_source, str):
                keys.check_template(cls.key_source, target, name)
            if cls.fingerprint_exclude:
                cls.fingerprint_exclude = keys.check_excluded(
                    cls.fingerprint_exclude, target, name)

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
        self, args: Sequence[Any], kwargs: Mapping[str, Any], key: Any = None,
        task_id: str | None = None,
    ) -> tuple[str, str]:
        """(idempotency key, argument fingerprint) of the call ``task_id``.

        ``key``: the per-call option (a key, or :data:`~celery_reliable.ARGUMENTS`);
        without it the task's own source decides, and a task that declares none is
        keyed by ``task_id``, its publish."""
        if self.definition_error is not None:
            raise self.definition_error
        try:
            arguments = keys.bind_arguments(self.run, args, kwargs)
        except ArgumentsMismatch:
            if self.typing:
                raise
            # typing=False: Celery publishes a call that does not fit, and the worker
            # fails it with the TypeError (Execution dead-letters it at once).
            arguments = keys.raw_arguments(args, kwargs)
        identity = keys.identity(arguments, self.fingerprint_exclude)
        text = keys.canonical(identity)  # once: the fingerprint and a hash key share it
        fingerprint = keys.fingerprint(identity, text)
        source: Any = self.key_source if key is None else key
        if source is keys.ARGUMENTS:
            return keys.argument_key(self.name, identity, text), fingerprint
        if key is not None:
            return keys.validate_key(key, self.name), fingerprint
        if isinstance(source, _MethodKey):
            source = functools.partial(source.method, self)
        key = keys.derive_key(self.name, source, arguments, args, kwargs, text, task_id)
        return key, fingerprint


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
    run = unwrap(inspect.getattr_static(cls, "run"))
    if isinstance(run, staticmethod):
        return run.__func__
    if isinstance(run, types.FunctionType):
        params = list(inspect.signature(run).parameters.values())[1:]

        def stand_in(*args: Any, **kwargs: Any) -> None: ...

        stand_in.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return stand_in
    return run  # type: ignore[no-any-return]

