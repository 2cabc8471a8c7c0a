"""Circuit breakers per dependency, shared by every worker through the store.

A task declares ``dependency="mailer"``.  After
``reliable_breaker_threshold`` consecutive transient failures of that
dependency the breaker opens: tasks for it are *deferred* (published again
later, no attempt used, recorded as such), not run and not failed.  After
``reliable_breaker_cool_down`` one worker at a time runs a probe; its success
closes the breaker, its failure opens it again.

A closed breaker is cached in the process for a second, so the success path
of a healthy dependency costs no store round trip per task; a success is only
reported when there were failures to clear.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from celery_reliable.stores.model import BreakerCheck

if TYPE_CHECKING:
    from celery_reliable.runtime import Runtime

CACHE_SECONDS = 1.0


class Breakers:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._cache: dict[str, tuple[BreakerCheck, float]] = {}
        self._lock = threading.Lock()

    def check(self, name: str, owner: str) -> BreakerCheck:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0].state == "closed" and now - cached[1] < CACHE_SECONDS:
            return cached[0]
        settings = self.runtime.settings
        check = self.runtime.store.breaker_check(name, owner, settings.lease_seconds)
        with self._lock:
            self._cache[name] = (check, now)
        return check

    def report(self, name: str, ok: bool, was: BreakerCheck) -> None:
        if ok and was.state == "closed" and was.failures == 0:
            return  # nothing to clear: keep the success path free of round trips
        settings = self.runtime.settings
        state = self.runtime.store.breaker_report(
            name, ok, settings.breaker_threshold, settings.breaker_cool_down
        )
        with self._lock:
            failures = 0 if ok else was.failures + 1
            self._cache[name] = (BreakerCheck(state != "open", state, 0.0, failures),
                                 time.monotonic())
