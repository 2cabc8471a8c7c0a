"""The store interface: what every backend must guarantee.

A store keeps two kinds of things:

* **Key states**, one per idempotency key: ``queued`` (published, not yet
  claimed), ``running`` (claimed by an *owner* holding a lease until a time) and
  ``done`` (succeeded; remembered for the retention window with the task id
  and, when small, the result).
* **Task records**, one per task id: what it takes to republish the task, and a
  *deadline* in a by-deadline index.  The deadline is when the rescuer should
  look at the task again: publish time + ``rescue_after`` while queued, lease
  expiry while running.  A completed task's record is deleted; a final failure
  moves it to the dead letters.

Every operation below is atomic (one Lua script, one SQL transaction).  The
owner token *fences* heartbeat/complete/release: a worker whose lease lapsed and
was taken over cannot complete or release the new owner's claim.

Times are the store's own clock where it has one (Redis ``TIME``), so leases do
not depend on the workers' clocks agreeing.

**The lease clock.**  Leases and rescue deadlines are measured on a clock kept
in the store that stops while nobody reaches the store: wall time minus every
silence longer than :attr:`Store.outage_after` (no operation from any worker,
as when the store restarts or is cut off from all of them).  Nobody could renew
a lease during such a silence, so its lapse would prove nothing about the
owner: after it, each lease has the time it had left when the silence began,
and neither a claim nor the rescuer takes it over before its owner had that
long to renew it.  Operations write the clock's "last seen" stamp (at most every
:func:`decisions.refresh_every`); a store in use never pauses.  What a lease
cannot tell apart: one worker cut off from a store that the others still reach
(docs/crash-recovery.md, "What a lease protects").
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TypeVar

from celery_reliable.errors import StoreError
from celery_reliable.findings import Finding
from celery_reliable.stores.model import (
    BreakerCheck,
    Claim,
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    Failure,
    KeyState,
    Lease,
    Migration,
    PublishOutcome,
    SweepPolicy,
    TaskRecord,
)

T = TypeVar("T")


Completion = Callable[[bool | None, StoreError | None], None]
"""``then(ok, error)`` of :meth:`Store.complete_soon`."""

Answer = Callable[[], PublishOutcome]
"""What :meth:`Store.publish_soon` and :meth:`Store.lookup_soon` return: called, it
gives the outcome or raises the :class:`StoreError` the call met."""


ClaimAnswer = Callable[[], Claim]
"""What :meth:`Store.claim_soon` returns: called, it gives the :class:`Claim` or raises
the :class:`StoreError` the call met."""


def answered(call: Callable[[], T]) -> Callable[[], T]:
    """An answer made now: what ``call`` returned, or the store error it raised."""
    try:
        outcome = call()
    except StoreError as exc:
        error = exc

        def failed() -> T:
            raise error

        return failed
    return lambda: outcome


class Store(abc.ABC):
    """One backend. Chosen by URL scheme through :func:`celery_reliable.stores.open_store`."""

    url: str
    #: Seconds without any operation after which the store counts the silence as an
    #: outage and stops its lease clock for it (see the module's docstring).  The
    #: runtime sets it to twice ``reliable_rescue_interval``: the sweeping worker
    #: touches the store that often, so a quiet but healthy deployment never pauses.
    outage_after: float = 10.0

    # -- producer side -------------------------------------------------------
    @abc.abstractmethod
    def publish(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> PublishOutcome:
        """Persist ``record`` before its message is published.

        With ``dedupe``, a key that is done or in flight is answered with the
        existing task id and nothing is written.  Otherwise the key becomes
        ``queued`` (unless it is running: a retry re-persists its own record)
        and the record is indexed with deadline now + ``deadline_in``.
        """

    def publish_many(
        self, records: Sequence[tuple[TaskRecord, float]], dedupe: bool
    ) -> list[PublishOutcome]:
        """:meth:`publish` for several ``(record, deadline_in)`` at once (a replay of
        many dead letters): one round trip on Redis, one transaction on SQL."""
        return [self.publish(record, deadline_in, dedupe) for record, deadline_in in records]

    def publish_soon(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> Answer:
        """:meth:`publish`, answered when the returned function is called.

        Why: the producer builds the broker message while the store works, and
        asks for the answer just before the message goes out.  The Redis store
        writes the call here and reads the reply when asked; other stores answer
        here.  Errors other than :class:`StoreError` are raised here.
        """
        return answered(lambda: self.publish(record, deadline_in, dedupe))

    def lookup_soon(self, key: str, fingerprint: str) -> Answer:
        """:meth:`lookup`, answered when the returned function is called (see
        :meth:`publish_soon`)."""
        return answered(lambda: self.lookup(key, fingerprint))

    @abc.abstractmethod
    def lookup(self, key: str, fingerprint: str) -> PublishOutcome:
        """Read-only dedupe check used when records are not persisted.

        Only ``done`` and ``running`` with a live lease count as existing: a
        ``queued`` key without a record might have been lost by the broker.
        """

    # -- consumer side -------------------------------------------------------
    @abc.abstractmethod
    def claim(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> Claim:
        """Atomically take the key's lease for ``owner`` (see :class:`ClaimStatus`).

        On CLAIMED/TAKEN_OVER the task's record (if any) moves to ``running``
        and its deadline to the lease expiry.  On DONE the record of this copy
        is deleted: nothing is left to rescue.
        """

    def claim_soon(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> ClaimAnswer:
        """:meth:`claim`, answered when the returned function is called.

        Why: a solo worker claims a task when its message arrives and asks for the
        answer when the body is about to run, so Celery's own preparation overlaps
        the round trip (``worker/claim_ahead.py``).  The Redis store writes the call
        here and reads the reply when asked; other stores claim here.
        """
        return answered(lambda: self.claim(key, fingerprint, task_id, owner, lease, max_lost))

    @abc.abstractmethod
    def heartbeat(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        """Renew several leases at once; False for each one no longer owned."""

    @abc.abstractmethod
    def complete(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> bool:
        """Mark the key done for ``retention`` seconds and delete the task's record.

        Fenced: returns False (and writes nothing) when ``owner`` no longer
        holds the lease.
        """

    def complete_soon(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float, then: Completion,
    ) -> None:
        """:meth:`complete`, without waiting for the answer where the backend can.

        The Redis store writes the call now and reads the answer before this
        thread's next store call (or at :meth:`drain`), so the worker acknowledges
        the message meanwhile; other backends complete here.  ``then(ok, error)``
        gets :meth:`complete`'s answer or the error that came back instead; it must
        not raise.  Raises :class:`StoreError` like :meth:`complete` when the call
        could not even be made.
        """
        then(self.complete(key, fingerprint, owner, task_id, result, retention), None)

    def drain(self) -> None:
        """Take in now the answers :meth:`complete_soon` left unread (this thread's)."""

    @abc.abstractmethod
    def release(self, key: str, owner: str, task_id: str, requeued: bool) -> bool:
        """Give the key up without success.

        ``requeued`` (a retry or a deferral was published): the key goes back to
        ``queued`` so the producer still sees it in flight.  Otherwise the key
        is forgotten, so a replay can run.  Fenced like :meth:`complete`.
        """

    @abc.abstractmethod
    def discard(self, task_id: str, key: str) -> None:
        """Delete a task's record (the copy was absorbed or ignored)."""

    @abc.abstractmethod
    def dead_letter(
        self, task_id: str, key: str, reason: str, error: str | None,
        fallback: TaskRecord | None = None, failure: Failure | None = None,
        dead_at: float | None = None,
    ) -> None:
        """Move the task's record to the dead letters (created from ``fallback`` if absent).

        A key still ``queued`` or ``running`` for this task is forgotten, so the
        producer no longer answers "in flight" with a task that will not run.
        The entry is keyed by task id: a second dead letter of the same task
        updates it (its replay count is kept).  ``dead_at``: when it was
        dead-lettered, if not now (reconcile indexes a message with its own time).
        """

    # -- rescuer ---------------------------------------------------------------
    @abc.abstractmethod
    def acquire_sweeper(self, owner: str, ttl: float) -> bool:
        """Take or renew the one-sweeper-at-a-time lease; False if another worker holds it."""

    @abc.abstractmethod
    def sweep(self, policy: SweepPolicy) -> list[TaskRecord]:
        """Take the records whose deadline passed, at most ``policy.limit`` per shard.

        Atomically moves each one's deadline to now + ``policy.next_delay``
        and increments its rescue counter, so two sweepers never take the same
        record for the same expiry; the record's state becomes ``queued`` (it
        waits for a worker again).  Returned records show the counter and the
        state *before* this sweep.
        """

    # -- retry budgets and circuit breakers (shared by every worker) -----------
    @abc.abstractmethod
    def budget_deposit(self, scope: str, first_attempts: int) -> None:
        """Count first attempts in the current second of ``scope``'s budget."""

    @abc.abstractmethod
    def budget_withdraw(self, scope: str, ratio: float, floor: float, window: float) -> bool:
        """Take one retry from ``scope``'s budget, atomically.

        Allowed while the retries of the last ``window`` seconds stay below
        ``ratio`` x the first attempts of that window + ``floor`` x ``window``
        (Finagle's and gRPC's retry budgets); an allowed retry is counted.
        """

    @abc.abstractmethod
    def breaker_check(self, name: str, owner: str, probe_ttl: float) -> BreakerCheck:
        """May a call to dependency ``name`` go ahead?

        Closed: yes.  Open: no, until its cool-down ends.  After the cool-down
        one caller at a time gets a probe (``half_open``) for ``probe_ttl``.
        """

    @abc.abstractmethod
    def breaker_report(self, name: str, ok: bool, threshold: int, cool_down: float) -> str:
        """Report a call's outcome; the breaker's new state.

        A success closes the breaker and resets the count; a failure counts, and
        opens the breaker for ``cool_down`` seconds at ``threshold`` consecutive
        failures, or at once when it was a half-open probe.
        """

    # -- inspection and lifecycle ---------------------------------------------
    @abc.abstractmethod
    def get_key(self, key: str) -> KeyState | None: ...

    @abc.abstractmethod
    def get_record(self, task_id: str, key: str) -> TaskRecord | None: ...

    # -- the dead-letter index ----------------------------------------------------
    @abc.abstractmethod
    def get_dead_letter(self, task_id: str) -> DeadLetter | None:
        """One entry by task id (no key needed)."""

    @abc.abstractmethod
    def list_dead_letters(
        self, query: DeadLetterQuery, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        """Entries matching ``query``, newest first, ``limit`` at most, after ``cursor``.

        An index range read (not a scan) when no filter or one equality filter is
        given; other filters are checked entry by entry within the index order.
        """

    @abc.abstractmethod
    def claim_replays(self, task_ids: Sequence[str], force: bool) -> list[str]:
        """Mark entries replayed (count + time) and return the ids marked.

        An entry already replayed since it was last dead-lettered is left out
        unless ``force``; a missing one is left out.  Atomic per entry, so two
        concurrent replays of one entry publish it once.
        """

    @abc.abstractmethod
    def undo_replay(self, task_id: str) -> None:
        """Take back a :meth:`claim_replays` whose publish failed."""

    @abc.abstractmethod
    def delete_dead_letters(self, task_ids: Sequence[str]) -> int:
        """Remove entries from the index (purge); how many existed."""

    @abc.abstractmethod
    def pending_count(self) -> int:
        """Records in the rescue index (queued or running)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the store does not answer, and
        :class:`StoreError` if its schema is missing or outdated (a retry cannot fix
        that: run ``celery -A app reliable-store migrate``)."""

    def prune(self, limit: int = 1000) -> int:
        """Forget at most ``limit`` completed keys past their retention, in one short
        transaction; how many.  Only stores without expiry of their own have any (SQL):
        expired keys already count as absent, this reclaims their space.  The sweeping
        worker calls it again while it returns ``limit``."""
        return 0

    def risks(self) -> list[Finding]:
        """What in the store server's own settings puts the guarantees at risk, each with
        the fix; ``[]`` when nothing is known to.  Logged at worker start and reported by
        ``celery -A app reliable-check``."""
        return []

    def migrate(self) -> Migration:
        """Create or upgrade the schema (SQL); what it did. A no-op where there is no
        schema."""
        return Migration()

    def drop(self) -> None:
        """Delete everything stored under this store's prefix: keys, task records, dead
        letters, budgets, breakers and recorded states (SQL: drop the prefix's tables,
        so a later use needs ``migrate()`` again).  Irreversible; for tests
        (:mod:`celery_reliable.testing` gives each test a prefix and drops it) and for
        retiring a namespace.  The memory store just empties itself."""

    def close(self) -> None:
        """Release connections."""

    def after_fork(self) -> None:
        """Drop connections inherited from a parent process."""
