"""celery_reliable: durable, effectively-once, tracked Celery tasks.

The public surface is what ``__all__`` lists; everything else may change.
"""

from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.signals import task_dead_lettered
from celery_reliable.errors import (
    ArgumentsMismatch,
    ConfigurationError,
    IdempotencyKeyConflict,
    IdempotencyKeyError,
    PermanentError,
    ReliableError,
    RetryBudgetExhausted,
    StoreError,
    StoreUnavailable,
    TaskInFlight,
    TaskLostTooOften,
    UnpersistableTask,
)
from celery_reliable.keys import ARGUMENTS
from celery_reliable.runtime import runtime
from celery_reliable.task import ReliableTask
from celery_reliable.worker.steps import install

__version__ = "0.1.0.dev0"

__all__ = [
    "ARGUMENTS",
    "ArgumentsMismatch",
    "ConfigurationError",
    "DeadLetters",
    "IdempotencyKeyConflict",
    "IdempotencyKeyError",
    "PermanentError",
    "ReliableError",
    "ReliableTask",
    "RetryBudgetExhausted",
    "StoreError",
    "StoreUnavailable",
    "TaskInFlight",
    "TaskLostTooOften",
    "UnpersistableTask",
    "install",
    "runtime",
    "task_dead_lettered",
]
