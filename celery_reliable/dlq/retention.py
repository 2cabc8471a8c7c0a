"""Resolved dead letters, and forgetting them after ``reliable_dlq_resolved_retention``.

A dead letter is *resolved* once its idempotency key has succeeded since: its replay
ran to success, or another call with the same key and arguments did.  Dead-lettering
forgets the key, so a key found ``done`` now (with the entry's fingerprint) can only
be a success that came after the failure.  The store remembers a success for
``reliable_retention`` (a day by default), so that is also how long resolution can
be seen: the retention of resolved entries is capped by it.

``check`` leaves resolved entries out (nothing is left to do about them), and the
sweeping worker forgets them once they are older than the retention, a page at a
time (one key lookup per entry looked at), so a DLQ does not grow with the failures
that were fixed long ago.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery_reliable.dlq.message import UNREADABLE_REASONS
from celery_reliable.runtime import runtime
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import DeadLetter, DeadLetterQuery

if TYPE_CHECKING:
    from celery_reliable.dlq.api import DeadLetters

logger = logging.getLogger("celery_reliable.dlq")


def resolved(store: Store, letter: DeadLetter) -> bool:
    """Whether the entry's key has succeeded since it was dead-lettered."""
    r = letter.record
    if not r.key or r.reason in UNREADABLE_REASONS:
        return False
    state = store.get_key(r.key)
    if state is None or state.state != "done":
        return False
    # Some stores keep a prefix of the fingerprint with a done key.
    return not state.fingerprint or r.fingerprint.startswith(state.fingerprint)


@dataclass(frozen=True)
class Pruned:
    looked_at: int
    forgotten: list[str]
    cursor: str | None
    """Where the next call goes on; None: the index was gone through."""


def retention_of(letters: DeadLetters) -> float:
    """``reliable_dlq_resolved_retention``, capped by ``reliable_retention``."""
    settings = runtime(letters.app).settings
    return min(settings.dlq_resolved_retention, settings.retention)


def prune_resolved(
    letters: DeadLetters, limit: int, cursor: str | None = None, now: float | None = None,
) -> Pruned:
    """Forget the resolved entries among ``limit`` entries older than the retention at
    ``now`` (epoch seconds, default: now), from ``cursor`` on: removed from the index
    and (those never replayed) their messages from the DLQ queue; each is logged."""
    store = letters.store
    cutoff = (time.time() if now is None else now) - retention_of(letters)
    page = store.list_dead_letters(DeadLetterQuery(until=cutoff), limit, cursor)
    gone = [letter for letter in page.entries
            if max(letter.dead_at, letter.replayed_at or 0.0) <= cutoff
            and resolved(store, letter)]
    if gone:
        letters.forget(gone)
        for letter in gone:
            logger.info("forgot resolved dead letter %s[%s] (%s): its key %r has succeeded "
                        "since", letter.record.name, letter.task_id, letter.record.reason,
                        letter.record.key)
    return Pruned(len(page.entries), [letter.task_id for letter in gone], page.cursor)
