"""Redis store: every operation is one Lua script, so one round trip.

Layout, for prefix ``reliable`` and shard ``S`` (crc32 of the idempotency key
modulo ``reliable_redis_shards``)::

    {reliable:S}:k:<key>      key state (cjson array, see lua/common.lua), TTL
    {reliable:S}:t:<task_id>  task record (hash)
    {reliable:S}:due          rescue index: task id -> deadline (ms), a sorted set
    {reliable:S}:d:<task_id>  dead letter (hash: the record, the failure, replays)
    {reliable:S}:dead         dead letters: task id -> time (ms)
    {reliable:S}:dead:n:<name>, :dead:r:<reason>, :dead:e:<exception type>,
    {reliable:S}:dead:q:<queue>   the same, per filter value (listing without a scan)
    {reliable:S}:clock        the lease clock (hash: last seen, paused ms; lua/common.lua)
    {reliable}:sweeper        the one-sweeper-at-a-time lease

Everything one script touches shares the ``{reliable:S}`` hash tag, so the
store works on Redis Cluster; more shards spread the load over more slots.
Times come from the server's ``TIME``: leases do not depend on worker clocks.
Leases and rescue deadlines are on each shard's lease clock (``stores/base.py``),
which stops while nobody reaches the store: a restart or an outage that cut off
every worker lapses no lease.

This module holds the task's path (publish, claim, heartbeat, complete, rescue);
the dead-letter index is in ``redis_dead_letters.py``, retry budgets and circuit
breakers in ``redis_limits.py``, the client, scripts and error translation in
``redis_base.py`` (the SQL store is split the same way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from celery_reliable.errors import StoreError
from celery_reliable.stores.base import Answer, ClaimAnswer, Completion, answered
from celery_reliable.stores.model import (
    Claim,
    ClaimStatus,
    KeyState,
    Lease,
    PublishOutcome,
    PublishStatus,
    SweepPolicy,
    TaskRecord,
)
from celery_reliable.stores.redis_base import (
    DONE_FINGERPRINT,
    KEY_STATES,
    RECORD_FIELDS,
    T,
    compact_id,
    expand_id,
    guarded,
    ms,
    record_of,
)
from celery_reliable.stores.redis_dead_letters import RedisDeadLetters
from celery_reliable.stores.redis_limits import RedisLimits

#: queued/running/dead states are garbage-collected after this long if nobody
#: touches them again (the rescuer does long before, while records exist).
STALE_TTL_MS = 7 * 24 * 3600 * 1000


#: The task id of a done key that is the task id itself (a task without a declared key):
#: a done key of a publish stores its id once, in the key's name (lua/common.lua).
SAME_AS_KEY = "="


def _done_id(key: str, task_id: str) -> str:
    return SAME_AS_KEY if key == task_id else compact_id(task_id)


class RedisStore(RedisDeadLetters, RedisLimits):
    """The Redis store (see the module's docstring for its keys)."""

    # -- producer side -----------------------------------------------------------
    @guarded
    def publish(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> PublishOutcome:
        status, task_id = self._run("publish", *self._publish_call(record, deadline_in, dedupe))
        return PublishOutcome(PublishStatus(status), expand_id(task_id))

    def _publish_call(
        self, record: TaskRecord, deadline_in: float, dedupe: bool
    ) -> tuple[list[str], list[Any]]:
        return [*self._names(record.key, record.task_id), self._clock(record.key)], [
            record.task_id, record.fingerprint, "1" if dedupe else "0", ms(deadline_in),
            STALE_TTL_MS, record.name, record.key, record.body, record.content_type,
            record.content_encoding, record.options, ms(self.outage_after),
        ]

    @guarded
    def publish_many(
        self, records: Sequence[tuple[TaskRecord, float]], dedupe: bool
    ) -> list[PublishOutcome]:
        replies = self._caller.call_many(
            self._scripts["publish"],
            [self._publish_call(record, deadline_in, dedupe) for record, deadline_in in records],
        )
        return [PublishOutcome(PublishStatus(status), expand_id(task_id))
                for status, task_id in replies]

    @guarded
    def lookup(self, key: str, fingerprint: str) -> PublishOutcome:
        status, task_id = self._run("lookup", *self._lookup_call(key, fingerprint))
        return PublishOutcome(PublishStatus(status), expand_id(task_id))

    def _lookup_call(self, key: str, fingerprint: str) -> tuple[list[str], list[Any]]:
        return [self._names(key, "")[0], self._clock(key)], [fingerprint, ms(self.outage_after)]

    def _clock(self, key: str) -> str:
        """The lease clock of ``key``'s shard (every script shares its hash tag)."""
        return f"{self._tag(key)}:clock"

    def publish_soon(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> Answer:
        own = record.task_id

        def outcome(reply: Any, again: bool) -> PublishOutcome:
            status, task_id = reply[0], expand_id(reply[1])
            if again and status == PublishStatus.IN_FLIGHT.value and task_id == own:
                # The first reply was lost with the connection and the call made again:
                # the second call found the key queued for this very task (the first
                # one ran).  That is this publish's own record, not a duplicate.
                status = PublishStatus.NEW.value
            return PublishOutcome(PublishStatus(status), task_id)

        return self._soon(
            "publish", *self._publish_call(record, deadline_in, dedupe),
            lambda: self.publish(record, deadline_in, dedupe), outcome,
        )

    def lookup_soon(self, key: str, fingerprint: str) -> Answer:
        return self._soon(
            "lookup", *self._lookup_call(key, fingerprint),
            lambda: self.lookup(key, fingerprint),
            lambda reply, again: PublishOutcome(PublishStatus(reply[0]), expand_id(reply[1])),
        )

    def claim_soon(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> ClaimAnswer:
        # A claim made again after a lost reply finds the key running for this owner,
        # and answers "claimed" (see claim.lua): ``again`` changes nothing.
        return self._soon(
            "claim", *self._claim_call(key, fingerprint, task_id, owner, lease, max_lost),
            lambda: self.claim(key, fingerprint, task_id, owner, lease, max_lost),
            lambda reply, again: _claim(reply),
        )

    def _soon(
        self, name: str, keys: Sequence[str], args: Sequence[Any], now: Callable[[], T],
        decode: Callable[[Any, bool], T],
    ) -> Callable[[], T]:
        """Write a call and return the function that reads its reply.

        ``now``: the same call made the ordinary way, when this one cannot even be
        written; ``decode(reply, again)``: the answer of a reply (``again``: the
        first reply was lost with the connection and the call made a second time).
        """
        replies: list[tuple[Any, BaseException | None, bool]] = []
        try:
            self._caller.send(
                self._scripts[name], keys, args,
                lambda reply, error, again: replies.append((reply, error, again)),
            )
        except (redis.ConnectionError, redis.TimeoutError):
            return answered(now)  # not written: call now, through redis-py's retries

        def answer() -> T:
            if not replies:
                self.drain()
            if not replies:
                raise StoreError(f"the reply of {name} to {self.safe_url} was not read")
            reply, error, again = replies[0]
            if error is not None:
                raise self._store_error(error)
            return decode(reply, again)

        return answer

    # -- consumer side -----------------------------------------------------------
    @guarded
    def claim(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> Claim:
        return _claim(
            self._run("claim", *self._claim_call(key, fingerprint, task_id, owner, lease,
                                                 max_lost))
        )

    def _claim_call(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> tuple[list[str], list[Any]]:
        state, record, due = self._names(key, task_id)
        return [state, record, due, f"{self._tag(key)}:d:{task_id}", self._clock(key)], [
            fingerprint, task_id, owner, ms(lease), max_lost, STALE_TTL_MS, compact_id(task_id),
            ms(self.outage_after),
        ]

    @guarded
    def heartbeat(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        if not leases:
            return []
        pipe = self.client.pipeline(transaction=False)
        outage = ms(self.outage_after)
        for item in leases:
            state, _, due = self._names(item.key, item.task_id)
            self._scripts["heartbeat"](
                keys=[state, due, self._clock(item.key)],
                args=[item.owner, item.task_id, ms(lease), outage], client=pipe,
            )
        return [bool(ok) for ok in pipe.execute()]

    @guarded
    def complete(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> bool:
        return bool(self._run("complete", *self.complete_call(
            key, fingerprint, owner, task_id, result, retention
        )))

    @guarded
    def complete_soon(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float, then: Completion,
    ) -> None:
        keys, args = self.complete_call(key, fingerprint, owner, task_id, result, retention)

        def answered(reply: Any, error: BaseException | None, again: bool) -> None:
            if error is not None:
                then(None, self._store_error(error))
                return
            ok = bool(reply)
            if not ok and again:
                # The first reply was lost with its connection: that call may have
                # completed the key already (the second one then finds it done).
                try:
                    state = self.get_key(key)
                except StoreError as exc:
                    then(None, exc)
                    return
                ok = state is not None and state.state == "done" and state.task_id == task_id
            then(ok, None)

        try:
            self._caller.send(self._scripts["complete"], keys, args, answered)
        except (redis.ConnectionError, redis.TimeoutError):
            # not written: complete now, waiting, through redis-py's retries
            then(self.complete(key, fingerprint, owner, task_id, result, retention), None)


    def complete_call(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> tuple[list[str], list[Any]]:
        """(keys, args) of the complete script (benchmarks pipeline it)."""
        packed = "~" if result is None else ("" if result == "null" else result)
        return list(self._names(key, task_id)), [
            owner, fingerprint, _done_id(key, task_id), packed, ms(retention), task_id
        ]

    @guarded
    def release(self, key: str, owner: str, task_id: str, requeued: bool) -> bool:
        ok = self._run(
            "release",
            [self._names(key, task_id)[0]],
            [owner, task_id, "1" if requeued else "0", STALE_TTL_MS],
        )
        return bool(ok)

    @guarded
    def discard(self, task_id: str, key: str) -> None:
        _, record, due = self._names(key, task_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(record)
        pipe.zrem(due, task_id)
        pipe.execute()

    # -- rescuer -------------------------------------------------------------------
    @guarded
    def acquire_sweeper(self, owner: str, ttl: float) -> bool:
        return bool(self._run("sweeper", [f"{{{self.prefix}}}:sweeper"], [owner, ms(ttl)]))

    @guarded
    def sweep(self, policy: SweepPolicy) -> list[TaskRecord]:
        taken: list[TaskRecord] = []
        for shard in range(self.shards):
            tag = f"{{{self.prefix}:{shard}}}"
            rows = self._run(
                "sweep",
                [f"{tag}:due", f"{tag}:clock"],
                [f"{tag}:t:", policy.limit, ms(policy.rescue_after), ms(policy.backoff_cap),
                 f"{tag}:k:", ms(self.outage_after)],
            )
            for task_id, *values in rows:
                taken.append(record_of(task_id, dict(zip(RECORD_FIELDS, values, strict=True))))
        return taken


    # -- inspection --------------------------------------------------------------
    @guarded
    def get_key(self, key: str) -> KeyState | None:
        raw = self.client.get(self._names(key, "")[0])
        if raw is None:
            return None
        raw = str(raw)  # decode_responses=True
        width = DONE_FINGERPRINT.get(raw[:1])
        if width is not None:
            task_id, _, result = raw[width + 1:].partition("\t")
            task_id = key if task_id == SAME_AS_KEY else expand_id(task_id) or ""
            return KeyState("done", raw[1:width + 1], task_id, result=_result("done", result))
        state, fp, task_id, *rest = json.loads(raw)
        owner, until, lost = rest
        return KeyState(
            KEY_STATES[state], fp, task_id, owner or None, (until / 1000) or None, int(lost)
        )

    @guarded
    def get_record(self, task_id: str, key: str) -> TaskRecord | None:
        state, record, _ = self._names(key, task_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(record)
        pipe.get(state)
        pipe.hgetall(f"{self._tag(key)}:d:{task_id}")
        pipe.hget(self._clock(key), "p")
        values, raw_state, dead, paused = pipe.execute()
        if not values:
            return record_of(task_id, dead) if dead else None
        if values.get("state") == "queued" and raw_state and raw_state.startswith("["):
            current = json.loads(raw_state)
            # inspection only: the local clock on the lease clock will do
            live = (current[4] + int(paused or 0)) / 1000 > time.time()
            if current[0] == "R" and current[2] == task_id and live:
                values["state"] = "running"  # the claim records it in the key only
        return record_of(task_id, values)

    @guarded
    def pending_count(self) -> int:
        return sum(
            int(self.client.zcard(f"{{{self.prefix}:{shard}}}:due")) for shard in range(self.shards)
        )


def _claim(reply: Sequence[Any]) -> Claim:
    status, holder, result, lost, left = reply
    return Claim(
        ClaimStatus(status), expand_id(holder), _result(status, result), int(lost),
        int(left) / 1000,
    )


def _result(status: str, packed: str | None) -> str | None:
    """A done key's result as JSON text: '' is None, '~' was not kept."""
    if status != "done" or packed is None or packed == "~":
        return None
    return packed or "null"
