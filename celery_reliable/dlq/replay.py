"""Replaying dead letters: the same task id and idempotency key, attempts from 1.

Each batch of entries (:class:`Replaying`) is, in this order:

1. decoded, refusing what the app does not accept (a dead letter is untrusted input);
2. marked replayed in the store (``claim_replays``), so replaying twice publishes once;
3. recorded as REPLAYED in the state store, so that the worker's RECEIVED finds it;
4. persisted as fresh task records (persist before publish holds for replays too),
   each due for rescue ``rescue_after`` after its publish is planned, not after the
   batch was persisted (a slow rate must not let the rescuer send what the replay
   has not sent yet);
5. published, a few at a time on their own producers, or paced to a rate.

A replay that fails at 4 or 5 is taken back: unmarked, and DEAD_LETTERED again in
the state store, so it can be replayed later.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from celery import Celery
from kombu import serialization

from celery_reliable import records
from celery_reliable.dlq import routing
from celery_reliable.dlq.corrections import Correction
from celery_reliable.dlq.message import UNREADABLE_REASONS
from celery_reliable.dlq.model import ReplayResult
from celery_reliable.errors import ReliableError
from celery_reliable.events import TaskEvent, emit
from celery_reliable.headers import HEADER_DEFERS, HEADER_FINGERPRINT
from celery_reliable.runtime import runtime
from celery_reliable.states import TERMINAL, State, Transition, recorder, state_store
from celery_reliable.states.runtime import states_of
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import DeadLetter

logger = logging.getLogger("celery_reliable.dlq")

#: Replays published at once when no rate is given.
REPLAY_THREADS = 4
#: Headers of a task message that must not travel with a replay.
_REPLAY_DROPPED_HEADERS = (HEADER_DEFERS,)
#: Publish options a replay does not keep: the attempt count starts again, and an old
#: eta or expiry would make the replay wait or expire at once.
_REPLAY_DROPPED_OPTIONS = ("retries", "eta", "countdown", "expires")

Call = tuple[list[Any], dict[str, Any], dict[str, Any]]
"""A dead letter's (args, kwargs, publish options)."""


class Replaying:
    """One replay run: ``batch`` for each batch of the entries chosen, in order."""

    def __init__(
        self, app: Celery, store: Store, *, force: bool, to_queue: str | None,
        rate: float | None, started: float,
        corrections: dict[str, Correction] | None = None,
    ) -> None:
        self.app = app
        #: task id -> the corrected arguments its replay publishes
        self.corrections = corrections or {}
        self.store = store
        self.force = force
        self.to_queue = to_queue
        self.rate = rate
        self.started = started

    def batch(self, batch: list[DeadLetter], result: ReplayResult) -> None:
        """Replay one batch of chosen entries, adding to ``result``."""
        decoded = {}
        for letter in batch:
            try:
                decoded[letter.task_id] = (letter, call_of(self.app, letter))
            except records.UndecodableRecord as exc:
                result.refused[letter.task_id] = str(exc)
        marked = set(self.store.claim_replays(list(decoded), self.force))
        result.skipped += [t for t in decoded if t not in marked]
        chosen = [(letter, self._call(letter, *call))
                  for t, (letter, call) in decoded.items() if t in marked]
        self._record_replayed([letter for letter, _ in chosen])
        chosen = self._persist(chosen, result)
        if self.rate:
            self._part(chosen, result, paced=True)
        else:  # the publishes are round trips: overlap a few, one producer per thread
            parts = [chosen[i::REPLAY_THREADS] for i in range(REPLAY_THREADS)]
            list(pool().map(lambda part: self._part(part, result),
                            [part for part in parts if part]))

    def _part(
        self, part: list[tuple[DeadLetter, Call]], result: ReplayResult, paced: bool = False,
    ) -> None:
        """Publish some replays in order on one producer (``paced``: to ``rate``)."""
        with self.app.producer_or_acquire() as producer:
            for letter, call in part:
                if paced:
                    _pace(self._planned(len(result.replayed)))
                try:
                    self._republish(letter, *call, producer=producer)
                # kombu raises many types when the broker is away: report, keep the entry
                except Exception as exc:  # noqa: BLE001
                    self._failed(letter, exc)
                    result.failed[letter.task_id] = f"{type(exc).__name__}: {exc}"
                    continue
                result.replayed.append(letter.task_id)  # list.append is atomic

    def _call(
        self, letter: DeadLetter, args: list[Any], kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Call:
        """The call a replay publishes: the original one without what belonged to the
        failed run (retries, its own headers), to ``to_queue`` if given, with its
        corrected arguments and their fingerprint if it has any."""
        to_queue = self.to_queue
        options = {k: v for k, v in options.items() if k not in _REPLAY_DROPPED_OPTIONS}
        options["headers"] = {k: v for k, v in (options.pop("headers", None) or {}).items()
                              if k not in _REPLAY_DROPPED_HEADERS}
        correction = self.corrections.get(letter.task_id)
        if correction is not None:
            args, kwargs = correction.args, correction.kwargs
            options["headers"][HEADER_FINGERPRINT] = correction.fingerprint
        if to_queue:
            for name in ("queue", "exchange", "routing_key", "exchange_type"):
                options.pop(name, None)
            options["queue"] = to_queue
        return args, kwargs, options

    def _persist(
        self, chosen: list[tuple[DeadLetter, Call]], result: ReplayResult
    ) -> list[tuple[DeadLetter, Call]]:
        """Fresh task records for the replays (so the rescuer covers them as any
        publish), one store call for the batch; the replays that may go ahead.

        Each record's deadline is ``rescue_after`` from the time its publish is planned
        for, not from now: paced to a slow rate, a batch takes longer than
        ``rescue_after`` (200 entries at 2/s: 100 s), and the rescuer would republish
        the entries this replay has not sent yet."""
        now = time.monotonic()
        fresh = []
        for n, (letter, (args, kwargs, options)) in enumerate(chosen):
            r = letter.record
            settings = routing.settings_for(self.app, r.name)
            if settings.persist_on_publish:
                record, _ = records.encode(
                    self.app, name=r.name, task_id=r.task_id, key=r.key,
                    fingerprint=options["headers"].get(HEADER_FINGERPRINT, r.fingerprint),
                    args=args, kwargs=kwargs, options=options,
                )
                wait = self._planned(len(result.replayed) + n) - now
                fresh.append((record, settings.rescue_after + max(0.0, wait)))
        if not fresh:
            return chosen
        try:
            self.store.publish_many(fresh, dedupe=False)
        except ReliableError as exc:
            for letter, _ in chosen:
                self._failed(letter, exc)
                result.failed[letter.task_id] = f"{type(exc).__name__}: {exc}"
            return []
        return chosen

    def _planned(self, done: int) -> float:
        """When the publish after ``done`` others is due (monotonic): now without a rate.
        :func:`_pace` holds each publish to it."""
        return self.started + done / self.rate if self.rate else time.monotonic()

    def _republish(
        self, letter: DeadLetter, args: list[Any], kwargs: dict[str, Any],
        options: dict[str, Any], producer: Any = None,
    ) -> None:
        r = letter.record
        options = dict(options)
        headers = options.pop("headers")
        self.app.send_task(r.name, args, kwargs, task_id=r.task_id, headers=headers,
                           retries=0, add_to_parent=False, producer=producer, **options)
        emit(self.app, TaskEvent.REPLAYED, r.task_id, count=runtime(self.app).count,
             idempotency_key=r.key, replay=letter.replays + 1, to_queue=self.to_queue,
             **self._changed(letter.task_id))

    def _record_replayed(self, letters: list[DeadLetter]) -> None:
        """Write REPLAYED before publishing: the worker's RECEIVED must find it there
        (DEAD_LETTERED -> RECEIVED is not a legal move).  Written directly, one call per
        batch; an entry whose history was pruned (older than the state retention) starts
        again at PENDING.  A state store that fails is logged: it never stops a replay."""
        if not recorder(self.app).enabled:
            return
        to_queue = self.to_queue
        batch = [
            Transition(e.task_id, e.record.name, e.record.key, State.REPLAYED,
                       detail={"replay": e.replays + 1,
                               **({"to_queue": to_queue} if to_queue else {}),
                               **self._changed(e.task_id)})
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

    def _changed(self, task_id: str) -> dict[str, list[str]]:
        """``arguments_changed``: the names (never the values: they may be personal
        data) of the arguments a corrected replay changed."""
        correction = self.corrections.get(task_id)
        return {} if correction is None else {"arguments_changed": list(correction.changed)}

    def _failed(self, letter: DeadLetter, exc: Exception) -> None:
        """Take the replay back: the entry is unreplayed again, and so is its state."""
        r = letter.record
        self.store.undo_replay(r.task_id)
        if not letter.replayed:
            recorder(self.app).transition(
                r.task_id, r.name, r.key, State.DEAD_LETTERED,
                detail={"reason": r.reason, "replay_failed": f"{type(exc).__name__}: {exc}"})


def call_of(app: Celery, letter: DeadLetter) -> Call:
    """The call of an entry, refusing what the app does not accept (untrusted input)."""
    r = letter.record
    if r.reason in UNREADABLE_REASONS or not r.name:
        raise records.UndecodableRecord(
            f"not a task message ({r.reason}): it can be shown and purged, not replayed")
    accepted = serialization.prepare_accept_content(app.conf.accept_content)
    if r.content_type not in accepted:
        raise records.UndecodableRecord(
            f"content type {r.content_type!r} is not in the app's accept_content "
            f"({', '.join(sorted(accepted))}): not deserialized. Accept it only if you "
            "trust where this message came from")
    return records.decode(app, r)


def _pace(planned: float) -> None:
    """Wait until the monotonic time ``planned`` (the rate limit of a replay)."""
    wait = planned - time.monotonic()
    if wait > 0:
        time.sleep(wait)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """Threads that publish replays (store and broker round trips overlap); one per process."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(REPLAY_THREADS, thread_name_prefix="reliable-replay")
        return _pool
