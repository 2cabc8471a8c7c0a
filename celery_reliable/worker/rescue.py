"""The rescuer: republish what the broker lost or what died with its worker.

Every worker runs one (a daemon thread of the worker's main process, started by
the worker bootstep); a lease in the store lets one sweep at a time.  Each
sweep takes the task records whose deadline passed (an index range query,
never a scan) and, for each:

* a record that waited for a worker longer than ``reliable_rescue_after``
  (the broker lost the message: Redis restarted without persistence, a queue
  was purged) is republished, after ``reliable_max_rescues`` attempts it is
  dead-lettered with reason ``never_received``;
* a record whose claim's lease lapsed (its worker died: SIGKILL, OOM, a
  transport that never gives a taken message back) is republished; the next
  claim counts the lost attempt and stops the crash loop at
  ``reliable_max_lost_attempts``;
* a record past its ``expires`` is dead-lettered with reason ``expired``;
* a record that cannot be decoded is dead-lettered with reason
  ``undecodable``, never republished in a loop.

Dead letters go through :mod:`celery_reliable.dlq.dead_letter` (DLQ queue, then
index); republishes and dead letters send ``task-rescued``, ``task-expired`` and
``task-dead_lettered`` events when task events are on.

The republished copy keeps the task id and the idempotency key: if the broker
still delivers the original later, the claim absorbs it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from celery_reliable import records
from celery_reliable.dlq import routing
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.dead_letter import DeadLetterCause, dead_letter
from celery_reliable.dlq.publisher import DeadLetterPublishError
from celery_reliable.errors import StoreError
from celery_reliable.events import TaskEvent, emit
from celery_reliable.states import State, prune_expired, recorder
from celery_reliable.stores.model import Failure, SweepPolicy, TaskRecord

if TYPE_CHECKING:
    from celery_reliable.runtime import Runtime

logger = logging.getLogger("celery_reliable.rescue")

#: seconds between two prunes of the task states by the sweeping worker
PRUNE_EVERY = 10.0
#: tasks forgotten per prune call (one short transaction on SQL), and the seconds one
#: prune may go on for: batch after batch until nothing is due or the budget is spent.
#: One batch a minute kept up with 17 tasks/s; this keeps up with 3,700-6,200/s on SQL
#: (bench/state_prune.py).
PRUNE_BATCH, PRUNE_BUDGET = 1000, 2.0
#: a prune that falls behind says so at most this often
BEHIND_LOG_EVERY = 300.0
#: seconds between two looks for resolved dead letters past their retention, and the
#: entries looked at each time (a key lookup each): the index is gone through a page at
#: a time, so a large DLQ costs the store a few lookups a second at most.
DLQ_PRUNE_EVERY, DLQ_PRUNE_PAGE = 60.0, 500


class Rescuer:
    def __init__(self, runtime: Runtime, hostname: str | None = None) -> None:
        self.runtime = runtime
        self.owner = f"{hostname or socket.gethostname()}:{os.getpid()}"
        settings = runtime.settings
        self.policy = SweepPolicy(
            settings.rescue_after, settings.rescue_backoff_cap, settings.rescue_batch
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = time.monotonic()
        self._dlq_pruned_at = time.monotonic()
        self._dlq_cursor: str | None = None
        self._behind_logged_at = -BEHIND_LOG_EVERY
        #: the last sweep ran out of time with records still due
        self.backlog = False
        #: since when sweeps fail on the store (monotonic), and how many were skipped
        self._down_since: float | None = None
        self._skipped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="celery-reliable-rescue",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        interval = self.runtime.settings.rescue_interval
        while not self._stop.wait(0 if self.backlog else interval):
            self.run_once()

    def run_once(self) -> None:
        """One turn of the loop: a sweep, or, with the store down, a skipped one.

        A store that is down is logged when it goes down and when it answers again
        (with how long and how many sweeps were skipped), not every interval: the
        skipped sweeps in between are counted (``rescue_error``) and logged at debug.
        """
        try:
            self.sweep_once()
        except StoreError as exc:
            self.backlog = False  # wait an interval before trying again
            self.runtime.count("rescue_error")
            self._skipped += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning(
                    "rescue sweeps stopped: the store cannot be used (%s); trying again "
                    "every %g s, logged once it answers", exc,
                    self.runtime.settings.rescue_interval)
            else:
                logger.debug("rescue sweep skipped, the store is still down: %s", exc)
            return
        if self._down_since is not None:
            logger.warning("rescue sweeps resumed: the store answers again after %.0f s "
                           "down (%d sweeps skipped)",
                           time.monotonic() - self._down_since, self._skipped)
            self._down_since, self._skipped = None, 0

    def sweep_once(self) -> int:
        """One sweep if this worker holds the sweeper lease: batch after batch while they
        come back full, for up to ``reliable_rescue_interval`` seconds (a Redis broker
        restarted empty leaves every queued task due at once; one batch per interval
        would take hours over them); the number of records handled."""
        store = self.runtime.store
        interval = self.runtime.settings.rescue_interval
        self.backlog = False
        if not store.acquire_sweeper(self.owner, interval * 3):
            return 0
        started, handled = time.monotonic(), 0
        while True:
            taken = store.sweep(self.policy)
            for record in taken:
                self.handle(record)
            handled += len(taken)
            # Out of time with a full batch: more are due, the next sweep starts at once.
            self.backlog = len(taken) >= self.policy.limit
            if not self.backlog or self._stop.is_set() or time.monotonic() - started >= interval:
                break
        self._prune()
        self._prune_dead_letters()
        return handled

    def _prune_dead_letters(self) -> None:
        """Forget resolved dead letters past ``reliable_dlq_resolved_retention``, one page
        of the index every :data:`DLQ_PRUNE_EVERY` seconds, going on where the last
        page ended (:mod:`celery_reliable.dlq.retention`)."""
        now = time.monotonic()
        if now - self._dlq_pruned_at < DLQ_PRUNE_EVERY:
            return
        self._dlq_pruned_at = now
        try:
            pruned = DeadLetters(self.runtime.app).prune_resolved(DLQ_PRUNE_PAGE,
                                                                  self._dlq_cursor)
        # a store error, or the broker's while taking the entries' messages off the DLQ
        # queue (kombu raises many types): the next look tries again
        except Exception as exc:  # noqa: BLE001
            self.runtime.count("prune_error")
            logger.warning("forgetting resolved dead letters failed: %s", exc)
            return
        self._dlq_cursor = pruned.cursor
        if pruned.forgotten:
            self.runtime.count("dead_letters_forgotten", len(pruned.forgotten))

    def _prune(self) -> None:
        """Forget what is past its retention, every :data:`PRUNE_EVERY` seconds, by the
        sweeper: completed keys (SQL stores; Redis expires them itself) and task states
        (SQL, and the Redis index entries of unfinished tasks), batch after batch until
        none is due or :data:`PRUNE_BUDGET` is spent."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        app = self.runtime.app
        for what, prune in (
            ("completed keys", lambda: self.runtime.store.prune(PRUNE_BATCH)),
            ("task states", lambda: prune_expired(app, limit=PRUNE_BATCH)),
        ):
            try:
                caught_up, forgotten = self._prune_batches(prune, now)
            except StoreError as exc:
                self.runtime.count("prune_error")
                logger.warning("pruning %s failed: %s", what, exc)
                continue
            if caught_up:
                continue
            self.runtime.count("prune_behind")
            if now - self._behind_logged_at >= BEHIND_LOG_EVERY:
                self._behind_logged_at = now
                logger.warning(
                    "%s expire faster than they are pruned: %d forgotten in %.1f s and more "
                    "are due; the store grows (shorten the retention, or check the store's "
                    "speed)", what, forgotten, time.monotonic() - now,
                )

    @staticmethod
    def _prune_batches(prune: Callable[[], int], started: float) -> tuple[bool, int]:
        """Call ``prune`` until a batch comes back short (True) or the budget is spent."""
        forgotten = 0
        while True:
            n = prune()
            forgotten += n
            if n < PRUNE_BATCH:
                return True, forgotten
            if time.monotonic() - started >= PRUNE_BUDGET:
                return False, forgotten

    def handle(self, record: TaskRecord) -> None:
        settings = self.runtime.settings
        try:
            args, kwargs, options = records.decode(self.runtime.app, record)
        except records.UndecodableRecord as exc:
            self._dead(record, "undecodable", f"the stored message cannot be decoded: {exc}")
            return
        if records.expired(options):
            self._dead(record, "expired", f"expired at {options['expires'].isoformat()}")
            return
        if record.rescues >= settings.max_rescues:
            self._dead(
                record, "never_received",
                f"republished {record.rescues} times and never received by a worker "
                f"(is a worker consuming queue {options.get('queue', 'celery')!r}? is "
                f"{record.name} registered there?)",
            )
            return
        options.pop("countdown", None)
        rescued_at = time.time()  # before the copy goes out: its RECEIVED comes after
        try:
            self.runtime.app.send_task(
                record.name, args, kwargs, task_id=record.task_id, add_to_parent=False,
                **options,
            )
        # kombu raises many types when the broker is down; the deadline already moved,
        # so the next sweep retries: log, count, go on with the other records.
        except Exception as exc:  # noqa: BLE001
            self.runtime.count("rescue_publish_error")
            logger.error("could not republish %s[%s]: %s", record.name, record.task_id, exc)
            return
        why = "its worker died" if record.state == "running" else "no worker received it"
        recorder(self.runtime.app).transition(
            record.task_id, record.name, record.key, State.RESCUED,
            attempt=int(options.get("retries") or 0) + 1,
            detail={"why": "worker_died" if record.state == "running" else "never_received",
                    "rescue": record.rescues + 1}, at=rescued_at,
        )
        emit(self.runtime.app, TaskEvent.RESCUED, record.task_id, count=self.runtime.count,
             idempotency_key=record.key, why=why, rescue=record.rescues + 1)
        self.runtime.count("rescued")
        logger.warning(
            "rescued %s[%s] (key %r): %s; republished (rescue %d)",
            record.name, record.task_id, record.key, why, record.rescues + 1,
        )

    def _dead(self, record: TaskRecord, reason: str, error: str) -> None:
        """Dead-letter a record (DLQ queue + index). If the DLQ queue does not take it,
        the record stays pending and the next sweep that takes it tries again."""
        app = self.runtime.app
        failure = Failure(attempts=record.rescues + 1,
                          queue=routing.queue_of(app, record, None))
        try:
            dead_letter(app, DeadLetterCause(record, reason, error, failure,
                                        before=(State.EXPIRED,) if reason == "expired" else ()))
        except DeadLetterPublishError as exc:
            logger.error("could not dead-letter %s[%s] (%s): %s; trying again later",
                         record.name, record.task_id, reason, exc)
