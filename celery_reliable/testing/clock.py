"""A clock tests can move forward: leases, retention, budgets and breakers on ``memory://``.

The memory store and the memory state store read the time through their ``clock``
attribute; the harness gives both this one.  It follows the real time plus an offset,
so the worker's own timers (countdowns, the heartbeat) and the store agree until a
test calls :meth:`Clock.advance`.  Redis and SQL stores read their server's or the
process's time: advancing is refused there rather than silently doing nothing.
"""

from __future__ import annotations

import threading
import time


class ClockNotAdjustable(AssertionError):
    """The store under test does not read the harness's clock (not ``memory://``)."""


class Clock:
    """``clock()`` is the time the memory stores see; ``advance(seconds)`` moves it."""

    def __init__(self, adjustable: bool = True, store_url: str = "memory://") -> None:
        self._offset = 0.0
        self._lock = threading.Lock()
        self.adjustable = adjustable
        self._store_url = store_url

    def __call__(self) -> float:
        return time.time() + self._offset

    def now(self) -> float:
        return self()

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward (a lease lapses, a retention window ends, a
        breaker cools down, a budget window slides); the new time."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward; got advance({seconds})")
        if not self.adjustable:
            raise ClockNotAdjustable(
                f"the store under test ({self._store_url}) reads its own clock, not the "
                "harness's: advance() works with memory:// only (run this test without "
                "--reliable-store-url, or wait for the real time to pass)"
            )
        with self._lock:
            self._offset += seconds
        return self()
