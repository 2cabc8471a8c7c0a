"""The harness: the user's app on a store of its own for one test, and assertions that
read like the guarantees.

Why a fresh store per test: the store of an app lives in the app's runtime, one per
app and process (:mod:`celery_reliable.runtime`).  A Django or Flask app is a module
global that outlives every test, so its ``memory://`` store kept the keys of the
previous ``TestCase`` (a "sent once" test passed or failed by test order), and a
test run against the development store skipped tasks whose keys it had already
marked done.  :func:`use_store` resets the runtime, points the app at the test's
store under a random key prefix (SQL: tables of their own, migrated, dropped
after), and puts the app's settings back at the end.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias, Union

from celery import Celery
from celery.result import AsyncResult

from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.model import Entry, ReplayResult
from celery_reliable.errors import ReliableError
from celery_reliable.runtime import reset, runtime
from celery_reliable.states import TERMINAL, State, TaskState, Transition, queries, recorder
from celery_reliable.states.runtime import state_store
from celery_reliable.states.stores.memory import MemoryStateStore
from celery_reliable.stores import open_store
from celery_reliable.stores.memory import MemoryStore
from celery_reliable.testing import report
from celery_reliable.testing.clock import Clock
from celery_reliable.testing.overrides import Overrides
from celery_reliable.testing.worker import MEMORY_POLLING_INTERVAL, running_worker

logger = logging.getLogger("celery_reliable.testing")

#: The environment variable naming the store tests run against (else ``memory://``).
STORE_URL_ENV = "CELERY_RELIABLE_TEST_STORE_URL"
DEFAULT_STORE_URL = "memory://"
#: Seconds an assertion waits for the task to reach the state it expects.
DEFAULT_TIMEOUT = 10.0

TaskRef: TypeAlias = Union[AsyncResult, str]  # noqa: UP007  (AsyncResult is untyped)
"""A task as a test holds it: the result handle ``delay()`` returned, or its id."""


def store_url_from_env() -> str:
    return os.environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL


class Harness:
    """One test's view of an app on its own store: a worker, a clock, the DLQ, and
    assertions (each waits up to ``timeout`` seconds for the task to get there)."""

    __test__ = False  # not a test class, whatever pytest's collection rules

    def __init__(self, app: Celery, store_url: str, key_prefix: str, clock: Clock,
                 eager: bool) -> None:
        self.app = app
        self.store_url = store_url
        self.key_prefix = key_prefix
        self.clock = clock
        self.eager = eager
        self._workers = 0

    @property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.app)

    # -- running -----------------------------------------------------------------------
    @contextmanager
    def worker(self, **options: Any) -> Iterator[Any]:
        """A real worker for this app in a thread of the test process (Celery's
        ``TestWorkController``), on the app's broker; options go to the worker
        (``pool``, ``concurrency``, ``queues``...).  Stopped when the block ends."""
        overrides = Overrides(self.app)
        conf = self.app.conf
        if str(conf.broker_url or "").startswith("memory://"):
            transport = dict(conf.broker_transport_options or {})
            if "polling_interval" not in transport:
                transport["polling_interval"] = MEMORY_POLLING_INTERVAL
                overrides.celery("broker_transport_options", transport)
        try:
            with running_worker(self.app, **options) as worker:
                self._workers += 1
                try:
                    yield worker
                finally:
                    self._workers -= 1
        finally:
            overrides.restore()

    def flush(self) -> None:
        """Write the transitions this process has buffered (the recorder writes every
        0.2 s by default); the assertions call it."""
        recorder(self.app).flush(force=True)

    # -- reading -----------------------------------------------------------------------
    def timeline(self, task: TaskRef | None = None, *, key: str | None = None
                 ) -> list[Transition]:
        """What is recorded so far for the task (or every task of ``key``)."""
        self._check_states()
        self.flush()
        if key is not None:
            return queries.timeline(self.app, key=key)
        return queries.timeline(self.app, task_id=_task_id(task))

    def wait(self, task: TaskRef, timeout: float = DEFAULT_TIMEOUT) -> TaskState:
        """Wait until the task is in a terminal state (SUCCEEDED, DEDUPLICATED,
        DEAD_LETTERED); its state.  Fails with its timeline after ``timeout``."""
        task_id = _task_id(task)
        found: TaskState | None = self._until(lambda: self._terminal(task_id), timeout)
        if found is None:
            timeline = self.timeline(task_id)
            raise AssertionError(self._not_finished(_named(task_id, timeline), timeline,
                                                    timeout))
        return found

    # -- assertions ----------------------------------------------------------------------
    def assert_ran_once(self, task: TaskRef | None = None, *, key: str | None = None,
                        timeout: float = DEFAULT_TIMEOUT) -> list[Transition]:
        """The task's idempotency key (or ``key``) ran to success exactly once, over
        every publish, copy, retry and replay of it; the key's timeline.  Waits until
        every task of the key is in a terminal state."""
        if (task is None) == (key is None):
            raise TypeError("assert_ran_once needs a task (its result or id) or key=, not both")
        if key is None:
            key = self.wait(task, timeout).key
        if self._until(lambda: self._key_finished(key), timeout) is None:
            raise AssertionError(self._not_finished(f"key {key!r}", self.timeline(key=key),
                                                    timeout))
        timeline = self.timeline(key=key)
        runs = sum(t.state is State.SUCCEEDED for t in timeline)
        if runs != 1:
            tasks = len({t.task_id for t in timeline})
            raise AssertionError(
                f"expected key {key!r} to run to success once; it succeeded {runs} times "
                f"({tasks} task(s)). Its timeline:\n{report.timeline_table(timeline)}")
        return timeline

    def assert_timeline(self, task: TaskRef, *states: str | State,
                        timeout: float = DEFAULT_TIMEOUT) -> list[Transition]:
        """The task's timeline is exactly ``states`` (names or :class:`State`; one string
        with arrows works too: ``"RECEIVED → STARTED → SUCCEEDED"``).  The PENDING of the
        publish may be left out (eager runs have none).  Waits until the timeline matches
        or the task is in a terminal state."""
        expected = _states(states)
        task_id = _task_id(task)

        def settled() -> list[Transition] | None:
            timeline = self.timeline(task_id)
            if _matches(timeline, expected) or self._terminal(task_id) is not None:
                return timeline
            return None

        timeline = self._until(settled, timeout) or self.timeline(task_id)
        if not _matches(timeline, expected):
            raise AssertionError(
                f"timeline of {_named(task_id, timeline)} differs\n"
                f"  expected: {report.ARROW.join(s.value for s in expected)}\n"
                f"  actual:   {report.states_line(timeline)}\n"
                f"{report.timeline_table(timeline)}")
        return timeline

    def assert_dead_lettered(self, task: TaskRef, reason: str | None = None, *,
                             error: str | None = None, timeout: float = DEFAULT_TIMEOUT
                             ) -> Entry:
        """The DLQ holds the task, with ``reason`` (``permanent_error``,
        ``attempts_exhausted``...) and an error containing ``error``, if given; its
        entry."""
        task_id = _task_id(task)
        self._until(lambda: self._terminal(task_id), timeout)
        entry = self.dead_letters.get(task_id)
        wanted = f" with reason {reason!r}" if reason else ""
        if entry is None:
            listed = self.dead_letters.list(limit=report.MAX_ENTRIES + 1).entries
            timeline = self.timeline(task_id)
            raise AssertionError(
                f"expected the DLQ to hold {_named(task_id, timeline)}{wanted}; it has no "
                f"entry for that task.\n{report.entries_block(listed, len(listed) <= 20)}\n"
                f"its timeline:\n{report.timeline_table(timeline)}")
        wrong = []
        if reason is not None and entry.reason != reason:
            wrong.append(f"reason {entry.reason!r}, not {reason!r}")
        if error is not None and error not in (entry.error or ""):
            wrong.append(f"error {entry.error!r}, which does not contain {error!r}")
        if wrong:
            raise AssertionError(
                f"the DLQ holds {entry.name}[{task_id}] with {' and '.join(wrong)}:\n"
                f"{report.entry_line(entry)}\nits timeline:\n"
                f"{report.timeline_table(self.timeline(task_id))}")
        return entry

    def replay(self, task: TaskRef, **options: Any) -> ReplayResult:
        """Replay the task's dead letter (``DeadLetters.replay``; options such as
        ``to_queue`` or ``force`` pass through); fails saying why when it was not
        replayed.  A worker runs the replayed task (in eager mode too: replay publishes
        to the broker)."""
        task_id = _task_id(task)
        result = self.dead_letters.replay([task_id], **options)
        self.flush()
        if task_id not in result.replayed:
            why = (result.refused.get(task_id) or result.failed.get(task_id)
                   or ("already replayed (force=True replays it again)"
                       if task_id in result.skipped else "it is not in the DLQ"))
            raise AssertionError(f"task {task_id} was not replayed: {why}")
        return result

    # -- helpers ---------------------------------------------------------------------------
    def _check_states(self) -> None:
        if not runtime(self.app).settings.state_enabled:
            spell = runtime(self.app).spelling
            raise AssertionError(
                f"{spell('state_enabled')} is off for this app: nothing records the task "
                "states the harness reads; turn it on for the tests")

    def _terminal(self, task_id: str) -> TaskState | None:
        self.flush()
        current = queries.current(self.app, task_id)
        return current if current is not None and current.state in TERMINAL else None

    def _key_finished(self, key: str) -> bool | None:
        task_ids = {t.task_id for t in self.timeline(key=key)}
        if task_ids and all(self._terminal(t) is not None for t in task_ids):
            return True
        return None

    def _until(self, found: Any, timeout: float) -> Any:
        """``found()`` once it is not None, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = found()
            if value is not None or time.monotonic() >= deadline:
                return value
            time.sleep(0.02)

    def _not_finished(self, what: str, timeline: Sequence[Transition], timeout: float) -> str:
        hint = ""
        if not self.eager and self._workers == 0:
            hint = (" No worker is running: use the reliable_worker fixture (or "
                    "`with reliable.worker():`), or eager mode (reliable_eager).")
        return (f"{what} did not reach a terminal state within {timeout} s "
                f"(now: {report.states_line(timeline)}).{hint}\n"
                f"{report.timeline_table(timeline)}")


@contextmanager
def use_store(app: Celery, url: str | None = None, *, eager: bool = False
              ) -> Iterator[Harness]:
    """Run ``app`` on a fresh store for the block; the :class:`Harness` of it.

    ``url``: ``memory://`` (the default; the ``CELERY_RELIABLE_TEST_STORE_URL``
    environment variable overrides it) or a real store, isolated by a random key
    prefix (SQL: tables of their own, created now and dropped at the end).  The
    state store is the same store.  ``eager``: ``task_always_eager`` for the block.
    The app's settings are restored at the end and its runtime reset, so the next
    test starts empty.
    """
    url = url or store_url_from_env()
    prefix = "t" + uuid.uuid4().hex[:10]
    reset(app)
    overrides = Overrides(app)
    overrides.reliable("store_url", url)
    overrides.reliable("key_prefix", prefix)
    overrides.reliable("state_store_url", None)
    if eager:
        overrides.celery("task_always_eager", True)
    try:
        store = runtime(app).store
        if not isinstance(store, MemoryStore):
            store.migrate()
        clock = Clock(adjustable=isinstance(store, MemoryStore), store_url=url)
        if isinstance(store, MemoryStore):
            store.clock = clock
        states = state_store(app)
        if isinstance(states, MemoryStateStore):
            states.clock = clock
        yield Harness(app, url, prefix, clock, eager)
    finally:
        try:
            reset(app)
            _drop(url, prefix)
        finally:
            overrides.restore()


def _drop(url: str, prefix: str) -> None:
    """Drop the test's prefix, once the app's runtime is closed: its last writes (the
    buffered states, the retry budget's pending deposits) land before, not after.
    Not for memory://: the reset threw that store away."""
    if url.startswith("memory:"):
        return
    store = open_store(url, prefix=prefix)
    try:
        store.drop()
    except ReliableError as exc:  # the test's outcome matters more than its litter
        logger.warning("celery_reliable.testing: could not drop the test's store prefix "
                       "%s in %s: %s", prefix, url, exc)
    finally:
        store.close()


def _task_id(task: TaskRef | None) -> str:
    if isinstance(task, AsyncResult):
        return str(task.id)
    if isinstance(task, str) and task:
        return task
    raise TypeError(f"expected a task's result (what delay() returns) or its id, got {task!r}")


def _states(states: Sequence[str | State]) -> list[State]:
    names: list[str | State] = []
    for s in states:
        if isinstance(s, str) and not isinstance(s, State):
            names += [p.strip() for p in s.replace("->", "→").split("→") if p.strip()]
        else:
            names.append(s)
    out = []
    for name in names:
        try:
            out.append(State(name if isinstance(name, State) else name.upper()))
        except ValueError:
            known = ", ".join(s.value for s in State)
            raise ValueError(f"unknown state {name!r}; the states are {known}") from None
    return out


def _matches(timeline: Sequence[Transition], expected: Sequence[State]) -> bool:
    actual = [t.state for t in timeline]
    if actual == list(expected):
        return True
    return bool(actual) and actual[0] is State.PENDING and expected[:1] != [State.PENDING] \
        and actual[1:] == list(expected)


def _named(task_id: str, timeline: Sequence[Transition]) -> str:
    if not timeline:
        return f"task {task_id}"
    return f"{timeline[0].name}[{task_id}] (key {timeline[0].key!r})"
