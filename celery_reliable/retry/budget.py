"""Retry budget: retries may be at most a fraction of recent first attempts.

A retry storm (a dependency down, every task failing) must not multiply the
load on the dependency.  The budget, shared by every worker through the store,
allows per scope (the task's ``dependency``, else its name) at most
``reliable_retry_budget_ratio`` x the first attempts of the last
``reliable_retry_budget_window`` seconds, plus ``reliable_retry_budget_floor``
retries per second so that a quiet system can still retry.

The gate sits where a retry would *run*: a retry the budget refuses is deferred
(not run, its attempt not used) or dead-lettered with reason
``retry_budget_exhausted``, as ``reliable_on_retry_budget_exhausted`` says.
Never dropped.

First attempts are counted in the worker process and deposited once a second
in one store round trip per scope, so the success path pays nothing.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING

from celery_reliable.errors import StoreError

if TYPE_CHECKING:
    from celery_reliable.runtime import Runtime

logger = logging.getLogger("celery_reliable.budget")

FLUSH_INTERVAL = 1.0


class BudgetMeter:
    """Counts first attempts per scope in this process and deposits them each second."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._pending: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def first_attempt(self, scope: str) -> None:
        with self._lock:
            self._pending[scope] += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="celery-reliable-budget", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, collections.Counter()
        for scope, count in pending.items():
            try:
                self.runtime.store.budget_deposit(scope, count)
            except StoreError as exc:
                # Under-counting first attempts only makes the budget stricter.
                self.runtime.count("budget_error")
                logger.warning("could not count %d first attempts of %s: %s", count, scope, exc)

    def stop(self) -> None:
        self._stop.set()
