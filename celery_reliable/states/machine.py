"""The task lifecycle of DESIGN §4 as one table of legal transitions.

The table is the single source of truth: the memory and SQL state stores call
:func:`check`, and the Redis store's Lua scripts start with :data:`LEGAL`
rendered as Lua (:func:`lua_table`), so the three backends cannot disagree.

::

    (first) ─> PENDING ─> RECEIVED ─> STARTED ─> SUCCEEDED
                  │          │           ├─> RETRY_SCHEDULED ─> (PENDING | RECEIVED ...)
                  │          │           ├─> FAILED ─> DEAD_LETTERED ─> REPLAYED ─> PENDING ...
                  │          │           └─> RESCUED (lease lapsed) ─> RECEIVED ...
                  │          ├─> DEFERRED (breaker, budget, key busy, store down) ─> RECEIVED ...
                  │          └─> DEDUPLICATED
                  ├─> DEDUPLICATED (producer-side dedupe)
                  └─> EXPIRED | REVOKED ─> DEAD_LETTERED

A task's first recorded transition is PENDING, or RECEIVED when its producer
does not record (``send_task``, an older client).  Terminal states
(SUCCEEDED, DEDUPLICATED, DEAD_LETTERED) are where the engine leaves a task;
only an operator's replay moves a dead letter on; a repeat of a finished task
(published again under its id, delivered again) is recorded as an echo
(:data:`ECHOES`) that does not move it.  An illegal transition is a bug
somewhere: the recorder reports it and the store does not write it.  Which
transition is judged against which is the job of
:mod:`celery_reliable.states.ordering` (happened-order, not arrival).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from celery_reliable.errors import ReliableError


class State(str, enum.Enum):
    PENDING = "PENDING"
    """Published (and persisted), waiting on the broker."""
    RECEIVED = "RECEIVED"
    """A worker took the message and decided what to do with this copy."""
    STARTED = "STARTED"
    """The claim succeeded: the body runs under a lease."""
    SUCCEEDED = "SUCCEEDED"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    """An attempt failed transiently; the next one is published with a countdown."""
    DEFERRED = "DEFERRED"
    """Not run now (breaker open, budget spent, key busy, store down); published again later."""
    FAILED = "FAILED"
    """The last attempt failed for good (permanent error, attempts exhausted, rejected)."""
    DEAD_LETTERED = "DEAD_LETTERED"
    REPLAYED = "REPLAYED"
    """An operator replayed a dead letter; it waits for a worker again."""
    DEDUPLICATED = "DEDUPLICATED"
    """Not run: its idempotency key had already succeeded (or is in flight, at publish)."""
    EXPIRED = "EXPIRED"
    """Its ``expires``/deadline passed before it ran; dead-lettered next."""
    RESCUED = "RESCUED"
    """The rescuer republished it (broker lost the message, or its worker died)."""
    REVOKED = "REVOKED"
    """An operator revoked it; dead-lettered next."""


class UnknownState(ReliableError, ValueError):
    """A state name that is not in the lifecycle (a CLI argument, a query parameter)."""


TERMINAL = frozenset({State.SUCCEEDED, State.DEDUPLICATED, State.DEAD_LETTERED})
NON_TERMINAL = frozenset(State) - TERMINAL
#: States a task may be recorded in first.
INITIAL = frozenset({State.PENDING, State.RECEIVED})
#: What a repeat of a finished task records: published again under its id (PENDING),
#: delivered again (RECEIVED, then DEDUPLICATED).  After a terminal state these are
#: *echoes*, kept in the history but never a move (see
#: :func:`celery_reliable.states.ordering.settle`): the last echo (None: none, or
#: a DEDUPLICATED that closed one) -> the echoes that may follow it.
ECHOES: Mapping[State | None, frozenset[State]] = {
    None: frozenset({State.PENDING, State.RECEIVED, State.DEDUPLICATED}),
    State.PENDING: frozenset({State.PENDING, State.RECEIVED, State.DEDUPLICATED}),
    State.RECEIVED: frozenset({State.DEDUPLICATED}),
}

S = State
# Waiting on the broker: a worker may receive it, the rescuer may republish it
# or dead-letter it (never received, undecodable), it may expire or be revoked.
_WAITING_EXITS = {S.RECEIVED, S.RESCUED, S.EXPIRED, S.REVOKED, S.DEAD_LETTERED}

#: state -> the states it may move to.  Read it as the lifecycle's specification.
LEGAL: Mapping[State, frozenset[State]] = {
    S.PENDING: frozenset(_WAITING_EXITS | {S.DEDUPLICATED}),
    # RECEIVED is recorded together with what this copy does next.  Dead-lettered
    # straight from here: key conflict, lost too often, retry budget refused.
    S.RECEIVED: frozenset({
        S.STARTED, S.DEFERRED, S.DEDUPLICATED, S.RESCUED, S.EXPIRED, S.REVOKED, S.DEAD_LETTERED,
    }),
    # RECEIVED again: its worker died and the broker redelivered it before the
    # rescuer did.  EXPIRED: the lease lapsed after the task's expiry.
    S.STARTED: frozenset({
        S.SUCCEEDED, S.RETRY_SCHEDULED, S.FAILED, S.RESCUED, S.RECEIVED, S.REVOKED, S.EXPIRED,
    }),
    # PENDING: republished through a producer that records its publishes.
    S.RETRY_SCHEDULED: frozenset(_WAITING_EXITS | {S.PENDING}),
    S.DEFERRED: frozenset(_WAITING_EXITS | {S.PENDING}),
    S.RESCUED: frozenset(_WAITING_EXITS),
    S.REPLAYED: frozenset(_WAITING_EXITS | {S.PENDING}),
    S.FAILED: frozenset({S.DEAD_LETTERED}),
    S.EXPIRED: frozenset({S.DEAD_LETTERED}),
    S.REVOKED: frozenset({S.DEAD_LETTERED}),
    S.DEAD_LETTERED: frozenset({S.REPLAYED}),
    S.SUCCEEDED: frozenset(),
    S.DEDUPLICATED: frozenset(),
}


def check(previous: State | None, new: State) -> bool:
    """May a task in ``previous`` (None: nothing recorded yet) move to ``new``?"""
    if previous is None:
        return new in INITIAL
    return new in LEGAL[previous]


def parse(name: str | State) -> State:
    """A state from its name, case-insensitively (``started`` -> STARTED)."""
    if isinstance(name, State):
        return name
    try:
        return State(name.strip().upper())
    except ValueError:
        raise UnknownState(
            f"unknown task state {name!r}; known: {', '.join(s.value for s in State)}"
        ) from None


def parse_many(names: Iterable[str | State] | None) -> frozenset[State] | None:
    return None if names is None else frozenset(parse(n) for n in names)


def lua_table() -> str:
    """:data:`LEGAL`, :data:`TERMINAL` and :data:`ECHOES` (as ``ECHO``) as Lua (prepended
    to the Redis record script); ``LEGAL['']`` holds :data:`INITIAL`, ``ECHO['']`` the
    echoes right after a terminal state."""
    rows = []
    for state, targets in sorted(LEGAL.items()):
        inner = ", ".join(f"{t.value}=true" for t in sorted(targets))
        rows.append(f"  {state.value}={{{inner}}},")
    initial = ", ".join(f"{s.value}=true" for s in sorted(INITIAL))
    rows.append(f"  [''] = {{{initial}}},")
    terminal = ", ".join(f"{s.value}=true" for s in sorted(TERMINAL))
    echoes = []
    for echo, targets in sorted(ECHOES.items(), key=lambda item: item[0] or ""):
        inner = ", ".join(f"{t.value}=true" for t in sorted(targets))
        name = echo.value if echo else ""
        echoes.append(f"  ['{name}'] = {{{inner}}},")
    return ("local LEGAL = {\n" + "\n".join(rows) + "\n}\n"
            + f"local TERMINAL = {{{terminal}}}\n"
            + "local ECHO = {\n" + "\n".join(echoes) + "\n}\n")
