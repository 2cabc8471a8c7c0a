from __future__ import annotations

import random
import statistics

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from celery_reliable import ConfigurationError, PermanentError
from celery_reliable.retry.policy import RetryPolicy, Verdict


def policy(**kwargs: object) -> RetryPolicy:
    options: dict[str, object] = {"max_attempts": 5, "backoff_base": 1.0, "backoff_cap": 30.0}
    options.update(kwargs)
    return RetryPolicy(**options)  # type: ignore[arg-type]


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def test_classification_order() -> None:
    p = policy(
        retry_on=(ConnectionError,), permanent_on=(KeyError,), unclassified="fail",
        classify=lambda exc: exc.status >= 500 if isinstance(exc, HTTPError) else None,
    )
    assert p.is_transient(ConnectionError())
    assert p.is_transient(SoftTimeLimitExceeded())
    assert p.is_transient(HTTPError(503))
    assert not p.is_transient(HTTPError(400))
    assert not p.is_transient(PermanentError("bad input"))
    assert not p.is_transient(KeyError("x"))
    assert not p.is_transient(ValueError("unclassified"))
    assert policy().is_transient(ValueError("unclassified, default retry"))


def test_permanent_wins_over_retry_on() -> None:
    class Both(PermanentError, ConnectionError): ...

    assert not policy(retry_on=(ConnectionError,)).is_transient(Both())


def test_decide_bounds_attempts() -> None:
    p = policy(max_attempts=3)
    assert p.decide(ConnectionError(), attempt=1).verdict is Verdict.RETRY
    assert p.decide(ConnectionError(), attempt=2).verdict is Verdict.RETRY
    assert p.decide(ConnectionError(), attempt=3).verdict is Verdict.EXHAUSTED
    assert p.decide(PermanentError("no"), attempt=1).verdict is Verdict.PERMANENT


def test_full_jitter_backoff_statistics() -> None:
    rng = random.Random(42)
    p = policy(backoff_base=1.0, backoff_cap=30.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (20, 30.0)]:
        draws = [p.backoff(attempt, rng) for _ in range(4000)]
        assert min(draws) >= 0 and max(draws) <= ceiling  # the cap holds
        # uniform on [0, ceiling]: mean ceiling/2, spread over the whole range
        assert statistics.mean(draws) == pytest.approx(ceiling / 2, rel=0.05)
        assert min(draws) < ceiling * 0.05 and max(draws) > ceiling * 0.95
        assert len({round(d, 6) for d in draws}) > 3900  # jittered, not a fixed delay


def test_bad_types_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="retry_on must list exception classes"):
        policy(retry_on=("ConnectionError",))
