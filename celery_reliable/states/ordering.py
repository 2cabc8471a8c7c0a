"""A task's history in the order things happened, whatever order they arrive in.

Several processes record one task: the producer (PENDING), one or more workers
(RECEIVED ... and an outcome), the rescuer (RESCUED), an operator's replay
(REPLAYED).  Each flushes its own buffer when it likes, so the store receives
their transitions in any order.  It keeps them in *happened-order* and judges
the whole history, not each arrival against whatever came first:

* **Happened-order** is by replay generation, then attempt, then time
  (:func:`in_order`).  A retry's next attempt follows every state of the
  attempt before it even when its worker's clock or flush is ahead (the
  failing attempt records RETRY_SCHEDULED only after it has published the
  next one); a replay starts again at attempt 1, so a REPLAYED opens a new
  generation.  Within an attempt, the REPLAYED that opens it comes first, then
  a PENDING (an attempt is published before anything else can happen to it:
  a producer whose clock runs ahead of the worker's cannot put its PENDING
  after the worker's RECEIVED), then the rest by time.  Each process stamps a
  transition when it happens, before publishing whatever follows it (a
  deferral before its republish, a rescue before it sends), so one clock
  orders them; several machines' clocks must agree (NTP) to within the time a
  message takes from one to the other.
* **The fold** (:func:`settle`) walks that order through the lifecycle's
  table.  The task's *current state* is the last state it moved to; a
  transition that is illegal where it falls is a bug, reported and not
  written.  A legal history delivered out of order is therefore never
  refused: each late piece is judged where it belongs, with the pieces around
  it.
* **Repeats** of a finished task: the broker hands a copy that was already
  deduplicated to a worker again (RECEIVED then DEDUPLICATED once more), or a
  caller publishes its task id again (PENDING; a worker then skips it).  After
  a terminal state these are *echoes* (:data:`~celery_reliable.states.machine.ECHOES`):
  written to the history and counted, they never move the current state, and
  nothing but DEDUPLICATED may follow an echoed RECEIVED.

:func:`admit` is what the memory and SQL stores call; the Redis store's
record script implements the same rules in Lua (``stores/lua/record.lua``),
and the store contract tests run both.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from celery_reliable.states.machine import ECHOES, TERMINAL, State, check
from celery_reliable.states.model import Rejection, TaskState, Transition


def in_order(transitions: Iterable[Transition]) -> list[Transition]:
    """``transitions`` (one task's) in happened-order: generation, attempt, rank (the
    REPLAYED that opens a generation, an attempt's first PENDING, the rest), time, id."""
    by_time = sorted(transitions, key=lambda t: (t.at, t.id))
    generation, keyed = 0, []
    published: set[tuple[int, int]] = set()  # (generation, attempt) with a PENDING
    for t in by_time:
        rank = 2
        if t.state is State.REPLAYED:
            generation, rank = generation + 1, 0
        elif t.state is State.PENDING and (generation, t.attempt) not in published:
            published.add((generation, t.attempt))
            rank = 1
        keyed.append(((generation, t.attempt, rank, t.at, t.id), t))
    keyed.sort(key=lambda pair: pair[0])
    return [t for _, t in keyed]


@dataclass(frozen=True)
class Settled:
    current: int | None
    """Index of the transition that set the current state (None: none did)."""
    illegal: tuple[int, ...]
    """Indexes of the transitions that are illegal where they fall."""


def settle(ordered: Sequence[Transition]) -> Settled:
    """Walk a history in happened-order through the lifecycle (see the module's doc)."""
    state: State | None = None
    echo: State | None = None
    current: int | None = None
    illegal: list[int] = []
    for i, t in enumerate(ordered):
        if state in TERMINAL:
            if t.state in ECHOES[echo]:  # a repeat of the finished task: kept, not a move
                echo = None if t.state is State.DEDUPLICATED else t.state
                continue
            if echo is State.RECEIVED or not check(state, t.state):
                illegal.append(i)
                continue
            echo = None
        elif not check(state, t.state):
            illegal.append(i)
            continue
        state, current = t.state, i
    return Settled(current, tuple(illegal))


@dataclass(frozen=True)
class Admitted:
    accepted: list[Transition]
    """The new transitions to write, in the order given."""
    rejected: list[Rejection]
    current: Transition | None
    """The transition that sets the task's current state once the accepted are written."""


def admit(history: Sequence[Transition], new: Sequence[Transition]) -> Admitted:
    """Which of ``new`` (one task's, none recorded yet) fit into ``history`` (what the
    store holds of the task, any order).

    All of them, when the merged history is legal.  Else the first transition that
    is illegal where it falls is refused if it is new; if it is one already
    recorded, the new one just before it broke it and is refused; and so on until
    the rest is legal.  Recorded transitions that were illegal already (written by
    an older version) are left as they are.
    """
    base = in_order(history)
    old_illegal = {base[i].id for i in settle(base).illegal}
    fresh = {t.id for t in new}
    accepted = list(new)
    rejected: list[Rejection] = []
    while True:
        merged = in_order([*history, *accepted])
        settled = settle(merged)
        bad = [i for i in settled.illegal if merged[i].id not in old_illegal]
        if not bad:
            current = None if settled.current is None else merged[settled.current]
            return Admitted(accepted, rejected, current)
        at = bad[0]
        if merged[at].id not in fresh:
            at = max((i for i in range(at) if merged[i].id in fresh), default=-1)
            if at < 0:  # cannot happen: an old one turns illegal only behind a new one
                raise AssertionError("a recorded transition turned illegal on its own")
        culprit = merged[at]
        before = _state_before(merged, at)
        after = merged[at + 1].state if at + 1 < len(merged) else None
        rejected.append(Rejection(culprit, before, after))
        accepted = [t for t in accepted if t.id != culprit.id]


def _state_before(merged: Sequence[Transition], at: int) -> State | None:
    """The state the task was in just before position ``at``."""
    settled = settle(merged[:at])
    return None if settled.current is None else merged[settled.current].state


def appends(current: TaskState | None, new: Sequence[Transition]) -> bool:
    """May ``new`` (one task's, in the order given) simply go after ``current``?

    The common case, decided without reading the history: each is newer than
    the one before (time, and an attempt no lower; a PENDING only in a later
    attempt) and legal after it, and the task is not finished (after a terminal
    state only echoes and replays come, and those need the whole history).
    """
    if current is not None and current.state in TERMINAL:
        return False
    state, at, attempt = ((current.state, current.since, current.attempt)
                          if current is not None else (None, float("-inf"), 0))
    for t in new:
        if t.at <= at or t.attempt < attempt or t.state is State.REPLAYED:
            return False
        if t.state is State.PENDING and state is not None and t.attempt == attempt:
            return False
        if not check(state, t.state):
            return False
        state, at, attempt = t.state, t.at, t.attempt
    return True


def merge_timelines(timelines: Iterable[Sequence[Transition]]) -> list[Transition]:
    """Several tasks' timelines (each in happened-order) as one, interleaved by time;
    each task's own order is kept even where its clocks disagree."""
    return list(heapq.merge(*timelines, key=lambda t: t.at))
