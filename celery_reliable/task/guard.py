"""Why the guarantees live in ``run``, not in ``__call__``.

Celery's tracer (``celery/app/trace.py``, 5.x) calls ``task.run`` directly when
the task class does not customise ``__call__``, and the task itself otherwise.
A subclass that overrides ``__call__`` to wrap the body (Flask's documented
pattern: ``with app.app_context(): return self.run(*args, **kwargs)``) replaces
any guard kept in ``__call__``, silently: no claim, no states, no completion.
Every path to the body goes through ``self.run``, so that is where the guard is:
:class:`GuardedRun` replaces the ``run`` of every ReliableTask class when the
class is created, and the claim, the lease and the outcome wrap the body
whichever ``__call__`` Celery calls.

The guard steps aside when there is no delivery to guard (``task(...)`` called
as a plain function: ``request.called_directly``) and inside itself (``run``
called again within the guarded body, by ``super().run`` or by Celery's
``autoretry_for`` wrapper): the body then runs as written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: set on a delivery's request while its guarded body runs
_RUNNING = "_reliable_guard_running"


class Guarded(Protocol):
    """What the guard needs from the task (``Execution`` provides it)."""

    @property
    def request(self) -> Any: ...

    def _execute(
        self, body: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


class GuardedRun:
    """The ``run`` of a ReliableTask class: its body behind the delivery's guarantees.

    A data descriptor, so that an assignment to ``task.run`` (Celery's
    ``autoretry_for`` sets ``task.run`` to a wrapper of the ``run`` it read,
    ``celery/app/autoretry.py``) puts the new callable *inside* the guard instead of
    replacing it: the claim stays outermost, the retry wrapper runs within it.
    """

    def __init__(self, body: Any) -> None:
        #: the class's ``run`` as written: a function, a staticmethod or a callable
        self.body = body
        self._slot = f"_reliable_run_{id(self):x}"

    def __get__(self, task: Any, owner: type | None = None) -> Any:
        if task is None:
            return _bind(self.body, None, owner)
        guarded = task.__dict__.get(self._slot)
        if guarded is None:  # once per task instance: key_for reads ``self.run`` per publish
            guarded = task.__dict__[self._slot] = GuardedCall(task, _bind(self.body, task, owner))
        return guarded

    def __set__(self, task: Any, value: Callable[..., Any]) -> None:
        task.__dict__[self._slot] = GuardedCall(task, value)


class GuardedCall:
    """``task.run`` as the task's callers see it (``__wrapped__``: the body, so its
    signature is the body's: keys and templates bind to it)."""

    __slots__ = ("__wrapped__", "_task")

    def __init__(self, task: Guarded, body: Callable[..., Any]) -> None:
        self._task = task
        self.__wrapped__ = body

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.within(self._task.request, args, kwargs)

    def within(self, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call in ``request``, the task's current one (the task's ``__call__`` has
        read it already: a read of ``task.request`` costs about a microsecond)."""
        if request.called_directly or request.__dict__.get(_RUNNING):
            return self.__wrapped__(*args, **kwargs)
        request.__dict__[_RUNNING] = True
        try:
            return self._task._execute(self.__wrapped__, args, kwargs)
        finally:
            request.__dict__[_RUNNING] = False

    def __repr__(self) -> str:
        return f"<guarded run of {self.__wrapped__!r}>"


def _bind(body: Any, task: Any, owner: type | None) -> Any:
    get = getattr(type(body), "__get__", None)
    return body if get is None else get(body, task, owner)


def unwrap(run: Any) -> Any:
    """The body a class attribute ``run`` stands for (for signature checks)."""
    return run.body if isinstance(run, GuardedRun) else run
