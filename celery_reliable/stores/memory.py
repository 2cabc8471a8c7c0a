"""In-process store for unit tests and eager mode.

It is the reference implementation of :mod:`celery_reliable.stores.base`: the
Redis scripts and the SQL transactions do what this module does, atomically.
Nothing is shared between processes, so never use it with a real worker pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from celery_reliable.stores import decisions
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import (
    BreakerCheck,
    Claim,
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    Failure,
    KeyState,
    Lease,
    PublishOutcome,
    SweepPolicy,
    TaskRecord,
    after_cursor,
    page_cursor,
    parse_cursor,
    record_queue,
)


class MemoryStore(Store):
    def __init__(
        self, url: str = "memory://", *, prefix: str = "reliable", shards: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.clock = clock
        self._lock = threading.RLock()
        self._keys: dict[str, tuple[KeyState, float | None]] = {}  # key -> (state, expires_at)
        self._records: dict[str, TaskRecord] = {}
        self._due: dict[str, float] = {}
        self._dead: dict[str, DeadLetter] = {}
        self._sweeper: tuple[str, float] | None = None
        self._budget: dict[tuple[str, str, int], int] = {}  # (scope, f|r, second) -> count
        self._breakers: dict[str, decisions.Breaker] = {}
        self._lease_clock: decisions.LeaseClock | None = None

    def _lease_now(self) -> float:
        """Now on the lease clock (see :mod:`.base`), noting this operation on it.

        Silences are measured in real time (``time.monotonic``), not on ``clock``: a
        test that moves ``clock`` forward means time passing with the store in use
        (a lease lapses), while a test that really waits without calling the store
        is an outage."""
        paused, after = decisions.lease_clock(
            self._lease_clock, time.monotonic(), self.outage_after
        )
        if after is not None:
            self._lease_clock = after
        return self.clock() - paused

    def _key(self, key: str) -> KeyState | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        state, expires_at = entry
        if expires_at is not None and expires_at <= self.clock():
            del self._keys[key]
            return None
        return state

    def publish(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> PublishOutcome:
        with self._lock:
            now = self._lease_now()
            decision = decisions.publish(
                self._key(record.key), record.fingerprint, record.task_id, dedupe
            )
            if decision.write is not None:
                self._keys[record.key] = (decision.write, None)
            if decision.persist:
                self._records[record.task_id] = replace(
                    record, published_at=self.clock(), state="queued"
                )
                self._due[record.task_id] = now + deadline_in
            return decision.outcome

    def lookup(self, key: str, fingerprint: str) -> PublishOutcome:
        with self._lock:
            paused, _ = decisions.lease_clock(  # read only: a lookup writes nothing
                self._lease_clock, time.monotonic(), self.outage_after
            )
            return decisions.lookup(self._key(key), fingerprint, self.clock() - paused)

    def claim(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> Claim:
        with self._lock:
            now = self._lease_now()
            letter = self._dead.get(task_id)
            decision = decisions.claim(
                self._key(key), fingerprint, task_id, owner, lease, max_lost, now,
                dead_lettered=letter is not None and not letter.replayed,
            )
            if decision.write is not None:
                self._keys[key] = (decision.write, None)
            if decision.forget_key:
                del self._keys[key]
            if decision.drop_copy:
                self._drop_record(task_id)
            record = self._records.get(task_id)
            if decision.runs and record is not None:
                self._records[task_id] = replace(record, state="running")
                self._due[task_id] = now + lease
            return decision.claim

    def heartbeat(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        with self._lock:
            now = self._lease_now()
            out = []
            for item in leases:
                current = self._key(item.key)
                if current is None or current.state != "running" or current.owner != item.owner:
                    out.append(False)
                    continue
                self._keys[item.key] = (replace(current, lease_until=now + lease), None)
                if item.task_id in self._due:  # only later: see lua/heartbeat.lua
                    self._due[item.task_id] = max(self._due[item.task_id], now + lease)
                out.append(True)
            return out

    def _owned(self, key: str, owner: str) -> KeyState | None:
        current = self._key(key)
        if current is None or current.state != "running" or current.owner != owner:
            return None
        return current

    def complete(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> bool:
        with self._lock:
            if self._owned(key, owner) is None:
                return False
            self._keys[key] = (
                KeyState("done", fingerprint, task_id, result=result),
                self.clock() + retention,
            )
            self._drop_record(task_id)
            return True

    def release(self, key: str, owner: str, task_id: str, requeued: bool) -> bool:
        with self._lock:
            current = self._owned(key, owner)
            if current is None:
                return False
            if requeued:
                self._keys[key] = (
                    KeyState("queued", current.fingerprint, task_id, lost=current.lost), None
                )
            else:
                del self._keys[key]
            return True

    def _drop_record(self, task_id: str) -> None:
        self._records.pop(task_id, None)
        self._due.pop(task_id, None)

    def discard(self, task_id: str, key: str) -> None:
        with self._lock:
            self._drop_record(task_id)

    def dead_letter(
        self, task_id: str, key: str, reason: str, error: str | None,
        fallback: TaskRecord | None = None, failure: Failure | None = None,
        dead_at: float | None = None,
    ) -> None:
        with self._lock:
            previous = self._dead.get(task_id)
            record = (
                self._records.pop(task_id, None) or fallback
                or (previous.record if previous else None)
            )
            self._due.pop(task_id, None)
            current = self._key(key)
            if current is not None and current.task_id == task_id and current.state in (
                "queued", "running"
            ):
                del self._keys[key]
            if record is None:
                record = TaskRecord(task_id, "", key, "", "", "", "", "{}")
            failure = failure or Failure()
            if failure.queue is None:
                failure = replace(failure, queue=record_queue(record.options))
            self._dead[task_id] = DeadLetter(
                replace(record, task_id=task_id, state="dead", reason=reason, error=error,
                        dead_at=self.clock() if dead_at is None else dead_at),
                failure,
                replays=previous.replays if previous else 0,
                replayed_at=previous.replayed_at if previous else None,
            )

    def acquire_sweeper(self, owner: str, ttl: float) -> bool:
        with self._lock:
            now = self.clock()
            if self._sweeper is not None and self._sweeper[0] != owner and self._sweeper[1] > now:
                return False
            self._sweeper = (owner, now + ttl)
            return True

    def sweep(self, policy: SweepPolicy) -> list[TaskRecord]:
        with self._lock:
            now = self._lease_now()
            due = sorted((d, t) for t, d in self._due.items() if d <= now)[: policy.limit]
            taken = []
            for _, task_id in due:
                record = self._records[task_id]
                taken.append(record)
                self._records[task_id] = replace(record, rescues=record.rescues + 1, state="queued")
                self._due[task_id] = now + policy.next_delay(record.rescues)
            return taken

    def budget_deposit(self, scope: str, first_attempts: int) -> None:
        with self._lock:
            slot = (scope, "f", int(self.clock()))
            self._budget[slot] = self._budget.get(slot, 0) + first_attempts

    def budget_withdraw(self, scope: str, ratio: float, floor: float, window: float) -> bool:
        with self._lock:
            now = int(self.clock())
            seconds = range(now - int(window) + 1, now + 1)
            firsts = sum(self._budget.get((scope, "f", s), 0) for s in seconds)
            retries = sum(self._budget.get((scope, "r", s), 0) for s in seconds)
            if retries >= ratio * firsts + floor * window:
                return False
            self._budget[(scope, "r", now)] = self._budget.get((scope, "r", now), 0) + 1
            return True

    def breaker_check(self, name: str, owner: str, probe_ttl: float) -> BreakerCheck:
        with self._lock:
            check, probing = decisions.breaker_check(
                self._breakers.get(name), owner, probe_ttl, self.clock()
            )
            if probing is not None:
                self._breakers[name] = probing
            return check

    def breaker_report(self, name: str, ok: bool, threshold: int, cool_down: float) -> str:
        with self._lock:
            breaker = decisions.breaker_report(
                self._breakers.get(name), ok, threshold, cool_down, self.clock()
            )
            self._breakers[name] = breaker
            return breaker.state

    def get_key(self, key: str) -> KeyState | None:
        with self._lock:
            return self._key(key)

    def get_record(self, task_id: str, key: str) -> TaskRecord | None:
        with self._lock:
            letter = self._dead.get(task_id)
            return self._records.get(task_id) or (letter.record if letter else None)

    def get_dead_letter(self, task_id: str) -> DeadLetter | None:
        with self._lock:
            return self._dead.get(task_id)

    def list_dead_letters(
        self, query: DeadLetterQuery, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        position = parse_cursor(cursor)
        with self._lock:
            ordered = sorted(self._dead.values(), key=lambda e: (e.dead_at, e.task_id),
                             reverse=True)
        found = [e for e in ordered if after_cursor(e, position) and query.matches(e)]
        page = found[:limit]
        more = len(found) > limit
        return DeadLetterPage(page, page_cursor(page[-1]) if more else None)

    def claim_replays(self, task_ids: Sequence[str], force: bool) -> list[str]:
        with self._lock:
            marked = []
            for task_id in task_ids:
                letter = self._dead.get(task_id)
                if letter is None or (letter.replayed and not force):
                    continue
                self._dead[task_id] = replace(
                    letter, replays=letter.replays + 1, replayed_at=self.clock()
                )
                marked.append(task_id)
            return marked

    def undo_replay(self, task_id: str) -> None:
        with self._lock:
            letter = self._dead.get(task_id)
            if letter is not None and letter.replays:
                self._dead[task_id] = replace(letter, replays=letter.replays - 1,
                                              replayed_at=None)

    def delete_dead_letters(self, task_ids: Sequence[str]) -> int:
        with self._lock:
            return sum(self._dead.pop(t, None) is not None for t in set(task_ids))

    def pending_count(self) -> int:
        with self._lock:
            return len(self._due)

    def drop(self) -> None:
        with self._lock:
            self._keys.clear()
            self._records.clear()
            self._due.clear()
            self._dead.clear()
            self._budget.clear()
            self._breakers.clear()
            self._sweeper = None

    def ping(self) -> None:
        return None
