"""Transitions from several processes, arriving in any order, make the true history (G5).

Each scenario is what two or more processes record of one task, stamped as they
stamp it, then flushed in an order the processes cannot control.  Every backend
(the ``states`` fixture of the store contract) must end with the same history in
happened-order, the right current state, nothing refused, and nothing left
looking unfinished.  Times are explicit (in the past): nothing sleeps.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence

import pytest

from celery_reliable.states import (
    INITIAL,
    LEGAL,
    TERMINAL,
    RecordResult,
    State,
    StateStore,
    Transition,
)
from celery_reliable.states.machine import ECHOES
from celery_reliable.states.stores.memory import MemoryStateStore
from tests.unit.test_states_store import states, tid, tr  # noqa: F401 - the fixture

S = State
Flush = Sequence[Transition]


def _record_in(store: StateStore, flushes: Sequence[Flush]) -> None:
    for flush in flushes:
        result = store.record(flush)
        assert result.rejected == (), [
            (r.previous, r.transition.state, r.following) for r in result.rejected]


def _assert_history(store: StateStore, task: str, expected: list[tuple[State, int]],
                    current: State) -> None:
    assert [(t.state, t.attempt) for t in store.timeline(task)] == expected
    now = store.current(task)
    assert now is not None and now.state is current
    if current in (S.SUCCEEDED, S.DEDUPLICATED, S.DEAD_LETTERED):
        assert task not in {c.task_id for c in store.stuck(0, limit=1000)}


@pytest.mark.parametrize("worker_first", [True, False], ids=["worker-first", "producer-first"])
def test_a_producer_whose_clock_is_ahead_still_puts_pending_first(
    states: StateStore, worker_first: bool,  # noqa: F811
) -> None:
    """The producer's PENDING stamped after the worker's RECEIVED (its clock is a few ms
    ahead, or it stamped after the publish returned): PENDING still opens the attempt.
    Before, arriving first it made the worker's states illegal and left the task PENDING
    (stuck); arriving last it was refused."""
    task, now = tid(), time.time() - 30
    pending = tr(task, S.PENDING, now + 0.004)
    worker = [tr(task, state, now + i * 0.001, worker="w1")
              for i, state in enumerate([S.RECEIVED, S.STARTED, S.SUCCEEDED], start=1)]
    _record_in(states, [worker, [pending]] if worker_first else [[pending], worker])
    _assert_history(states, task, [(S.PENDING, 1), (S.RECEIVED, 1), (S.STARTED, 1),
                                   (S.SUCCEEDED, 1)], S.SUCCEEDED)
    assert states.stats(3600).counts["shop.send_receipt"][S.SUCCEEDED] == 1


def test_two_workers_across_retries_in_every_flush_order(states: StateStore) -> None:  # noqa: F811
    """Attempt n on one worker records RETRY_SCHEDULED after it has published attempt
    n+1, which another worker may already have received, run and flushed: every state
    of an attempt goes before the next attempt's, in whatever order they arrive.
    Before, the late attempt's states were refused one by one (RECEIVED -> RECEIVED)."""
    expected = [(S.PENDING, 1), (S.RECEIVED, 1), (S.STARTED, 1), (S.RETRY_SCHEDULED, 1),
                (S.RECEIVED, 2), (S.STARTED, 2), (S.RETRY_SCHEDULED, 2),
                (S.RECEIVED, 3), (S.STARTED, 3), (S.SUCCEEDED, 3)]
    base = time.time() - 300
    for order in itertools.permutations(range(4)):  # four processes, one flush each
        task = tid()
        flushes = _retry_flushes(task, base)
        _record_in(states, [flushes[i] for i in order])
        _assert_history(states, task, expected, S.SUCCEEDED)
        current = states.current(task)
        assert current is not None and (current.attempt, current.worker) == (3, "C"), order


def _retry_flushes(task: str, at: float) -> list[Flush]:
    """Producer, worker A (attempt 1), B (attempt 2, its RETRY stamped after C started),
    C (attempt 3): A's RETRY_SCHEDULED is stamped after B's RECEIVED."""
    return [
        [tr(task, S.PENDING, at)],
        [tr(task, S.RECEIVED, at + 1, worker="A"), tr(task, S.STARTED, at + 2, worker="A"),
         tr(task, S.RETRY_SCHEDULED, at + 3.5, worker="A")],
        [tr(task, S.RECEIVED, at + 3, 2, worker="B"), tr(task, S.STARTED, at + 4, 2, worker="B"),
         tr(task, S.RETRY_SCHEDULED, at + 6, 2, worker="B")],
        [tr(task, S.RECEIVED, at + 5, 3, worker="C"), tr(task, S.STARTED, at + 5.5, 3, worker="C"),
         tr(task, S.SUCCEEDED, at + 7, 3, worker="C")],
    ]


def test_a_late_attempt_never_makes_a_finished_task_look_unfinished(
    states: StateStore,  # noqa: F811
) -> None:
    """Attempt 1's RETRY_SCHEDULED arrives (and is stamped) after attempt 2 SUCCEEDED:
    it goes into attempt 1, and the task stays SUCCEEDED, not stuck in RETRY_SCHEDULED."""
    task, at = tid(), time.time() - 60
    _record_in(states, [
        [tr(task, S.PENDING, at), tr(task, S.RECEIVED, at + 1, worker="A"),
         tr(task, S.STARTED, at + 2, worker="A")],
        [tr(task, S.RECEIVED, at + 3, 2, worker="B"), tr(task, S.STARTED, at + 4, 2, worker="B"),
         tr(task, S.SUCCEEDED, at + 5, 2, worker="B")],
        [tr(task, S.RETRY_SCHEDULED, at + 6, worker="A")],
    ])
    _assert_history(states, task, [(S.PENDING, 1), (S.RECEIVED, 1), (S.STARTED, 1),
                                   (S.RETRY_SCHEDULED, 1), (S.RECEIVED, 2), (S.STARTED, 2),
                                   (S.SUCCEEDED, 2)], S.SUCCEEDED)
    current = states.current(task)
    assert current is not None and (current.attempt, current.worker) == (2, "B")


def test_a_deferral_flushed_after_the_copy_that_ran(states: StateStore) -> None:  # noqa: F811
    """Worker A defers the task (same attempt: stamped before its republish), worker B
    runs the next copy and flushes first: A's states fit in before B's, as a whole."""
    task, at = tid(), time.time() - 60
    _record_in(states, [
        [tr(task, S.PENDING, at)],
        [tr(task, S.RECEIVED, at + 3, worker="B"), tr(task, S.STARTED, at + 4, worker="B"),
         tr(task, S.SUCCEEDED, at + 5, worker="B")],
        [tr(task, S.RECEIVED, at + 1, worker="A"), tr(task, S.DEFERRED, at + 2, worker="A")],
    ])
    _assert_history(states, task, [(S.PENDING, 1), (S.RECEIVED, 1), (S.DEFERRED, 1),
                                   (S.RECEIVED, 1), (S.STARTED, 1), (S.SUCCEEDED, 1)],
                    S.SUCCEEDED)


@pytest.mark.parametrize("redelivery_first", [False, True], ids=["in-order", "redelivery-first"])
def test_a_redelivered_duplicate_is_an_echo_of_the_finished_task(
    states: StateStore, redelivery_first: bool,  # noqa: F811
) -> None:
    """A copy already deduplicated is delivered again (its first worker died before the
    ack): RECEIVED and DEDUPLICATED again, kept in the history, counted, and the task
    stays DEDUPLICATED since the first time.  Before: DEDUPLICATED -> RECEIVED, refused."""
    task, at = tid(), time.time() - 60
    first = [tr(task, S.RECEIVED, at + 1, worker="A"),
             tr(task, S.DEDUPLICATED, at + 2, worker="A", detail={"existing_task": "t0"})]
    again = [tr(task, S.RECEIVED, at + 3, worker="B"),
             tr(task, S.DEDUPLICATED, at + 4, worker="B", detail={"existing_task": "t0"})]
    flushes = [[tr(task, S.PENDING, at)], first, again]
    _record_in(states, [flushes[0], again, first] if redelivery_first else flushes)
    _assert_history(states, task, [(S.PENDING, 1), (S.RECEIVED, 1), (S.DEDUPLICATED, 1),
                                   (S.RECEIVED, 1), (S.DEDUPLICATED, 1)], S.DEDUPLICATED)
    current = states.current(task)
    assert current is not None and current.worker == "A"
    assert current.since == pytest.approx(first[1].at, abs=1e-6)
    assert states.stats(3600).counts["shop.send_receipt"][S.DEDUPLICATED] == 2


def test_a_task_id_published_again_after_it_succeeded_is_an_echo(
    states: StateStore,  # noqa: F811
) -> None:
    """A caller publishes a finished task's id again (a canvas sent twice): its PENDING
    is kept, the worker skips the copy, the task stays SUCCEEDED."""
    task, at = tid(), time.time() - 60
    _record_in(states, [
        [tr(task, S.PENDING, at), tr(task, S.RECEIVED, at + 1), tr(task, S.STARTED, at + 2),
         tr(task, S.SUCCEEDED, at + 3)],
        [tr(task, S.PENDING, at + 4)],
    ])
    _assert_history(states, task, [(S.PENDING, 1), (S.RECEIVED, 1), (S.STARTED, 1),
                                   (S.SUCCEEDED, 1), (S.PENDING, 1)], S.SUCCEEDED)


def test_an_illegal_sequence_is_still_refused_whatever_the_order(
    states: StateStore,  # noqa: F811
) -> None:
    """A finished task starting again, an echoed delivery that then runs, a replay of a
    task that did not fail: bugs, refused and not written, and the task stays as it was."""
    done, dup, running = tid(), tid(), tid()
    at = time.time() - 60
    states.record([tr(done, S.PENDING, at), tr(done, S.RECEIVED, at + 1),
                   tr(done, S.STARTED, at + 2), tr(done, S.SUCCEEDED, at + 3)])
    states.record([tr(dup, S.RECEIVED, at + 1), tr(dup, S.DEDUPLICATED, at + 2)])
    states.record([tr(running, S.RECEIVED, at + 1), tr(running, S.STARTED, at + 2)])
    result = states.record([
        tr(done, S.STARTED, at + 4),
        tr(dup, S.RECEIVED, at + 3), tr(dup, S.STARTED, at + 4),
        tr(running, S.REPLAYED, at + 3),
    ])
    assert [(r.transition.task_id, r.previous, r.transition.state, r.following)
            for r in result.rejected] == [
        (done, S.SUCCEEDED, S.STARTED, None),
        (dup, S.DEDUPLICATED, S.STARTED, None),
        (running, S.STARTED, S.REPLAYED, None),  # a replay opens a new generation
    ]
    assert result.written == 1  # the echoed RECEIVED
    for task, state in ((done, S.SUCCEEDED), (dup, S.DEDUPLICATED), (running, S.STARTED)):
        current = states.current(task)
        assert current is not None and current.state is state


#: The way most tasks go, taken more often than the other ways out.
_MAIN_PATH = {None: [S.PENDING], S.PENDING: [S.RECEIVED], S.RECEIVED: [S.STARTED],
              S.STARTED: [S.RETRY_SCHEDULED, S.SUCCEEDED], S.RETRY_SCHEDULED: [S.RECEIVED]}


def _random_history(rng: random.Random, task: str, at: float) -> list[Transition]:
    """A walk through the lifecycle (echoes after a terminal state, replays, retries that
    stamp RETRY_SCHEDULED late), with now and then a transition that is illegal anywhere
    near where it falls; distinct microsecond times."""
    steps: list[Transition] = []
    state: State | None = None
    attempt, t = 1, at
    for _ in range(rng.randint(1, 14)):
        if state in TERMINAL and rng.random() < 0.5:
            choices = sorted(ECHOES[None]) + sorted(LEGAL[state])
        else:
            choices = sorted(INITIAL if state is None else LEGAL[state])
        if not choices:
            break
        new = rng.choice(choices) if rng.random() > 0.1 else rng.choice(list(State))
        if state in _MAIN_PATH and rng.random() < 0.6:
            new = rng.choice(_MAIN_PATH[state])
        if new is S.REPLAYED:
            attempt = 1
        elif new is S.RECEIVED and state is S.RETRY_SCHEDULED:
            attempt += 1
        t += rng.randint(1, 5) / 1000
        stamp = t + (0.02 if new is S.RETRY_SCHEDULED and rng.random() < 0.5 else 0)
        steps.append(tr(task, new, stamp, attempt, worker=rng.choice(["A", "B", None])))
        if new in LEGAL.get(state, INITIAL) if state else new in INITIAL:
            state = new
    return steps


def test_every_backend_judges_any_arrival_order_as_the_memory_store_does(
    states: StateStore,  # noqa: F811
) -> None:
    """Random histories cut into random flushes, sent in a random order: each backend
    (the Redis script in Lua, SQL in Python) writes, refuses and orders exactly as the
    reference does (the memory store against a second one: the same input, the same
    history)."""
    reference = MemoryStateStore()
    rng = random.Random(28)
    at = time.time() - 3000
    for n in range(80):
        task = tid()
        steps = _random_history(rng, task, at + n * 10)
        cuts = sorted(rng.sample(range(1, len(steps)), min(len(steps) - 1, rng.randint(0, 3))))
        flushes = [steps[a:b] for a, b in itertools.pairwise([0, *cuts, len(steps)])]
        rng.shuffle(flushes)
        for flush in flushes:
            want, got = reference.record(flush), states.record(flush)
            assert _verdicts(got) == _verdicts(want), (n, [t.state for t in steps])
            assert (got.written, got.duplicates) == (want.written, want.duplicates), n
        assert _history(states.timeline(task)) == _history(reference.timeline(task)), n
        want_now, got_now = reference.current(task), states.current(task)
        assert (got_now and (got_now.state, got_now.attempt)) == (
            want_now and (want_now.state, want_now.attempt)), n


def _verdicts(result: RecordResult) -> list[tuple[str, State | None, State | None]]:
    return [(r.transition.id, r.previous, r.following) for r in result.rejected]


def _history(timeline: list[Transition]) -> list[tuple[State, int, int]]:
    return [(t.state, t.attempt, round(t.at * 1e6)) for t in timeline]
