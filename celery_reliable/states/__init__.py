"""Every transition recorded (G5): the lifecycle, the recorder, the state stores, queries.

``recorder(app).transition(...)`` is what tasks and signal handlers call;
:mod:`celery_reliable.states.queries` is what the CLI and the DLQ read.
"""

from __future__ import annotations

from celery_reliable.states.machine import INITIAL, LEGAL, TERMINAL, State, UnknownState, check
from celery_reliable.states.model import RecordResult, Rejection, Stats, TaskState, Transition
from celery_reliable.states.recorder import Recorder, flush_all
from celery_reliable.states.runtime import prune_expired, recorder, reset, state_store
from celery_reliable.states.stores import StateStore, open_state_store

__all__ = [
    "INITIAL",
    "LEGAL",
    "TERMINAL",
    "RecordResult",
    "Recorder",
    "Rejection",
    "State",
    "StateStore",
    "Stats",
    "TaskState",
    "Transition",
    "UnknownState",
    "check",
    "flush_all",
    "open_state_store",
    "prune_expired",
    "recorder",
    "reset",
    "state_store",
]
