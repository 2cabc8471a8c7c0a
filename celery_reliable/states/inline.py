"""A task's state transitions written by the store calls that cause them.

Why: with recording on, a worker's transitions went through the recorder's
thread, which wrote them in scripts of about 25 transitions.  On a store and
state store sharing one Redis, each such script held the server for 300-400 us,
and the worker's own round trips (claim, broker acknowledgement, next message)
waited behind it: recording cost a solo worker 45-145 us per task, against
15 us with the states on a Redis server of their own (docs/performance.md).
Written by the claim and completion scripts the worker runs anyway, the same
transitions cost no round trip, no thread and no long script.

Used when the state store is on the task store's Redis (``reliable_state_store_url``
unset or the same URL), the server is not a Redis Cluster node (the states live
under other hash tags than the key), recording is on, and a worker runs the task
(not eager).  Then:

* RECEIVED and STARTED ride on the claim, and are written only when it answers
  "claimed".  Any other answer (a takeover records the lost count with its
  STARTED; a duplicate is not started) is recorded as before, by the recorder.
* SUCCEEDED rides on the completion.

A transition rides only when the recorder holds no earlier one of the same
task: written first, it would find the task without its predecessors and be
refused as illegal.  (A transition of another process that arrives late, such
as the producer's PENDING, is fitted in by its time: see record_lib.lua.)

Nothing is lost when a ride fails: a call made again the ordinary way (its
connection dropped before it was written) carries no ride, and a rider that
failed inside the script is counted as a write error; either way the same
transitions, with the same ids, go to the recorder, which skips what was
written already.  The store's own work never depends on the rider: the
rider runs after it, under ``pcall`` (``stores/lua/ride_tail.lua``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from celery_reliable.states.machine import State
from celery_reliable.states.model import Transition
from celery_reliable.states.recorder import Recorder

if TYPE_CHECKING:  # only built on a Redis store (redis is an optional extra)
    from celery_reliable.states.stores.redis import RedisStateStore
    from celery_reliable.stores.base import Ride

#: The status of the claim's reply on which RECEIVED and STARTED are written.
CLAIMED = "claimed"


class Riding:
    """Transitions on their way inside a store call, and what became of them."""

    def __init__(
        self, recorder: Recorder, store: RedisStateStore, transitions: Sequence[Transition],
        ride: Ride,
    ) -> None:
        self.recorder = recorder
        self.store = store
        self.transitions = transitions
        self.ride = ride

    def settle(self) -> bool:
        """Once the call's answer is in: True when the transitions are taken care of
        (written by the call, or handed to the recorder after its rider failed);
        False when they did not ride, and the caller records what it has to."""
        reply = self.ride.reply
        if reply is None:
            return False
        if isinstance(reply, str):
            self.recorder.write_failed(reply)
            self.hand_over()
            return True
        self.recorder.account(self.store.result_of(reply, self.transitions))
        return True

    def hand_over(self) -> None:
        """Give the transitions to the recorder (they did not ride: the call failed)."""
        for transition in self.transitions:
            self.recorder.add(transition)


class InlineStates:
    """Builds the rides of one app's worker (see the module's docstring)."""

    def __init__(self, recorder: Recorder, store: RedisStateStore) -> None:
        self.recorder = recorder
        self.store = store

    def on_claim(
        self, task_id: str, name: str, key: str, worker: str | None, attempt: int
    ) -> Riding | None:
        """RECEIVED and STARTED, written if the claim answers "claimed"."""
        return self._riding(task_id, name, key, worker, attempt,
                            (State.RECEIVED, State.STARTED), CLAIMED)

    def on_complete(
        self, task_id: str, name: str, key: str, worker: str | None, attempt: int
    ) -> Riding | None:
        """SUCCEEDED, written whatever the completion answers (the body succeeded)."""
        return self._riding(task_id, name, key, worker, attempt, (State.SUCCEEDED,), "")

    def _riding(
        self, task_id: str, name: str, key: str, worker: str | None, attempt: int,
        states: Sequence[State], when: str,
    ) -> Riding | None:
        if self.recorder.holds(task_id):
            # Earlier transitions of the task wait in the recorder (a takeover's STARTED,
            # the RECEIVED of a deferred copy): these must not be written before them.
            return None
        made = [self.recorder.make(task_id, name, key, state, attempt=attempt, worker=worker)
                for state in states]
        transitions = [t for t in made if t is not None]
        if len(transitions) != len(states):
            return None  # recording was turned off
        return Riding(self.recorder, self.store, transitions,
                      self.store.ride(transitions, when))
