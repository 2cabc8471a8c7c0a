"""The dead-letter API: what the CLI and the dashboard call.

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
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from celery import Celery
from kombu import serialization

from celery_reliable import records
from celery_reliable.dlq import broker, routing
from celery_reliable.dlq.events import send_task_event
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
from celery_reliable.errors import ConfigurationError, ReliableError
from celery_reliable.runtime import runtime
from celery_reliable.states import TERMINAL, State, Transition, queries, recorder, state_store
from celery_reliable.states.runtime import states_of
from celery_reliable.stores.base import (
    DeadLetter,
    DeadLetterQuery,
    Store,
)

logger = logging.getLogger("celery_reliable.dlq")

#: Entries handled per store call while replaying or purging.
BATCH = 200
#: Replays published at once when no rate is given.
REPLAY_THREADS = 4
_RAW_MAX = 2000
#: Headers of a task message that must not travel with a replay.
_REPLAY_DROPPED_HEADERS = ("reliable_defers",)
#: Publish options a replay does not keep: the attempt count starts again, and an old
#: eta or expiry would make the replay wait or expire at once.
_REPLAY_DROPPED_OPTIONS = ("retries", "eta", "countdown", "expires")


_Call = tuple[list[Any], dict[str, Any], dict[str, Any]]
"""A dead letter's (args, kwargs, publish options)."""


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
            args, kwargs, options = self._decode(letter)
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
        """Unresolved (never replayed) entries dead for longer than ``older_than`` seconds."""
        if older_than < 0:
            raise ConfigurationError(f"older_than must be >= 0 seconds, got {older_than}")
        query = DeadLetterQuery(until=time.time() - older_than, replayed=False)
        count, oldest = 0, None
        for letter in self.matching(query):
            count += 1
            oldest = letter
        return CheckResult(older_than, count, Entry.of(oldest) if oldest else None)

    # -- replay ----------------------------------------------------------------------
    def replay(
        self, task_ids: Sequence[str] | None = None, query: DeadLetterQuery | None = None, *,
        to_queue: str | None = None, rate: float | None = None, limit: int | None = None,
        force: bool = False, dry_run: bool = False,
    ) -> ReplayResult:
        """Publish the entries' tasks again: same task id and idempotency key, attempts
        from 1, to their original queue or ``to_queue``; their messages leave the DLQ.

        An entry replayed since it was dead-lettered is skipped unless ``force``, so
        replaying twice publishes once.  ``rate``: entries per second at most.
        """
        _check_selection(task_ids, query, limit, rate)
        result = ReplayResult()
        started = time.monotonic()
        letters = self._select(task_ids, query, limit, result.missing, unresolved=not force)
        for batch in _chunks(letters, BATCH):
            if dry_run:
                result.would_replay += [e.task_id for e in batch if force or not e.replayed]
                result.skipped += [e.task_id for e in batch if not force and e.replayed]
                continue
            decoded = {}
            for letter in batch:
                try:
                    decoded[letter.task_id] = (letter, self._decode(letter))
                except records.UndecodableRecord as exc:
                    result.refused[letter.task_id] = str(exc)
            marked = set(self.store.claim_replays(list(decoded), force))
            result.skipped += [t for t in decoded if t not in marked]
            chosen = [(letter, self._replay_call(letter, *call, to_queue=to_queue))
                      for t, (letter, call) in decoded.items() if t in marked]
            self._record_replayed([letter for letter, _ in chosen], to_queue)
            chosen = self._persist(chosen, result)
            if rate:
                self._replay_part(chosen, to_queue, result, (rate, started))
            else:  # the publishes are round trips: overlap a few, one producer per thread
                parts = [chosen[i::REPLAY_THREADS] for i in range(REPLAY_THREADS)]
                list(pool().map(lambda part: self._replay_part(part, to_queue, result),
                                [part for part in parts if part]))
        if result.replayed:
            result.removed_from_queue = self._remove_messages(set(result.replayed))
        result.seconds = time.monotonic() - started
        return result

    def _replay_part(
        self, part: builtins.list[tuple[DeadLetter, _Call]], to_queue: str | None,
        result: ReplayResult, pace: tuple[float, float] | None = None,
    ) -> None:
        """Publish some replays in order on one producer (``pace``: rate and start time)."""
        with self.app.producer_or_acquire() as producer:
            for letter, call in part:
                if pace is not None:
                    self._pace(pace[0], pace[1], len(result.replayed))
                try:
                    self._republish(letter, *call, to_queue=to_queue, producer=producer)
                # kombu raises many types when the broker is away: report, keep the entry
                except Exception as exc:  # noqa: BLE001
                    self._replay_failed(letter, exc)
                    result.failed[letter.task_id] = f"{type(exc).__name__}: {exc}"
                    continue
                result.replayed.append(letter.task_id)  # list.append is atomic

    def _replay_call(
        self, letter: DeadLetter, args: builtins.list[Any], kwargs: dict[str, Any],
        options: dict[str, Any], to_queue: str | None,
    ) -> _Call:
        """The call a replay publishes: the original one without what belonged to the
        failed run (retries, its own headers), to ``to_queue`` if given."""
        options = {k: v for k, v in options.items() if k not in _REPLAY_DROPPED_OPTIONS}
        options["headers"] = {k: v for k, v in (options.pop("headers", None) or {}).items()
                              if k not in _REPLAY_DROPPED_HEADERS}
        if to_queue:
            for name in ("queue", "exchange", "routing_key", "exchange_type"):
                options.pop(name, None)
            options["queue"] = to_queue
        return args, kwargs, options

    def _persist(
        self, chosen: builtins.list[tuple[DeadLetter, _Call]], result: ReplayResult
    ) -> builtins.list[tuple[DeadLetter, _Call]]:
        """Fresh task records for the replays (so the rescuer covers them as any
        publish), one store call for the batch; the replays that may go ahead."""
        fresh = []
        for letter, (args, kwargs, options) in chosen:
            r = letter.record
            settings = routing.settings_for(self.app, r.name)
            if settings.persist_on_publish:
                record, _ = records.encode(
                    self.app, name=r.name, task_id=r.task_id, key=r.key,
                    fingerprint=r.fingerprint, args=args, kwargs=kwargs, options=options,
                )
                fresh.append((record, settings.rescue_after))
        if not fresh:
            return chosen
        try:
            self.store.publish_many(fresh, dedupe=False)
        except ReliableError as exc:
            for letter, _ in chosen:
                self._replay_failed(letter, exc)
                result.failed[letter.task_id] = f"{type(exc).__name__}: {exc}"
            return []
        return chosen

    def _republish(
        self, letter: DeadLetter, args: builtins.list[Any], kwargs: dict[str, Any],
        options: dict[str, Any], to_queue: str | None, producer: Any = None,
    ) -> None:
        r = letter.record
        options = dict(options)
        headers = options.pop("headers")
        self.app.send_task(r.name, args, kwargs, task_id=r.task_id, headers=headers,
                           retries=0, add_to_parent=False, producer=producer, **options)
        send_task_event(self.app, "replayed", r.task_id, idempotency_key=r.key,
                        replay=letter.replays + 1, to_queue=to_queue)

    def _record_replayed(self, letters: builtins.list[DeadLetter], to_queue: str | None) -> None:
        """Write REPLAYED before publishing: the worker's RECEIVED must find it there
        (DEAD_LETTERED -> RECEIVED is not a legal move).  Written directly, one call per
        batch; an entry whose history was pruned (older than the state retention) starts
        again at PENDING.  A state store that fails is logged: it never stops a replay."""
        if not recorder(self.app).enabled:
            return
        batch = [
            Transition(e.task_id, e.record.name, e.record.key, State.REPLAYED,
                       detail={"replay": e.replays + 1,
                               **({"to_queue": to_queue} if to_queue else {})})
            for e in letters
            if not e.replayed  # a forced second replay: REPLAYED -> REPLAYED is no move
        ]
        if not batch:
            return
        try:
            store = state_store(self.app)
            result = store.record(batch)
            # The worker records the final failure within a flush interval of its
            # recorder: a replay that came sooner finds the task still STARTED. Wait
            # for it (a few intervals at most) rather than lose the REPLAYED.
            interval = states_of(self.app).settings.flush_interval
            for _ in range(5):
                early = [r.transition for r in result.rejected
                         if r.previous is not None and r.previous not in TERMINAL]
                if not early:
                    break
                time.sleep(interval)
                result = store.record(early)
            forgotten = [replace(r.transition, state=State.PENDING, id="")
                         for r in result.rejected if r.previous is None]
            if forgotten:
                store.record(forgotten)
        except ReliableError as exc:
            runtime(self.app).count("state_error")
            logger.warning("could not record %d replays in the state store: %s", len(batch), exc)

    def _replay_failed(self, letter: DeadLetter, exc: Exception) -> None:
        """Take the replay back: the entry is unreplayed again, and so is its state."""
        r = letter.record
        self.store.undo_replay(r.task_id)
        if not letter.replayed:
            recorder(self.app).transition(
                r.task_id, r.name, r.key, State.DEAD_LETTERED,
                detail={"reason": r.reason, "replay_failed": f"{type(exc).__name__}: {exc}"})

    def _decode(self, letter: DeadLetter) -> _Call:
        """The call of an entry, refusing what the app does not accept (untrusted input)."""
        r = letter.record
        if r.reason in UNREADABLE_REASONS or not r.name:
            raise records.UndecodableRecord(
                f"not a task message ({r.reason}): it can be shown and purged, not replayed")
        accepted = serialization.prepare_accept_content(self.app.conf.accept_content)
        if r.content_type not in accepted:
            raise records.UndecodableRecord(
                f"content type {r.content_type!r} is not in the app's accept_content "
                f"({', '.join(sorted(accepted))}): not deserialized. Accept it only if you "
                "trust where this message came from")
        return records.decode(self.app, r)

    @staticmethod
    def _pace(rate: float | None, started: float, done: int) -> None:
        if rate:
            wait = started + done / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)

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
        from celery_reliable.task import ReliableTask

        names = {runtime(self.app).settings.dlq_queue}
        for task in list(self.app.tasks.values()):
            if isinstance(task, ReliableTask):
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


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """Threads that publish replays (store and broker round trips overlap); one per process."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(REPLAY_THREADS, thread_name_prefix="reliable-replay")
        return _pool


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
