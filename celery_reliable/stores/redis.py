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
    {reliable}:sweeper        the one-sweeper-at-a-time lease

Everything one script touches shares the ``{reliable:S}`` hash tag, so the
store works on Redis Cluster; more shards spread the load over more slots.
Times come from the server's ``TIME``: leases do not depend on worker clocks.
"""

from __future__ import annotations

import functools
import json
import math
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import redis
from redis.commands.core import Script

from celery_reliable.errors import StoreError, StoreUnavailable
from celery_reliable.stores.base import (
    Answer,
    BreakerCheck,
    Claim,
    ClaimAnswer,
    ClaimStatus,
    Completion,
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    Failure,
    KeyState,
    Lease,
    PublishOutcome,
    PublishStatus,
    Store,
    SweepPolicy,
    TaskRecord,
    answered,
    page_cursor,
    parse_cursor,
)
from celery_reliable.stores.redis_calls import ScriptCaller

#: queued/running/dead states are garbage-collected after this long if nobody
#: touches them again (the rescuer does long before, while records exist).
STALE_TTL_MS = 7 * 24 * 3600 * 1000

_STATES = {"Q": "queued", "R": "running", "D": "done", "X": "dead"}
_RECORD_FIELDS = ("name", "key", "fp", "body", "ctype", "cenc", "opts", "pub", "state", "resc")
#: Dead-letter index entries examined per listing script call (keeps each call short).
LIST_BUDGET = 5000

T = TypeVar("T")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def redis_risks(
    url: str, policy: str, maxmemory: int, appendonly: str | None, save: str | None
) -> list[str]:
    """What :meth:`RedisStore.risks` says of a server with these settings (``None``:
    unknown)."""
    found = []
    if maxmemory and policy != "noeviction":
        found.append(
            f"Redis store {url} may evict keys (maxmemory {maxmemory} bytes, "
            f"maxmemory-policy {policy}): completed keys, leases and task records all "
            "carry a TTL, so under memory pressure they can be dropped, and then a "
            "duplicate runs or a lost task is not rescued. Set "
            "maxmemory-policy noeviction (writes then fail loudly when it is full), or "
            "give the store a Redis of its own"
        )
    if appendonly == "no" and save == "":
        found.append(
            f"Redis store {url} does not persist (appendonly no, save \"\"): when it "
            "restarts it forgets which keys completed and every task record, so "
            "duplicates can run and lost tasks cannot be rescued. Turn on appendonly "
            "(or RDB snapshots), or use a SQL store"
        )
    return found


def _translated(url: str, exc: redis.RedisError) -> StoreError:
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return StoreUnavailable(f"Redis store {url} is unreachable: {exc}")
    return StoreError(f"Redis store {url} refused a command: {exc}")


@contextmanager
def _guard(url: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        raise _translated(url, exc) from exc


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        with _guard(self.safe_url):
            return method(self, *args, **kwargs)

    return wrapper


class RedisStore(Store):
    def __init__(
        self, url: str, *, prefix: str = "reliable", shards: int = 1,
        client: redis.Redis | None = None,
    ) -> None:
        """``client``: a ready client to use instead of one built from ``url`` (tests)."""
        self.url = url
        parts = urlsplit(url)
        self.safe_url = url.replace(f":{parts.password}@", ":***@") if parts.password else url
        if client is None:
            query = parse_qs(parts.query)
            options: dict[str, Any] = {"decode_responses": True}
            # A hung store must not hang a task forever: fail closed within seconds.
            if "socket_timeout" not in query:
                options["socket_timeout"] = 5.0
            if "socket_connect_timeout" not in query:
                options["socket_connect_timeout"] = 2.0
            options["health_check_interval"] = 30
            client = redis.Redis.from_url(url, **options)
        self.client: redis.Redis = client
        self.prefix = prefix
        self.shards = shards
        common = _lua("common")
        self._scripts: dict[str, Script] = {
            name: self.client.register_script(common + _lua(name))
            for name in (
                "publish", "lookup", "claim", "heartbeat", "complete", "release",
                "dead_letter", "sweep", "sweeper", "budget_deposit", "budget_withdraw",
                "breaker_check", "breaker_report", "dead_list", "dead_replay", "dead_delete",
            )
        }
        self._caller = ScriptCaller(self.client)

    # -- key names -------------------------------------------------------------
    def _tag(self, key: str) -> str:
        shard = zlib.crc32(key.encode()) % self.shards if self.shards > 1 else 0
        return f"{{{self.prefix}:{shard}}}"

    def _names(self, key: str, task_id: str) -> tuple[str, str, str]:
        tag = self._tag(key)
        return f"{tag}:k:{key}", f"{tag}:t:{task_id}", f"{tag}:due"

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.call_script(self._scripts[name], keys, args)

    def call_script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call, one round trip, on this thread's connection (also for the
        state store that shares this store's Redis); redis-py's errors."""
        return self._caller.call(script, keys, args)

    # -- producer side -----------------------------------------------------------
    @_guarded
    def publish(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> PublishOutcome:
        status, task_id = self._run("publish", *self._publish_call(record, deadline_in, dedupe))
        return PublishOutcome(PublishStatus(status), _expand(task_id))

    def _publish_call(
        self, record: TaskRecord, deadline_in: float, dedupe: bool
    ) -> tuple[list[str], list[Any]]:
        return list(self._names(record.key, record.task_id)), [
            record.task_id, record.fingerprint, "1" if dedupe else "0", _ms(deadline_in),
            STALE_TTL_MS, record.name, record.key, record.body, record.content_type,
            record.content_encoding, record.options,
        ]

    @_guarded
    def publish_many(
        self, records: Sequence[tuple[TaskRecord, float]], dedupe: bool
    ) -> list[PublishOutcome]:
        replies = self._caller.call_many(
            self._scripts["publish"],
            [self._publish_call(record, deadline_in, dedupe) for record, deadline_in in records],
        )
        return [PublishOutcome(PublishStatus(status), _expand(task_id))
                for status, task_id in replies]

    @_guarded
    def lookup(self, key: str, fingerprint: str) -> PublishOutcome:
        status, task_id = self._run("lookup", [self._names(key, "")[0]], [fingerprint])
        return PublishOutcome(PublishStatus(status), _expand(task_id))

    def publish_soon(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> Answer:
        own = record.task_id

        def outcome(reply: Any, again: bool) -> PublishOutcome:
            status, task_id = reply[0], _expand(reply[1])
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
            "lookup", [self._names(key, "")[0]], [fingerprint],
            lambda: self.lookup(key, fingerprint),
            lambda reply, again: PublishOutcome(PublishStatus(reply[0]), _expand(reply[1])),
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
    @_guarded
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
        return [state, record, due, f"{self._tag(key)}:d:{task_id}"], [
            fingerprint, task_id, owner, _ms(lease), max_lost, STALE_TTL_MS
        ]

    @_guarded
    def heartbeat(self, leases: Sequence[Lease], lease: float) -> list[bool]:
        if not leases:
            return []
        pipe = self.client.pipeline(transaction=False)
        for item in leases:
            state, _, due = self._names(item.key, item.task_id)
            self._scripts["heartbeat"](
                keys=[state, due], args=[item.owner, item.task_id, _ms(lease)], client=pipe
            )
        return [bool(ok) for ok in pipe.execute()]

    @_guarded
    def complete(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> bool:
        return bool(self._run("complete", *self.complete_call(
            key, fingerprint, owner, task_id, result, retention
        )))

    @_guarded
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

    def drain(self) -> None:
        with _guard(self.safe_url):
            self._caller.drain()

    def _store_error(self, error: BaseException) -> StoreError:
        """The error a call sent ahead (``ScriptCaller.send``) came back with, as ours."""
        if isinstance(error, redis.RedisError):
            return _translated(self.safe_url, error)
        return StoreError(str(error))

    def complete_call(
        self, key: str, fingerprint: str, owner: str, task_id: str, result: str | None,
        retention: float,
    ) -> tuple[list[str], list[Any]]:
        """(keys, args) of the complete script (benchmarks pipeline it)."""
        packed = "~" if result is None else ("" if result == "null" else result)
        return list(self._names(key, task_id)), [
            owner, fingerprint[:8], _compact(task_id), packed, _ms(retention), task_id
        ]

    @_guarded
    def release(self, key: str, owner: str, task_id: str, requeued: bool) -> bool:
        ok = self._run(
            "release",
            [self._names(key, task_id)[0]],
            [owner, task_id, "1" if requeued else "0", STALE_TTL_MS],
        )
        return bool(ok)

    @_guarded
    def discard(self, task_id: str, key: str) -> None:
        _, record, due = self._names(key, task_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(record)
        pipe.zrem(due, task_id)
        pipe.execute()

    @_guarded
    def dead_letter(
        self, task_id: str, key: str, reason: str, error: str | None,
        fallback: TaskRecord | None = None, failure: Failure | None = None,
    ) -> None:
        state, record, due = self._names(key, task_id)
        tag = self._tag(key)
        f = failure or Failure()
        fields: list[Any] = []
        if fallback is not None:
            fields = [
                "name", fallback.name, "key", fallback.key, "fp", fallback.fingerprint,
                "body", fallback.body, "ctype", fallback.content_type,
                "cenc", fallback.content_encoding, "opts", fallback.options,
                "pub", int(fallback.published_at * 1000), "resc", fallback.rescues,
            ]
        self._run(
            "dead_letter", [record, due, f"{tag}:dead", state, f"{tag}:d:{task_id}"],
            [task_id, key, reason, error or "", f"{tag}:dead:", f.exc_type or "",
             f.traceback or "", f.attempts, f.worker or "", f.queue or "", *fields],
        )

    # -- rescuer -------------------------------------------------------------------
    @_guarded
    def acquire_sweeper(self, owner: str, ttl: float) -> bool:
        return bool(self._run("sweeper", [f"{{{self.prefix}}}:sweeper"], [owner, _ms(ttl)]))

    @_guarded
    def sweep(self, policy: SweepPolicy) -> list[TaskRecord]:
        taken: list[TaskRecord] = []
        for shard in range(self.shards):
            tag = f"{{{self.prefix}:{shard}}}"
            rows = self._run(
                "sweep",
                [f"{tag}:due"],
                [f"{tag}:t:", policy.limit, _ms(policy.rescue_after), _ms(policy.backoff_cap),
                 f"{tag}:k:"],
            )
            for task_id, *values in rows:
                taken.append(_record(task_id, dict(zip(_RECORD_FIELDS, values, strict=True))))
        return taken

    # -- retry budgets and circuit breakers ----------------------------------------
    def _budget_base(self, scope: str) -> str:
        return f"{{{self.prefix}:budget:{scope}}}:"

    @_guarded
    def budget_deposit(self, scope: str, first_attempts: int) -> None:
        self._run("budget_deposit", [], [self._budget_base(scope), first_attempts, 60])

    @_guarded
    def budget_withdraw(self, scope: str, ratio: float, floor: float, window: float) -> bool:
        return bool(
            self._run("budget_withdraw", [], [self._budget_base(scope), ratio, floor,
                                              int(window)])
        )

    @_guarded
    def breaker_check(self, name: str, owner: str, probe_ttl: float) -> BreakerCheck:
        allowed, state, wait, failures = self._run(
            "breaker_check", [f"{{{self.prefix}:breaker:{name}}}"], [owner, _ms(probe_ttl)]
        )
        return BreakerCheck(bool(allowed), state, int(wait) / 1000, int(failures))

    @_guarded
    def breaker_report(self, name: str, ok: bool, threshold: int, cool_down: float) -> str:
        state = self._run(
            "breaker_report", [f"{{{self.prefix}:breaker:{name}}}"],
            ["1" if ok else "0", threshold, _ms(cool_down)],
        )
        return str(state)

    # -- inspection --------------------------------------------------------------
    @_guarded
    def get_key(self, key: str) -> KeyState | None:
        raw = self.client.get(self._names(key, "")[0])
        if raw is None:
            return None
        raw = str(raw)  # decode_responses=True
        if raw.startswith("D"):
            task_id, _, result = raw[9:].partition("\t")
            return KeyState("done", raw[1:9], _expand(task_id) or "",
                            result=_result("done", result))
        state, fp, task_id, *rest = json.loads(raw)
        owner, until, lost = rest
        return KeyState(
            _STATES[state], fp, task_id, owner or None, (until / 1000) or None, int(lost)
        )

    @_guarded
    def get_record(self, task_id: str, key: str) -> TaskRecord | None:
        state, record, _ = self._names(key, task_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(record)
        pipe.get(state)
        pipe.hgetall(f"{self._tag(key)}:d:{task_id}")
        values, raw_state, dead = pipe.execute()
        if not values:
            return _record(task_id, dead) if dead else None
        if values.get("state") == "queued" and raw_state and raw_state.startswith("["):
            current = json.loads(raw_state)
            live = current[4] / 1000 > time.time()  # inspection only: the local clock will do
            if current[0] == "R" and current[2] == task_id and live:
                values["state"] = "running"  # the claim records it in the key only
        return _record(task_id, values)

    def dead_letters(self, limit: int = 100) -> list[TaskRecord]:
        return [e.record for e in self.list_dead_letters(DeadLetterQuery(), limit).entries]

    # -- the dead-letter index ---------------------------------------------------------
    def _shard_tags(self) -> list[str]:
        return [f"{{{self.prefix}:{shard}}}" for shard in range(self.shards)]

    def _dead_tags(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The shard tag of each existing dead letter (found by id: the key is not needed)."""
        tags = self._shard_tags()
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            for tag in tags:
                pipe.exists(f"{tag}:d:{task_id}")
        found = iter(pipe.execute())
        out = {}
        for task_id in task_ids:
            for tag in tags:
                if next(found):
                    out[task_id] = tag
        return out

    @_guarded
    def get_dead_letter(self, task_id: str) -> DeadLetter | None:
        for tag in self._shard_tags():
            values = self.client.hgetall(f"{tag}:d:{task_id}")
            if values:
                return _dead_letter(task_id, values)
        return None

    @_guarded
    def list_dead_letters(
        self, query: DeadLetterQuery, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        position = parse_cursor(cursor)
        found: list[DeadLetter] = []
        more = False
        for tag in self._shard_tags():
            entries, exhausted = self._list_shard(tag, query, limit, position)
            found += entries
            more = more or not exhausted
        found.sort(key=lambda e: (e.dead_at, e.task_id), reverse=True)
        page = found[:limit]
        more = more or len(found) > limit
        return DeadLetterPage(page, page_cursor(page[-1]) if more and page else None)

    def _list_shard(
        self, tag: str, query: DeadLetterQuery, limit: int, position: tuple[float, str] | None
    ) -> tuple[list[DeadLetter], bool]:
        """Up to ``limit`` matching entries of one shard; True when none is left after them."""
        index = f"{tag}:dead"
        for kind, value in (("n", query.name), ("r", query.reason), ("e", query.exc_type),
                            ("q", query.queue)):
            if value is not None:
                index = f"{tag}:dead:{kind}:{value}"
                break
        top = "+inf" if query.until is None else str(int(query.until * 1000))
        cursor_id = ""
        if position is not None:
            at = round(position[0] * 1000)
            if query.until is None or at <= int(query.until * 1000):
                top, cursor_id = str(at), position[1]
        bottom = "-inf" if query.since is None else str(math.ceil(query.since * 1000))
        replayed = "" if query.replayed is None else ("1" if query.replayed else "0")
        out: list[DeadLetter] = []
        while True:
            rows, last_score, last_id, done = self._run("dead_list", [index], [
                f"{tag}:d:", top, cursor_id, bottom, limit - len(out), LIST_BUDGET,
                query.name or "", query.exc_type or "", query.reason or "",
                query.queue or "", (query.text or "").lower(), replayed,
            ])
            for i in range(0, len(rows), 2):
                flat = rows[i + 1]
                out.append(_dead_letter(rows[i], dict(zip(flat[::2], flat[1::2], strict=True))))
            if done:
                return out, True
            if len(out) >= limit:
                return out, False
            top, cursor_id = str(last_score), str(last_id)

    @_guarded
    def claim_replays(self, task_ids: Sequence[str], force: bool) -> list[str]:
        by_tag: dict[str, list[str]] = {}
        for task_id, tag in self._dead_tags(list(dict.fromkeys(task_ids))).items():
            by_tag.setdefault(tag, []).append(task_id)
        marked: list[str] = []
        for tag, ids in by_tag.items():
            marked += self._run("dead_replay", [f"{tag}:d:{t}" for t in ids],
                                ["1" if force else "0", *ids])
        return marked

    @_guarded
    def undo_replay(self, task_id: str) -> None:
        for tag in self._dead_tags([task_id]).values():
            pipe = self.client.pipeline(transaction=True)
            pipe.hincrby(f"{tag}:d:{task_id}", "rep", -1)
            pipe.hdel(f"{tag}:d:{task_id}", "repat")
            pipe.execute()

    @_guarded
    def delete_dead_letters(self, task_ids: Sequence[str]) -> int:
        by_tag: dict[str, list[str]] = {}
        for task_id, tag in self._dead_tags(list(dict.fromkeys(task_ids))).items():
            by_tag.setdefault(tag, []).append(task_id)
        deleted = 0
        for tag, ids in by_tag.items():
            deleted += int(self._run(
                "dead_delete", [f"{tag}:dead", *(f"{tag}:d:{t}" for t in ids)],
                [f"{tag}:dead:", *ids],
            ))
        return deleted

    @_guarded
    def pending_count(self) -> int:
        return sum(
            int(self.client.zcard(f"{{{self.prefix}:{shard}}}:due")) for shard in range(self.shards)
        )

    @_guarded
    def ping(self) -> None:
        self.client.ping()

    @_guarded
    def risks(self) -> list[str]:
        """Eviction and persistence: completed keys, leases and task records carry a TTL,
        so any eviction policy may drop them under memory pressure;
        and a Redis that does not persist forgets them all when it restarts.  Managed
        services that refuse ``CONFIG`` are taken to persist (they replicate)."""
        memory = self.client.info("memory")
        try:
            appendonly = self.client.config_get("appendonly").get("appendonly")
            save = self.client.config_get("save").get("save")
        except redis.ResponseError:  # CONFIG renamed or refused
            appendonly = save = None
        return redis_risks(
            self.safe_url, str(memory.get("maxmemory_policy", "noeviction")),
            int(memory.get("maxmemory", 0) or 0), appendonly, save,
        )

    def close(self) -> None:
        self._caller.close()
        self.client.close()

    def after_fork(self) -> None:
        # redis-py's pool and the script caller notice the new pid by themselves;
        # drop the pool's sockets eagerly anyway.
        self.client.connection_pool.reset()


def _compact(task_id: str) -> str:
    """A UUID task id as ``!`` + 32 hex digits, so a done key fits Redis's inline strings."""
    if len(task_id) != 36 or task_id.count("-") != 4:
        return task_id
    try:
        return "!" + uuid.UUID(task_id).hex
    except ValueError:  # 36 characters with four dashes, but not hexadecimal
        return task_id


def _expand(task_id: str | None) -> str | None:
    if not task_id:
        return None
    if task_id.startswith("!") and len(task_id) == 33:
        return str(uuid.UUID(task_id[1:]))
    return task_id


def _claim(reply: Sequence[Any]) -> Claim:
    status, holder, result, lost, left = reply
    return Claim(
        ClaimStatus(status), _expand(holder), _result(status, result), int(lost),
        int(left) / 1000,
    )


def _result(status: str, packed: str | None) -> str | None:
    """A done key's result as JSON text: '' is None, '~' was not kept."""
    if status != "done" or packed is None or packed == "~":
        return None
    return packed or "null"


def _record(task_id: str, v: Mapping[Any, Any]) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        name=v.get("name") or "",
        key=v.get("key") or "",
        fingerprint=v.get("fp") or "",
        body=v.get("body") or "",
        content_type=v.get("ctype") or "",
        content_encoding=v.get("cenc") or "",
        options=v.get("opts") or "{}",
        published_at=int(v.get("pub") or 0) / 1000,
        state=v.get("state") or "queued",
        rescues=int(v.get("resc") or 0),
        reason=v.get("reason") or None,
        error=v.get("error") or None,
        dead_at=int(v["dead"]) / 1000 if v.get("dead") else None,
    )


@functools.cache
def _lua(name: str) -> str:
    return (resources.files("celery_reliable.stores") / "lua" / f"{name}.lua").read_text()


def _dead_letter(task_id: str, v: Mapping[Any, Any]) -> DeadLetter:
    return DeadLetter(
        record=_record(task_id, v),
        failure=Failure(
            exc_type=v.get("exc") or None,
            traceback=v.get("tb") or None,
            attempts=int(v.get("att") or 0),
            worker=v.get("wrk") or None,
            queue=v.get("q") or None,
        ),
        replays=int(v.get("rep") or 0),
        replayed_at=int(v["repat"]) / 1000 if v.get("repat") else None,
    )
