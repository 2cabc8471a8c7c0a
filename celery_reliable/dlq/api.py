"""The dead-letter API: what the CLI calls, and what any other surface should.

``DeadLetters(app)`` reads the index in the store (fast, filtered, paged: the
queue is never drained to list it) and keeps the DLQ queue in step with it:
replay and purge remove their entries' messages from the queue, and
:meth:`DeadLetters.reconcile` fixes and reports any disagreement.

Security: a dead letter is untrusted input.  Arguments are only deserialized
with the serializers in the app's ``accept_content`` (never pickle unless the
app accepts pickle); :meth:`~DeadLetters.show` falls back to the raw body with
a note, :meth:`~DeadLetters.replay` refuses the entry with a reason.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from celery import Celery

from celery_reliable import records
from celery_reliable.dlq import broker, retention
from celery_reliable.dlq.corrections import Correction, correct
from celery_reliable.dlq.message import UNREADABLE_REASONS, DeadLetterMessage
from celery_reliable.dlq.model import (
    CheckResult,
    Detail,
    Entry,
    Page,
    PurgeResult,
    ReconcileResult,
    ReplayResult,
)
from celery_reliable.dlq.replay import Replaying, call_of
from celery_reliable.errors import ConfigurationError, ReliableError
from celery_reliable.identity import is_reliable
from celery_reliable.runtime import runtime
from celery_reliable.states import Transition, queries
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import DeadLetter, DeadLetterQuery

logger = logging.getLogger("celery_reliable.dlq")

#: Entries handled per store call while replaying or purging.
BATCH = 200
#: Characters of an undecodable body that ``show`` returns.
_RAW_MAX = 2000


class DeadLetters:
    """The dead letters of one Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @property
    def store(self) -> Store:
        return runtime(self.app).store

    # -- reading -------------------------------------------------------------------
    def list(
        self, query: DeadLetterQuery | None = None, limit: int = 100, cursor: str | None = None,
    ) -> Page:
        """Entries matching ``query``, newest first; raises ConfigurationError on a bad
        cursor or limit."""
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, got {limit}")
        try:
            page = self.store.list_dead_letters(query or DeadLetterQuery(), limit, cursor)
        except ValueError as exc:
            raise ConfigurationError(f"bad cursor: {exc}") from exc
        return Page([Entry.of(e) for e in page.entries], page.cursor)

    def get(self, task_id: str) -> Entry | None:
        letter = self.store.get_dead_letter(task_id)
        return None if letter is None else Entry.of(letter)

    def show(self, task_id: str) -> Detail | None:
        """The entry, its arguments (only through accepted serializers) and its timeline."""
        letter = self.store.get_dead_letter(task_id)
        if letter is None:
            return None
        args = kwargs = None
        options: dict[str, Any] = {}
        note = raw = None
        try:
            args, kwargs, options = call_of(self.app, letter)
        except records.UndecodableRecord as exc:
            note = str(exc)
            raw = letter.record.body[:_RAW_MAX]
            options = _json_object(letter.record.options)
        timeline: list[Transition] = []
        timeline_note = None
        try:
            timeline = queries.timeline(self.app, task_id=task_id)
        except ReliableError as exc:
            timeline_note = f"the timeline could not be read: {exc}"
        return Detail(Entry.of(letter), args, kwargs, options, note, raw, timeline,
                      timeline_note)

    def check(self, older_than: float) -> CheckResult:
        """Unresolved entries dead for longer than ``older_than`` seconds: never
        replayed, and their key has not succeeded since (one key lookup per entry
        dead for that long; :mod:`celery_reliable.dlq.retention`)."""
        if older_than < 0:
            raise ConfigurationError(f"older_than must be >= 0 seconds, got {older_than}")
        query = DeadLetterQuery(until=time.time() - older_than, replayed=False)
        count, oldest = 0, None
        for letter in self.matching(query):
            if retention.resolved(self.store, letter):
                continue
            count += 1
            oldest = letter
        return CheckResult(older_than, count, Entry.of(oldest) if oldest else None)

    def resolved(self, task_id: str) -> bool:
        """Whether entry ``task_id`` is resolved: its key has succeeded since (its
        replay, or another call with the same key and arguments)."""
        letter = self.store.get_dead_letter(task_id)
        return letter is not None and retention.resolved(self.store, letter)

    def prune_resolved(self, limit: int = 500, cursor: str | None = None) -> retention.Pruned:
        """Forget resolved entries older than ``reliable_dlq_resolved_retention``, among
        ``limit`` entries from ``cursor`` on (the sweeping worker calls it)."""
        return retention.prune_resolved(self, limit, cursor)

    def forget(self, letters: Sequence[DeadLetter]) -> None:
        """Remove entries from the index, and the messages of those never replayed from
        the DLQ queue (a replay already took its entry's off)."""
        self.store.delete_dead_letters([letter.task_id for letter in letters])
        queued = {letter.task_id for letter in letters if not letter.replayed}
        if queued:
            self._remove_messages(queued)

    # -- replay ----------------------------------------------------------------------
    def replay(
        self, task_ids: Sequence[str] | None = None, query: DeadLetterQuery | None = None, *,
        to_queue: str | None = None, rate: float | None = None, limit: int | None = None,
        force: bool = False, dry_run: bool = False,
        args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
    ) -> ReplayResult:
        """Publish the entries' tasks again: same task id and idempotency key, attempts
        from 1, to their original queue or ``to_queue``; their messages leave the DLQ
        (how: :mod:`celery_reliable.dlq.replay`).

        An entry replayed since it was dead-lettered is skipped unless ``force``, so
        replaying twice publishes once.  ``rate``: entries per second at most.

        ``args``/``kwargs``: replay one entry (``task_ids`` names exactly one) with
        corrected arguments: ``args`` replace its positional arguments, ``kwargs`` set
        the named ones; the timeline's REPLAYED says which changed
        (:mod:`celery_reliable.dlq.corrections`).
        """
        _check_selection(task_ids, query, limit, rate)
        result = ReplayResult()
        started = time.monotonic()
        corrections = self._corrections(task_ids, args, kwargs)
        letters = self._select(task_ids, query, limit, result.missing, unresolved=not force)
        replaying = Replaying(self.app, self.store, force=force, to_queue=to_queue, rate=rate,
                              started=started, corrections=corrections)
        for batch in _chunks(letters, BATCH):
            if dry_run:
                result.would_replay += [e.task_id for e in batch if force or not e.replayed]
                result.skipped += [e.task_id for e in batch if not force and e.replayed]
                continue
            replaying.batch(batch, result)
        if result.replayed:
            result.removed_from_queue = self._remove_messages(set(result.replayed))
        result.seconds = time.monotonic() - started
        return result

    def _corrections(
        self, task_ids: Sequence[str] | None, args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
    ) -> dict[str, Correction]:
        """The corrected call of the one entry named, when arguments are given."""
        if args is None and kwargs is None:
            return {}
        if task_ids is None or len(set(task_ids)) != 1:
            raise ConfigurationError(
                "corrected arguments replay one entry: name its task id alone "
                "(replay([task_id], kwargs=...), or `reliable-dlq replay ID --kwargs ...`); a "
                "replay of several entries, filters or --all keeps each entry's arguments")
        if args is not None and (isinstance(args, (str, bytes, Mapping))
                                 or not isinstance(args, Sequence)):
            raise ConfigurationError(f"args must be a list of arguments, got {args!r}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ConfigurationError(f"kwargs must be a mapping of names, got {kwargs!r}")
        letter = self.store.get_dead_letter(task_ids[0])
        if letter is None:
            return {}  # reported as missing, as for any replay
        return {letter.task_id: correct(self.app, letter, args, kwargs)}

    # -- purge -------------------------------------------------------------------------
    def purge(
        self, task_ids: Sequence[str] | None = None, query: DeadLetterQuery | None = None, *,
        limit: int | None = None, dry_run: bool = False,
    ) -> PurgeResult:
        """Discard entries from the index and their messages from the DLQ queue.

        Each discarded entry is logged at WARNING (task id, name, reason, error):
        that log is the record of what was thrown away.
        """
        _check_selection(task_ids, query, limit, None)
        result = PurgeResult(dry_run=dry_run)
        letters = self._select(task_ids, query, limit, result.missing, unresolved=False)
        for batch in _chunks(letters, BATCH):
            entries = [Entry.of(e) for e in batch]
            result.purged += entries
            if dry_run:
                continue
            self.store.delete_dead_letters([e.task_id for e in entries])
            for e in entries:
                logger.warning("purged dead letter %s[%s] (%s): %s", e.name, e.task_id,
                               e.reason, e.error)
        if not dry_run:
            gone = {e.task_id for e in result.purged} | set(result.missing)
            if gone:
                result.removed_from_queue = self._remove_messages(gone)
        return result

    # -- reconcile -----------------------------------------------------------------------
    def reconcile(self) -> ReconcileResult:
        """Make the DLQ queue(s) and the index agree, and say what was fixed
        (:func:`celery_reliable.dlq.reconcile.reconcile`)."""
        from celery_reliable.dlq.reconcile import reconcile

        return reconcile(self)

    # -- helpers -----------------------------------------------------------------------
    def queues(self) -> builtins.list[str]:
        """Every DLQ queue in use: the app's and the per-task ones of registered tasks."""

        names = {runtime(self.app).settings.dlq_queue}
        for task in list(self.app.tasks.values()):
            if is_reliable(task):
                names.add(task.reliable_settings().dlq_queue)
        return sorted(names)

    def _remove_messages(self, identities: set[str]) -> int:
        """Take these entries' messages off every DLQ queue (all copies)."""
        removed = 0
        unreadable = any(i.startswith(tuple(f"{r}-" for r in UNREADABLE_REASONS))
                         for i in identities)
        for queue in self.queues():
            if unreadable:
                removed += broker.sweep(self.app, queue,
                                        lambda taken: taken.identity in identities).removed
            else:
                removed += broker.remove_by_task_id(self.app, queue, identities)
        return removed

    def matching(self, query: DeadLetterQuery) -> Iterator[DeadLetter]:
        cursor = None
        while True:
            page = self.store.list_dead_letters(query, 500, cursor)
            yield from page.entries
            cursor = page.cursor
            if cursor is None:
                return

    def _select(
        self, task_ids: Sequence[str] | None, query: DeadLetterQuery | None,
        limit: int | None, missing: builtins.list[str], unresolved: bool,
    ) -> Iterator[DeadLetter]:
        """The entries named or matching, ``limit`` at most."""
        def chosen() -> Iterator[DeadLetter]:
            if task_ids is not None:
                for task_id in dict.fromkeys(task_ids):
                    letter = self.store.get_dead_letter(task_id)
                    if letter is None:
                        missing.append(task_id)
                    else:
                        yield letter
                return
            q = query or DeadLetterQuery()
            if unresolved and q.replayed is None:
                q = replace(q, replayed=False)
            yield from self.matching(q)

        for n, letter in enumerate(chosen()):
            if limit is not None and n >= limit:
                return
            yield letter

def _check_selection(
    task_ids: Sequence[str] | None, query: DeadLetterQuery | None, limit: int | None,
    rate: float | None,
) -> None:
    if (task_ids is None) == (query is None):
        raise ConfigurationError(
            "give task ids or a query (DeadLetterQuery() selects every entry), not both")
    if limit is not None and limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit}")
    if rate is not None and rate <= 0:
        raise ConfigurationError(f"rate must be > 0 entries per second, got {rate}")


def _chunks(items: Iterable[DeadLetter], size: int) -> Iterator[list[DeadLetter]]:
    batch: list[DeadLetter] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


__all__ = [
    "CheckResult",
    "DeadLetterMessage",
    "DeadLetterQuery",
    "DeadLetters",
    "Detail",
    "Entry",
    "Page",
    "PurgeResult",
    "ReconcileResult",
    "ReplayResult",
]
