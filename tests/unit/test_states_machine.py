"""The lifecycle of DESIGN §4: legal paths accepted, illegal ones refused, every path ends."""

from __future__ import annotations

import itertools
from collections import deque

import lupa
import pytest

from celery_reliable.states import Transition
from celery_reliable.states.machine import (
    ECHOES,
    INITIAL,
    LEGAL,
    NON_TERMINAL,
    TERMINAL,
    State,
    UnknownState,
    check,
    lua_table,
    parse,
    parse_many,
)
from celery_reliable.states.ordering import Settled, admit, in_order, settle

S = State

# What the engine does (task/, rescue.py, worker signals), each from a task's first record.
PATHS = {
    "succeeds": [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED],
    "retried then succeeds": [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.RECEIVED,
                              S.STARTED, S.RETRY_SCHEDULED, S.RECEIVED, S.STARTED, S.SUCCEEDED],
    "retry republished through a recording producer": [
        S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.PENDING, S.RECEIVED, S.STARTED,
        S.SUCCEEDED],
    "deferred (breaker, budget, key busy, store down)": [
        S.PENDING, S.RECEIVED, S.DEFERRED, S.RECEIVED, S.DEFERRED, S.RECEIVED, S.STARTED,
        S.SUCCEEDED],
    "fails, dead-lettered, replayed": [
        S.PENDING, S.RECEIVED, S.STARTED, S.FAILED, S.DEAD_LETTERED, S.REPLAYED, S.PENDING,
        S.RECEIVED, S.STARTED, S.SUCCEEDED],
    "deduplicated at publish": [S.PENDING, S.DEDUPLICATED],
    "deduplicated at the worker": [S.PENDING, S.RECEIVED, S.DEDUPLICATED],
    "expired while queued": [S.PENDING, S.EXPIRED, S.DEAD_LETTERED],
    "expired when received": [S.PENDING, S.RECEIVED, S.EXPIRED, S.DEAD_LETTERED],
    "worker died, rescued": [S.PENDING, S.RECEIVED, S.STARTED, S.RESCUED, S.RECEIVED, S.STARTED,
                             S.SUCCEEDED],
    "worker died, broker redelivered first": [S.PENDING, S.RECEIVED, S.STARTED, S.RECEIVED,
                                              S.STARTED, S.SUCCEEDED],
    "broker lost it, never received": [S.PENDING, S.RESCUED, S.RESCUED, S.DEAD_LETTERED],
    "lost retry rescued": [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.RESCUED,
                           S.RECEIVED, S.STARTED, S.SUCCEEDED],
    "revoked": [S.PENDING, S.REVOKED, S.DEAD_LETTERED],
    "revoked and terminated while running": [S.PENDING, S.RECEIVED, S.STARTED, S.REVOKED,
                                             S.DEAD_LETTERED],
    "key conflict, lost too often, budget refused": [S.PENDING, S.RECEIVED, S.DEAD_LETTERED],
    "producer that does not record": [S.RECEIVED, S.STARTED, S.SUCCEEDED],
}


@pytest.mark.parametrize("path", list(PATHS.values()), ids=list(PATHS))
def test_every_path_of_the_lifecycle_is_legal_and_ends_terminal(path: list[State]) -> None:
    assert check(None, path[0])
    for previous, new in itertools.pairwise(path):
        assert check(previous, new), f"{previous.value} -> {new.value}"
    assert path[-1] in TERMINAL


@pytest.mark.parametrize(("previous", "new"), [
    (S.SUCCEEDED, S.STARTED),
    (S.DEAD_LETTERED, S.SUCCEEDED),
    (S.DEAD_LETTERED, S.RECEIVED),
    (S.DEDUPLICATED, S.RECEIVED),
    (S.PENDING, S.SUCCEEDED),
    (S.PENDING, S.STARTED),
    (S.RECEIVED, S.SUCCEEDED),
    (S.FAILED, S.RETRY_SCHEDULED),
    (S.STARTED, S.STARTED),
    (S.PENDING, S.PENDING),
    (None, S.STARTED),
    (None, S.SUCCEEDED),
    (None, S.DEAD_LETTERED),
])
def test_illegal_transitions_are_refused(previous: State | None, new: State) -> None:
    assert not check(previous, new)


def test_terminal_states_are_left_only_by_an_operator_replay() -> None:
    assert {S.SUCCEEDED, S.DEDUPLICATED, S.DEAD_LETTERED} == TERMINAL
    assert LEGAL[S.SUCCEEDED] == LEGAL[S.DEDUPLICATED] == frozenset()
    assert LEGAL[S.DEAD_LETTERED] == {S.REPLAYED}
    assert {S.PENDING, S.RECEIVED} == INITIAL


def test_every_non_terminal_state_can_reach_a_terminal_one() -> None:
    for start in NON_TERMINAL:
        seen, todo = {start}, deque([start])
        while todo:
            for following in LEGAL[todo.popleft()] - seen:
                seen.add(following)
                todo.append(following)
        assert seen & TERMINAL, f"{start.value} cannot end"


def test_every_state_is_in_the_table_and_reachable_from_a_first_record() -> None:
    assert set(LEGAL) == set(State)
    reached, todo = set(INITIAL), deque(INITIAL)
    while todo:
        for following in LEGAL[todo.popleft()] - reached:
            reached.add(following)
            todo.append(following)
    assert reached == set(State)


def _steps(*steps: tuple[State, int, float]) -> list[Transition]:
    return [Transition("t", "n", "k", state, attempt, at=at, id=f"{i:032x}")
            for i, (state, attempt, at) in enumerate(steps)]


def test_happened_order_is_generation_attempt_then_an_attempts_pending_then_time() -> None:
    steps = _steps(
        (S.RECEIVED, 1, 2.0), (S.PENDING, 1, 3.0),  # the producer's clock runs ahead
        (S.RETRY_SCHEDULED, 1, 6.0), (S.RECEIVED, 2, 5.0),  # stamped after attempt 2 began
        (S.STARTED, 1, 4.0), (S.FAILED, 2, 7.0), (S.DEAD_LETTERED, 2, 8.0),
        (S.REPLAYED, 1, 9.0), (S.RECEIVED, 1, 10.0), (S.PENDING, 1, 11.0),
        (S.SUCCEEDED, 1, 12.0), (S.PENDING, 1, 13.0),  # published again: by its time
    )
    assert [(t.state, t.attempt) for t in in_order(steps)] == [
        (S.PENDING, 1), (S.RECEIVED, 1), (S.STARTED, 1), (S.RETRY_SCHEDULED, 1),
        (S.RECEIVED, 2), (S.FAILED, 2), (S.DEAD_LETTERED, 2),
        (S.REPLAYED, 1), (S.PENDING, 1), (S.RECEIVED, 1), (S.SUCCEEDED, 1), (S.PENDING, 1),
    ]


def test_settle_keeps_echoes_of_a_finished_task_and_flags_what_is_illegal() -> None:
    done = [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED]
    echoes = [S.PENDING, S.RECEIVED, S.DEDUPLICATED, S.RECEIVED, S.DEDUPLICATED]
    ordered = _steps(*((state, 1, float(i)) for i, state in enumerate(done + echoes)))
    assert settle(ordered) == Settled(current=3, illegal=())
    bad = _steps(*((state, 1, float(i)) for i, state in enumerate(
        [S.RECEIVED, S.DEDUPLICATED, S.RECEIVED, S.STARTED, S.SUCCEEDED])))
    assert settle(bad) == Settled(current=1, illegal=(3, 4))  # an echo that runs: a bug


def test_admit_refuses_the_new_transition_that_breaks_a_recorded_one() -> None:
    history = _steps((S.PENDING, 1, 1.0), (S.RECEIVED, 1, 2.0), (S.STARTED, 1, 3.0))
    late = _steps((S.SUCCEEDED, 1, 1.5))
    late[0].id = "f" * 32
    admitted = admit(history, late)
    assert admitted.accepted == []
    assert [(r.previous, r.transition.state, r.following) for r in admitted.rejected] == [
        (S.PENDING, S.SUCCEEDED, S.RECEIVED)]
    assert admitted.current is history[2]


def test_the_lua_echo_table_says_what_echoes_says() -> None:
    lua = lupa.LuaRuntime()
    echo = lua.execute(lua_table() + "return function(a, b) return ECHO[a][b] == true end")
    for last in (None, S.PENDING, S.RECEIVED):
        for new in State:
            assert echo(last.value if last else "", new.value) == (new in ECHOES[last])


def test_the_lua_table_says_what_check_says() -> None:
    lua = lupa.LuaRuntime()
    legal = lua.execute(lua_table() + "return function(a, b) local r = LEGAL[a] "
                        "return r ~= nil and r[b] == true end")
    for previous in [None, *State]:
        for new in State:
            name = "" if previous is None else previous.value
            assert legal(name, new.value) == check(previous, new), (previous, new)


def test_states_parse_by_name_in_any_case() -> None:
    assert parse("started") is S.STARTED
    assert parse(" Dead_Lettered ") is S.DEAD_LETTERED
    assert parse_many(["pending", S.RECEIVED]) == {S.PENDING, S.RECEIVED}
    assert parse_many(None) is None
    with pytest.raises(UnknownState, match="unknown task state 'STARTD'; known: PENDING"):
        parse("STARTD")
