"""What stores keep and answer: the value types of the store contract.

Kept apart from :mod:`.base` (the contract itself) so that code reading
claims, records or dead letters does not import the interface, and a
backend's module reads as "the contract" plus "the shapes it returns".
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass


class ClaimStatus(str, enum.Enum):
    CLAIMED = "claimed"
    """The key was free or queued: run the body."""
    TAKEN_OVER = "taken_over"
    """The previous owner's lease lapsed without completion: run the body (a lost attempt)."""
    DONE = "done"
    """Already succeeded within the retention window: skip; ``result`` is the first run's."""
    BUSY = "busy"
    """Another owner holds a live lease: do not run concurrently."""
    CONFLICT = "conflict"
    """The key was used with different arguments (fingerprint mismatch)."""
    LOST_TOO_OFTEN = "lost_too_often"
    """Its runs were lost with their worker ``max_lost`` times: dead-letter, never run again."""
    SUPERSEDED = "superseded"
    """The key is held (queued, running or done) by this very task id with other
    arguments: the task was published again with corrected ones (a replay) after
    this copy; absorbed, never run, nothing written."""
    DEAD_LETTERED = "dead_lettered"
    """This task id is a dead letter not replayed since: a stale copy (a redelivery, an
    earlier rescue); absorbed, never run (only a replay runs it again)."""


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    task_id: str | None = None
    """The task that holds or completed the key (for DONE/BUSY/CONFLICT)."""
    result: str | None = None
    """JSON text of the first run's result (DONE only; None when it was not kept)."""
    lost: int = 0
    """Lost attempts counted so far for this key."""
    lease_left: float = 0.0
    """Seconds until the holder's lease lapses (BUSY only)."""

    @property
    def runs(self) -> bool:
        return self.status in (ClaimStatus.CLAIMED, ClaimStatus.TAKEN_OVER)


class PublishStatus(str, enum.Enum):
    NEW = "new"
    """Nothing known for the key: publish (the record is written when persisting)."""
    DONE = "done"
    """The key already succeeded: return the existing task's handle."""
    IN_FLIGHT = "in_flight"
    """The key is queued or running: return the existing task's handle."""
    CONFLICT = "conflict"
    """The key is known with different arguments."""


@dataclass(frozen=True)
class PublishOutcome:
    status: PublishStatus
    task_id: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    """What it takes to republish a task, plus its rescue bookkeeping."""

    task_id: str
    name: str
    key: str
    fingerprint: str
    body: str
    """The serialized ``(args, kwargs)``; base64 text when the serializer is binary."""
    content_type: str
    content_encoding: str
    options: str
    """JSON text of the publish options (queue, routing, headers, eta, links, ...)."""
    published_at: float = 0.0
    state: str = "queued"
    """queued | running | dead."""
    rescues: int = 0
    """Republishes of this record by the rescuer so far."""
    reason: str | None = None
    """Why it was dead-lettered (worker_lost, never_received, failed, ...)."""
    error: str | None = None
    dead_at: float | None = None


@dataclass(frozen=True)
class Failure:
    """What the dead-letter index keeps about a final failure, besides the record.

    Optional everywhere: the rescuer and the revoke handler know less than a task.
    """

    exc_type: str | None = None
    traceback: str | None = None
    attempts: int = 0
    worker: str | None = None
    queue: str | None = None
    """The queue the task was published to (a filter of the index)."""


@dataclass(frozen=True)
class DeadLetter:
    """One entry of the dead-letter index: the task's record and its failure.

    Keyed by task id: a task dead-lettered twice (a crash between the DLQ
    publish and the ack, or a replay that failed again) is one entry, updated.
    """

    record: TaskRecord
    """The republishable record; ``reason``, ``error`` and ``dead_at`` are set."""
    failure: Failure
    replays: int = 0
    """Times it was replayed."""
    replayed_at: float | None = None

    @property
    def task_id(self) -> str:
        return self.record.task_id

    @property
    def dead_at(self) -> float:
        return self.record.dead_at or 0.0

    @property
    def replayed(self) -> bool:
        """Replayed since it was last dead-lettered (a replay that failed again is not)."""
        return self.replayed_at is not None and self.replayed_at >= self.dead_at


@dataclass(frozen=True)
class DeadLetterQuery:
    """Filters of :meth:`Store.list_dead_letters`; every given one must match."""

    name: str | None = None
    exc_type: str | None = None
    reason: str | None = None
    queue: str | None = None
    since: float | None = None
    """dead_at >= since (epoch seconds)."""
    until: float | None = None
    """dead_at <= until."""
    text: str | None = None
    """Case-insensitive substring of the error message."""
    replayed: bool | None = None
    """True: only replayed entries; False: only unresolved ones."""

    def matches(self, letter: DeadLetter) -> bool:
        """The reference semantics (the memory store; the others do it in the database)."""
        r, f = letter.record, letter.failure
        return (
            (self.name is None or r.name == self.name)
            and (self.exc_type is None or f.exc_type == self.exc_type)
            and (self.reason is None or r.reason == self.reason)
            and (self.queue is None or f.queue == self.queue)
            and (self.since is None or letter.dead_at >= self.since)
            and (self.until is None or letter.dead_at <= self.until)
            and (self.text is None or self.text.lower() in (r.error or "").lower())
            and (self.replayed is None or letter.replayed == self.replayed)
        )


@dataclass(frozen=True)
class DeadLetterPage:
    entries: list[DeadLetter]
    """Newest first (dead_at, then task id, descending)."""
    cursor: str | None
    """Pass it back for the next page; None when there is none."""


def record_queue(options: str) -> str | None:
    """The queue named in a record's publish options (JSON text), if any."""
    try:
        queue = json.loads(options).get("queue")
    except (ValueError, AttributeError):
        return None
    return queue if isinstance(queue, str) else None


def page_cursor(letter: DeadLetter) -> str:
    """A keyset cursor: the position after ``letter`` in (dead_at, task id) descending order."""
    return f"{letter.dead_at!r}|{letter.task_id}"


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    """(dead_at, task id) of a cursor; ValueError when it is not one of ours."""
    if not cursor:
        return None
    at, sep, task_id = cursor.partition("|")
    if not sep:
        raise ValueError(f"not a dead-letter cursor: {cursor!r}")
    return float(at), task_id


def after_cursor(letter: DeadLetter, position: tuple[float, str] | None) -> bool:
    """Whether ``letter`` comes after ``position`` in the listing order."""
    if position is None:
        return True
    return (letter.dead_at, letter.task_id) < position


@dataclass(frozen=True)
class Lease:
    """One running claim, as the heartbeat renews it."""

    key: str
    owner: str
    task_id: str


@dataclass(frozen=True)
class KeyState:
    """Read-only view of one key (inspection and tests)."""

    state: str
    fingerprint: str
    task_id: str
    owner: str | None = None
    lease_until: float | None = None
    lost: int = 0
    result: str | None = None


@dataclass(frozen=True)
class SweepPolicy:
    """How the rescuer moves the deadline of a record it republishes."""

    rescue_after: float
    backoff_cap: float
    limit: int

    def next_delay(self, rescues: int) -> float:
        """rescue_after doubled per previous rescue, capped: a backlog is not flooded."""
        return float(min(self.rescue_after * 2.0 ** min(rescues, 30), self.backoff_cap))


@dataclass(frozen=True)
class BreakerCheck:
    """What a circuit breaker says before a call to its dependency."""

    allowed: bool
    state: str
    """closed | open | half_open (this caller holds the one probe) | probing (another does)."""
    wait: float = 0.0
    """Seconds until it is worth asking again (not allowed only)."""
    failures: int = 0
    """Consecutive failures counted so far."""


@dataclass(frozen=True)
class Migration:
    """What :meth:`Store.migrate` did, so ``reliable-store migrate`` can say it."""

    has_schema: bool = False
    """False: the store has no schema to create (Redis, memory)."""
    from_version: int = 0
    """The schema version found (0: none)."""
    to_version: int = 0
    applied: tuple[str, ...] = ()
    """The steps applied, as ``"<version>: <description>"``."""
    tables_created: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.applied)
