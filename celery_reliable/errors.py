"""The one exception hierarchy of celery_reliable.

Every error raised by the package is a :class:`ReliableError`, so callers can
catch ours without catching Celery's.  Messages say what happened *and* what to
do about it: they are read at 3 a.m. from a log line.
"""

from __future__ import annotations


class ReliableError(Exception):
    """Root of every error this package raises."""


class ConfigurationError(ReliableError):
    """A ``reliable_*`` setting, task option or per-call option is invalid."""


class IdempotencyKeyError(ReliableError):
    """The idempotency key of a call cannot be derived (bad template, missing argument)."""


class ArgumentsMismatch(IdempotencyKeyError, TypeError):
    """The call's arguments do not fit the task's signature (``add.delay(5)`` for
    ``add(x, y)``).  A ``TypeError``, as Celery raises for the same call, so callers'
    ``except TypeError`` keeps working."""


class IdempotencyKeyConflict(ReliableError):
    """The same idempotency key was used with different arguments.

    Like payment APIs, we refuse rather than silently skip: the second call is
    almost certainly a bug in how the key is built.
    """


class UnpersistableTask(ReliableError):
    """The call cannot be written to the store (arguments or options do not serialize)."""


class StoreError(ReliableError):
    """The store answered with something we cannot interpret (schema missing, bad data)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached.

    Tasks fail closed on it: the body is not run unguarded, the message is
    deferred and tried again later.
    """


class TaskInFlight(ReliableError):
    """Another copy holds the key's lease; raised only where we cannot defer (eager mode)."""


class PermanentError(ReliableError):
    """Raise from a task body for a failure that no retry can fix (bad input, 4xx).

    The task is not retried; it goes straight to the dead letters.
    """


class TaskLostTooOften(ReliableError):
    """The task's runs died with their worker too often; it was dead-lettered."""


class RetryBudgetExhausted(ReliableError):
    """A retry was refused by the budget and dead-lettered (reliable_on_retry_budget_exhausted)."""
