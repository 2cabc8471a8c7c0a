"""What the dead-letter API returns: typed, JSON-friendly results.

Kept apart from :mod:`.api` so the CLI (and any other surface) can import the shapes
without the machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from celery_reliable.states import Transition
from celery_reliable.stores.model import DeadLetter


@dataclass(frozen=True)
class Entry:
    """One dead letter, as listed."""

    task_id: str
    name: str
    key: str
    reason: str
    error: str | None
    exc_type: str | None
    attempts: int
    worker: str | None
    queue: str | None
    dead_at: float
    published_at: float
    replays: int
    replayed: bool
    replayed_at: float | None
    content_type: str
    traceback: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, letter: DeadLetter) -> Entry:
        r, f = letter.record, letter.failure
        return cls(
            task_id=r.task_id, name=r.name, key=r.key, reason=r.reason or "", error=r.error,
            exc_type=f.exc_type, attempts=f.attempts, worker=f.worker, queue=f.queue,
            dead_at=letter.dead_at, published_at=r.published_at, replays=letter.replays,
            replayed=letter.replayed, replayed_at=letter.replayed_at,
            content_type=r.content_type, traceback=f.traceback,
        )

    def to_dict(self, traceback: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not traceback:
            out.pop("traceback")
        return out


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    cursor: str | None
    """Pass it back for the next page; None when this was the last."""


@dataclass(frozen=True)
class Detail:
    """One entry with its call, as far as it may be decoded, and its timeline."""

    entry: Entry
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    options: dict[str, Any]
    body_note: str | None
    """Why the arguments are not shown decoded (content type not accepted, damaged)."""
    raw_body: str | None
    """The stored body, cut to 2,000 characters, when it was not decoded."""
    timeline: list[Transition]
    timeline_note: str | None = None


@dataclass
class ReplayResult:
    replayed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Already replayed since they were dead-lettered (pass force to replay again)."""
    refused: dict[str, str] = field(default_factory=dict)
    """Not replayable: content type not accepted, undecodable, not a task message."""
    failed: dict[str, str] = field(default_factory=dict)
    """The publish failed (the entry stays unreplayed)."""
    missing: list[str] = field(default_factory=list)
    """Ids asked for that are not in the index."""
    would_replay: list[str] = field(default_factory=list)
    """dry_run: what would have been replayed."""
    removed_from_queue: int = 0
    seconds: float = 0.0


@dataclass
class PurgeResult:
    purged: list[Entry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dry_run: bool = False
    removed_from_queue: int = 0


@dataclass
class ReconcileResult:
    indexed: list[str] = field(default_factory=list)
    """Messages in the queue without an entry: indexed now."""
    republished: list[str] = field(default_factory=list)
    """Unresolved entries whose message was gone: published again from the index."""
    duplicates_removed: int = 0
    """Second copies of one task's dead letter (a crash before an ack)."""
    stale_removed: int = 0
    """Messages of entries already replayed or purged."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Foreign or malformed messages (kept in the queue, indexed as such)."""

    @property
    def changed(self) -> bool:
        return bool(self.indexed or self.republished or self.duplicates_removed
                    or self.stale_removed)


@dataclass(frozen=True)
class CheckResult:
    older_than: float
    count: int
    """Unresolved entries dead for longer than ``older_than`` seconds."""
    oldest: Entry | None

    @property
    def ok(self) -> bool:
        return self.count == 0
