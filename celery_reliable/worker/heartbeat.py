"""Lease renewal for running bodies: one daemon thread per process.

A claim is a lease; while the body runs, this thread renews every lease held in
the process, all in one store round trip, three times per lease.  So a long
task is never rescued while its worker lives, and a dead worker's lease lapses
within one lease length.  Task authors do nothing for it.

A lease is held until the task's outcome is written, not just until the body
returns: a store that is unreachable when the body finishes gets renewals (and
the completion) again as soon as it answers, with the lease still the task's
(the store's lease clock stopped meanwhile: ``stores/base.py``).  Between the
body's end and :meth:`Heartbeat.untrack` the lease is *settling*: a renewal that
finds it gone is the task's own completion or release landing first, so it is
not reported; a real loss shows in that write's answer instead.

A completion whose answer was lost with the connection (the store went down
after it was sent) is made again here, in the background (:meth:`Heartbeat.finish`):
the task's message is acknowledged by then, and its lease is held and renewed
until the store answers, for up to ``reliable_complete_timeout``.

The thread runs in the process that executes the body (the prefork child, the
solo worker, each thread of the threads pool share one), because that is the
process whose death must let the lease lapse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery_reliable.errors import StoreError
from celery_reliable.stores.model import Lease

if TYPE_CHECKING:
    from celery_reliable.runtime import Runtime

logger = logging.getLogger("celery_reliable.heartbeat")

#: seconds between renewals while the store does not answer: soon after it is back,
#: every lease is renewed (its owner's grace is the time the lease had left)
RETRY_EVERY = 0.5


Report = Callable[[bool | None, StoreError | None], None]
"""``report(ok, error)``: a finished completion's answer (None and the error: given up)."""


@dataclass
class _Held:
    """One tracked lease (compared by identity: a lease tracked again is a new one)."""

    lease: Lease
    seconds: float
    settling: bool = False
    finish: Callable[[], bool] | None = None
    """A completion to make again (its first answer was lost); True when it landed."""
    give_up_at: float = 0.0
    report: Report | None = None


class Heartbeat:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._leases: dict[str, _Held] = {}  # owner -> what is held
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None  # monotonic time of the first failure

    def track(self, lease: Lease, seconds: float) -> None:
        """Renew ``lease`` until :meth:`untrack` (the body is running)."""
        with self._lock:
            self._leases[lease.owner] = _Held(lease, seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="celery-reliable-heartbeat", daemon=True
                )
                self._thread.start()

    def settle(self, owner: str) -> None:
        """The body is over and its outcome is about to be written: keep renewing the
        lease, but a renewal that finds it gone is that write landing, not a loss."""
        with self._lock:
            held = self._leases.get(owner)
            if held is not None:
                held.settling = True

    def finish(
        self, lease: Lease, seconds: float, complete: Callable[[], bool], give_up_at: float,
        report: Report,
    ) -> None:
        """Hold ``lease`` and call ``complete`` at every beat until it answers (or
        ``give_up_at``, a ``time.monotonic()``), then ``report`` the answer."""
        with self._lock:
            self._leases[lease.owner] = _Held(
                lease, seconds, settling=True, finish=complete, give_up_at=give_up_at,
                report=report,
            )
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="celery-reliable-heartbeat", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def untrack(self, owner: str) -> None:
        """Stop renewing: the task's outcome is written (a completion handed to
        :meth:`finish` stays until it is)."""
        with self._lock:
            held = self._leases.get(owner)
            if held is not None and held.finish is None:
                del self._leases[owner]

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _interval(self) -> float:
        with self._lock:
            seconds = [held.seconds for held in self._leases.values()]
            finishing = any(held.finish is not None for held in self._leases.values())
        interval = min(seconds, default=self.runtime.settings.lease_seconds) / 3
        if self._failing_since is not None or finishing:
            return min(interval, RETRY_EVERY)
        return interval

    def _loop(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval())
            self._wake.clear()
            if self._stopped:
                return
            self.beat()

    def beat(self) -> None:
        """Renew every tracked lease now (one round trip per lease length)."""
        with self._lock:
            groups: dict[float, list[_Held]] = {}
            for held in self._leases.values():
                groups.setdefault(held.seconds, []).append(held)
        failed = False
        for seconds, group in groups.items():
            leases = [held.lease for held in group]
            try:
                owned = self.runtime.store.heartbeat(leases, seconds)
            except StoreError as exc:
                failed = True
                self._failed(len(leases), seconds, exc)
                continue
            for held, ok in zip(group, owned, strict=True):
                if not ok:
                    self._not_owned(held)
        if not failed and groups:
            self._recovered()
        for held in [h for group in groups.values() for h in group if h.finish is not None]:
            self._finish(held)

    def _finish(self, held: _Held) -> None:
        """Make a handed-over completion again; report and let go once it is answered."""
        assert held.finish is not None and held.report is not None
        try:
            ok: bool | None = held.finish()
            error = None
        except StoreError as exc:
            if time.monotonic() < held.give_up_at:
                return  # the next beat tries again
            ok, error = None, exc
        with self._lock:
            if self._leases.get(held.lease.owner) is held:
                del self._leases[held.lease.owner]
        held.report(ok, error)

    def _failed(self, count: int, seconds: float, exc: StoreError) -> None:
        self.runtime.count("heartbeat_error")
        if self._failing_since is not None:
            return  # said once per outage; renewals are tried every RETRY_EVERY meanwhile
        self._failing_since = time.monotonic()
        logger.warning(
            "could not renew %d lease(s): %s; trying again every %.1f s. While no worker "
            "reaches the store its leases do not lapse; if only this one is cut off, they "
            "lapse in up to %.0f s and the tasks may run again elsewhere",
            count, exc, RETRY_EVERY, seconds,
        )

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        down = time.monotonic() - self._failing_since
        self._failing_since = None
        logger.warning("renewing leases again after %.1f s without the store", down)

    def _not_owned(self, held: _Held) -> None:
        """A renewal found the lease no longer this task's: a loss, unless the task let
        it go meanwhile (untracked, or settling: its completion or release came first)."""
        with self._lock:
            if self._leases.get(held.lease.owner) is not held:
                return  # untracked while the renewal was in flight
            if held.finish is not None:
                return  # its completion, made again, tells what happened
            del self._leases[held.lease.owner]  # nothing left to renew
            if held.settling:
                return
        lease = held.lease
        self.runtime.count("lease_lost")
        logger.error(
            "task %s lost its lease on key %r while running: another worker took "
            "it over (the lease lapsed: this process stalled, or only it was cut off "
            "from the store)", lease.task_id, lease.key,
        )
