"""Redis state store: Lua scripts of about 25 transitions, one round trip each.

The record script applies the rules of :mod:`celery_reliable.states.ordering`:
a task's new transitions that simply follow its current state are appended
(the usual case: no read of its history); any other (late, out of order, after
a terminal state) are fitted into the whole history, read in the same script.

Layout, for prefix ``reliable`` and shard ``S`` (crc32 of the task id modulo
``reliable_redis_shards``); times are microseconds, so scores are exact::

    {reliable:st:S}:c:<task_id>  current state (hash: state, since, name, key, attempt, worker,
                                 w0: the task's first worker)
    {reliable:st:S}:h:<task_id>  history: sorted set of entries scored by time (see _entry)
    {reliable:st:S}:i:<STATE>    tasks in that state, scored by when they entered it
                                 (unfinished states only: see below)
    {reliable:st:S}:k:<key>      tasks of an idempotency key, scored by their last transition
    {reliable:st:S}:n:<minute>   counts: hash "<STATE>\\t<task name>" -> transitions that minute

A task's current state, history and counts expire ``retention`` after their
last write.  Finished tasks (SUCCEEDED, DEDUPLICATED, DEAD_LETTERED) are in no
state index: nothing asks for them by state, and such an index would hold every
task of the retention period.  :meth:`prune` removes the index entries of
unfinished tasks that expired (run it periodically: the rescuer does).  "Stuck"
is a ZRANGEBYSCORE on the state indexes.  Everything one script touches shares
the shard's hash tag, so the store works on Redis Cluster; a batch spanning
shards is a script per shard.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from importlib import resources
from typing import Any, cast

from redis.commands.core import Script

from celery_reliable.states.machine import State, lua_table
from celery_reliable.states.model import (
    RecordResult,
    Rejection,
    Stats,
    TaskState,
    Transition,
    load_detail,
    minute_of,
    stats_range,
)
from celery_reliable.states.ordering import in_order, merge_timelines
from celery_reliable.states.stores.base import SharedStoreStateStore, by_task, stuck_states
from celery_reliable.stores.base import Store
from celery_reliable.stores.redis import RedisStore
from celery_reliable.stores.redis_base import guarded

#: Transitions per record script, one round trip each.  Redis runs nothing else while
#: a script runs, and this one takes 15-30 us per transition: a flush of hundreds of
#: transitions in one script held every other client of the server (the broker, when it
#: is the same Redis) for up to 10 ms; pipelined scripts are read a few at a time, so
#: they still held it for several.  One at a time, others get in between each.
SCRIPT_ROWS = 25


def _chunks(
    transitions: Sequence[Transition], tag_of: Callable[[str], str]
) -> list[tuple[str, list[int]]]:
    """Indexes of ``transitions`` by shard, in scripts of about :data:`SCRIPT_ROWS`; a
    task's consecutive transitions stay in one script (it writes them together)."""
    by_shard: dict[str, list[list[int]]] = {}
    for i, t in enumerate(transitions):
        scripts = by_shard.setdefault(tag_of(t.task_id), [[]])
        last = scripts[-1]
        if len(last) >= SCRIPT_ROWS and transitions[last[-1]].task_id != t.task_id:
            last = []
            scripts.append(last)
        last.append(i)
    return [(tag, indexes) for tag, scripts in by_shard.items() for indexes in scripts]


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class RedisStateStore(SharedStoreStateStore):
    store: RedisStore

    def __init__(self, store: RedisStore, retention: float) -> None:
        """Borrows the connection settings (timeouts, TLS) of the store for the same URL."""
        self.store = store
        self.url = store.url
        self.safe_url = store.safe_url
        self.client = store.client
        self.retention = retention
        self.shards = store.shards
        self.tags = [f"{{{store.prefix}:st:{shard}}}:" for shard in range(self.shards)]
        self._indexed = [state.value for state in stuck_states(None)]
        self._scripts: dict[str, Script] = {
            "record": self.client.register_script(lua_table() + _codes_lua() + _lua("record")),
            "prune": self.client.register_script(_lua("prune")),
        }

    @classmethod
    def on(cls, store: Store, retention: float) -> RedisStateStore:
        assert isinstance(store, RedisStore)
        return cls(store, retention)

    def _tag(self, task_id: str) -> str:
        return self.tags[zlib.crc32(task_id.encode()) % self.shards if self.shards > 1 else 0]

    # -- writes ----------------------------------------------------------------------
    @guarded
    def record(self, transitions: Sequence[Transition]) -> RecordResult:
        written = duplicates = 0
        rejected: list[Rejection] = []
        script, retention_ms = self._scripts["record"], int(self.retention * 1000)
        for tag, indexes in _chunks(transitions, self._tag):
            # One script at a time, on the lean path of the store's calls (redis_calls.py):
            # Redis serves its other clients between two.  Each is encoded just before it
            # is sent, so this thread holds the GIL for 25 rows at a time, then waits on
            # the socket: a task's thread whose reply has come gets it back soon.  One
            # JSON argument per script: redis-py packs each argument separately, and nine
            # per transition cost more than the script itself.
            rows = json.dumps([_fields(transitions[i]) for i in indexes])
            reply = self.store.call_script(script, [tag], [retention_ms, rows])
            written += int(reply[0])
            duplicates += int(reply[1])
            for at in range(2, len(reply), 3):
                t = transitions[indexes[int(reply[at])]]
                rejected.append(Rejection(t, _state(reply[at + 1]), _state(reply[at + 2])))
        return RecordResult(written, duplicates, tuple(rejected))

    @guarded
    def prune(self, before: float, limit: int = 1000) -> int:
        pruned = 0
        for tag in self.tags:
            if pruned >= limit:
                break
            pruned += int(self._scripts["prune"](
                keys=[tag], args=[_us(before), limit - pruned, *self._indexed],
            ))
        return pruned

    # -- reads ---------------------------------------------------------------------
    @guarded
    def current(self, task_id: str) -> TaskState | None:
        values = self.client.hgetall(f"{self._tag(task_id)}c:{task_id}")
        return _current(task_id, cast(Mapping[str, str], values)) if values else None

    @guarded
    def timeline(self, task_id: str) -> list[Transition]:
        return in_order(self._timelines([task_id]))

    @guarded
    def timeline_by_key(self, key: str) -> list[Transition]:
        pipe = self.client.pipeline(transaction=False)
        for tag in self.tags:
            pipe.zrange(f"{tag}k:{key}", 0, -1)
        task_ids = sorted({task_id for ids in pipe.execute() for task_id in ids})
        found = by_task(self._timelines(task_ids))
        return merge_timelines(in_order(found.get(task_id, ())) for task_id in task_ids)

    def _timelines(self, task_ids: Sequence[str]) -> list[Transition]:
        """The histories of tasks, each in order; name, key and first worker come from
        the current state (entries leave them out: see :func:`_entry`)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            tag = self._tag(task_id)
            pipe.zrange(f"{tag}h:{task_id}", 0, -1, withscores=True)
            pipe.hmget(f"{tag}c:{task_id}", "name", "key", "w0")
        replies = pipe.execute()
        return [
            _transition(task_id, entry, score, name or "", key or "", w0 or "")
            for task_id, entries, (name, key, w0) in zip(
                task_ids, replies[::2], replies[1::2], strict=True)
            for entry, score in _scored(entries)
        ]

    @guarded
    def stuck(
        self, older_than_seconds: float, states: Collection[State] | None = None,
        limit: int = 100,
    ) -> list[TaskState]:
        cut = _us(time.time() - older_than_seconds)
        wanted = [(tag, state) for tag in self.tags for state in stuck_states(states)]
        pipe = self.client.pipeline(transaction=False)
        for tag, state in wanted:
            pipe.zrangebyscore(f"{tag}i:{state.value}", "-inf", f"({cut}", start=0, num=limit,
                               withscores=True)
        candidates = sorted(
            (score, task_id, state)
            for (_, state), found in zip(wanted, pipe.execute(), strict=True)
            for task_id, score in _scored(found)
        )[:limit]
        for _, task_id, _ in candidates:
            pipe.hgetall(f"{self._tag(task_id)}c:{task_id}")
        return [
            _current(task_id, values)
            for (_, task_id, state), values in zip(candidates, pipe.execute(), strict=True)
            # an entry left by a task that expired (prune removes it) is not the task now
            if values.get("state") == state.value
        ]

    @guarded
    def stats(self, window_seconds: float) -> Stats:
        first, last = stats_range(window_seconds, time.time())
        pipe = self.client.pipeline(transaction=False)
        for tag in self.tags:
            for minute in range(first, last + 1):
                pipe.hgetall(f"{tag}n:{minute}")
        counts: dict[str, dict[State, int]] = {}
        for bucket in pipe.execute():
            for field, n in bucket.items():
                state, _, name = field.partition("\t")
                per_state = counts.setdefault(name, {})
                per_state[State(state)] = per_state.get(State(state), 0) + int(n)
        return Stats(window_seconds, first * 60.0, counts)


def _fields(t: Transition) -> list[str]:
    """The script's fields of one transition, all strings: Lua numbers would print
    microsecond times in exponent notation and lose digits."""
    at = _us(t.at)
    return [
        _entry(t, at), t.task_id, t.name, t.key, t.state.value, str(t.attempt),
        t.worker or "", str(at), str(minute_of(t.at)),
    ]


#: An id as ``new_id`` makes it: 32 lowercase hex digits (it is written back so).
_NEW_ID = re.compile(r"[0-9a-f]{32}")
#: A state in history entries: the first three letters of its name (unique; checked).
_CODE = {state: state.value[:3] for state in State}
_OF_CODE = {code: state for state, code in _CODE.items()}
if len(_OF_CODE) != len(_CODE):  # pragma: no cover - a new state's name must not collide
    raise RuntimeError("two task states share their first three letters: give one a code")


def _codes_lua() -> str:
    """The codes as a Lua table code -> state name (prepended to the record script)."""
    pairs = ", ".join(f"{code}='{state.value}'" for state, code in sorted(_CODE.items()))
    return f"local STATE_OF_CODE = {{{pairs}}}\n"


def _entry(t: Transition, at: int) -> str:
    """A history entry, ``COD|attempt|id|error|``, scored by ``at``; the script adds
    the worker part (nothing: the task's first worker; ``=name``; ``=``: none).

    Why so terse: Redis keeps a small sorted set whose members are at most 64
    bytes (``zset-max-listpack-value``) as one listpack, about 5 times smaller
    than the skiplist it becomes otherwise.  So: the state is a three-letter
    code (``SUC`` for SUCCEEDED, see ``_CODE``); the task's name and key are left
    out (they are in its current state hash); the id's first 14 hex digits are
    the time, which is the score, and the other 18 are written as 12 base64
    characters (an id not made by ``new_id`` is kept whole after ``=``);
    ``error`` is empty unless the transition has an error or details, then JSON
    ``[type, message, detail]`` with ``|`` escaped; the worker, which may hold
    anything, comes last, and only when it is not the task's first one (kept
    once, in field ``w0`` of the current-state hash).  A success path entry is
    about 20 bytes, whatever the worker's name.
    """
    if _NEW_ID.fullmatch(t.id) and t.id.startswith(f"{at:014x}"):
        ident = base64.urlsafe_b64encode(bytes.fromhex(t.id[14:])).decode()
    elif "|" in t.id:
        raise ValueError(f"a transition id may not contain '|': {t.id!r}")
    else:
        ident = "=" + t.id
    error = ""
    if t.error_type or t.error_message or t.detail:
        error = json.dumps([t.error_type or "", t.error_message or "", t.detail_json() or ""],
                           separators=(",", ":")).replace("|", "\\u007c")
    return f"{_CODE[t.state]}|{t.attempt}|{ident}|{error}|"


def _state(value: str) -> State | None:
    return State(value) if value else None


def _scored(entries: Any) -> list[tuple[str, float]]:
    """ZRANGE ... WITHSCORES as typed pairs (redis-py's annotations cannot say it)."""
    return cast(list[tuple[str, float]], entries)


def _current(task_id: str, v: Mapping[str, str]) -> TaskState:
    return TaskState(
        task_id, v.get("name", ""), v.get("key", ""), State(v["state"]),
        int(v["since"]) / 1e6, int(v.get("attempt") or 1), v.get("worker") or None,
    )


def _transition(
    task_id: str, entry: str, score: float, name: str, key: str, first_worker: str
) -> Transition:
    """The transition of a history entry (see :func:`_entry`)."""
    code, attempt, ident, error, worker = entry.split("|", 4)
    worker = worker[1:] if worker.startswith("=") else first_worker
    at = int(score)
    etype, emsg, detail = json.loads(error) if error else ("", "", "")
    if ident.startswith("="):
        transition_id = ident[1:]
    else:
        transition_id = f"{at:014x}{base64.urlsafe_b64decode(ident).hex()}"
    return Transition(
        task_id=task_id, name=name, key=key, state=_OF_CODE[code], attempt=int(attempt),
        worker=worker or None, at=at / 1e6, error_type=etype or None,
        error_message=emsg or None, detail=load_detail(detail), id=transition_id,
    )


@functools.cache
def _lua(name: str) -> str:
    return (resources.files("celery_reliable.states.stores") / "lua" / f"{name}.lua").read_text()
