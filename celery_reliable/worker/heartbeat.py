"""Lease renewal for running bodies: one daemon thread per process.

A claim is a lease; while the body runs, this thread renews every lease held in
the process, all in one store round trip, three times per lease.  So a long
task is never rescued while its worker lives, and a dead worker's lease lapses
within one lease length.  Task authors do nothing for it.

The thread runs in the process that executes the body (the prefork child, the
solo worker, each thread of the threads pool share one), because that is the
process whose death must let the lease lapse.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from celery_reliable.errors import StoreError
from celery_reliable.stores.model import Lease

if TYPE_CHECKING:
    from celery_reliable.runtime import Runtime

logger = logging.getLogger("celery_reliable.heartbeat")


class Heartbeat:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._leases: dict[str, tuple[Lease, float]] = {}  # owner -> (lease, lease seconds)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def track(self, lease: Lease, seconds: float) -> None:
        """Renew ``lease`` until :meth:`untrack` (the body is running)."""
        with self._lock:
            self._leases[lease.owner] = (lease, seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="celery-reliable-heartbeat", daemon=True
                )
                self._thread.start()

    def untrack(self, owner: str) -> None:
        with self._lock:
            self._leases.pop(owner, None)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _interval(self) -> float:
        with self._lock:
            seconds = [s for _, s in self._leases.values()]
        return min(seconds, default=self.runtime.settings.lease_seconds) / 3

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval())
            if self._stopped:
                return
            self.beat()

    def beat(self) -> None:
        """Renew every tracked lease now (one round trip per lease length)."""
        with self._lock:
            groups: dict[float, list[Lease]] = {}
            for lease, seconds in self._leases.values():
                groups.setdefault(seconds, []).append(lease)
        for seconds, leases in groups.items():
            try:
                owned = self.runtime.store.heartbeat(leases, seconds)
            except StoreError as exc:
                self.runtime.count("heartbeat_error")
                logger.warning(
                    "could not renew %d lease(s): %s; they lapse in %.0f s unless the store "
                    "comes back", len(leases), exc, seconds,
                )
                continue
            for lease, ok in zip(leases, owned, strict=True):
                if not ok:
                    self.runtime.count("lease_lost")
                    logger.error(
                        "task %s lost its lease on key %r while running: another worker took "
                        "it over (the lease lapsed: a stalled process or store outage)",
                        lease.task_id, lease.key,
                    )
                    self.untrack(lease.owner)
