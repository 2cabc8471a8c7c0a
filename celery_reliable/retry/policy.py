"""Which failures are retried, and after how long.

An exception is *permanent* (never retried: bad input, a 4xx) or *transient*
(worth another attempt: a timeout, a 503).  In order:

1. ``PermanentError`` and the task's ``permanent_on`` types are permanent;
2. the task's ``classify(exc)`` callable may decide (True: transient, False:
   permanent, None: no opinion);
3. the task's ``retry_on`` types, and Celery's ``SoftTimeLimitExceeded``, are
   transient;
4. anything else follows ``reliable_retry_unclassified`` ('retry' by default:
   bounded by ``max_attempts`` and the retry budget).

Delays use exponential backoff with *full jitter* (a uniform draw between 0
and ``min(cap, base * 2**attempt)``), which spreads a storm of failures instead
of synchronising it (the AWS architecture blog's analysis of backoff).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded

from celery_reliable.errors import ConfigurationError, PermanentError

Classifier = Callable[[BaseException], "bool | None"]


class Verdict(str, enum.Enum):
    RETRY = "retry"
    PERMANENT = "permanent"
    EXHAUSTED = "attempts_exhausted"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_base: float
    backoff_cap: float
    unclassified: str = "retry"
    retry_on: tuple[type[BaseException], ...] = ()
    permanent_on: tuple[type[BaseException], ...] = ()
    classify: Classifier | None = None

    def __post_init__(self) -> None:
        for name in ("retry_on", "permanent_on"):
            for kind in getattr(self, name):
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    raise ConfigurationError(
                        f"{name} must list exception classes, got {kind!r}; e.g. "
                        f"{name}=(ConnectionError, TimeoutError)"
                    )

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (PermanentError, self.permanent_on)):
            return False
        if self.classify is not None:
            verdict = self.classify(exc)
            if verdict is not None:
                return bool(verdict)
        if isinstance(exc, (self.retry_on, SoftTimeLimitExceeded)):
            return True
        return self.unclassified == "retry"

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 60))
        return (rng or random).uniform(0, ceiling)

    def decide(
        self, exc: BaseException, attempt: int, rng: random.Random | None = None
    ) -> Decision:
        """What to do after attempt number ``attempt`` (1 = the first run) failed with ``exc``."""
        if not self.is_transient(exc):
            return Decision(Verdict.PERMANENT, reason="permanent_error")
        if attempt >= self.max_attempts:
            return Decision(Verdict.EXHAUSTED, reason="attempts_exhausted")
        return Decision(Verdict.RETRY, self.backoff(attempt, rng))
