"""Redis store: every operation is one Lua script, so one round trip.

Layout, for prefix ``reliable`` and shard ``S`` (crc32 of the idempotency key
modulo ``reliable_redis_shards``)::

    {reliable:S}:k:<key>      key state (cjson array, see lua/common.lua), TTL
    {reliable:S}:t:<task_id>  task record (hash)
    {reliable:S}:due          rescue index: task id -> deadline (ms), a sorted set
    {reliable:S}:dead         dead letters: task id -> time (ms)
    {reliable}:sweeper        the one-sweeper-at-a-time lease

Everything one script touches shares the ``{reliable:S}`` hash tag, so the
store works on Redis Cluster; more shards spread the load over more slots.
Times come from the server's ``TIME``: leases do not depend on worker clocks.
"""

from __future__ import annotations

import functools
import json
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
    BreakerCheck,
    Claim,
    ClaimStatus,
    KeyState,
    Lease,
    PublishOutcome,
    PublishStatus,
    Store,
    SweepPolicy,
    TaskRecord,
)

#: queued/running/dead states are garbage-collected after this long if nobody
#: touches them again (the rescuer does long before, while records exist).
STALE_TTL_MS = 7 * 24 * 3600 * 1000

_STATES = {"Q": "queued", "R": "running", "D": "done", "X": "dead"}
_RECORD_FIELDS = ("name", "key", "fp", "body", "ctype", "cenc", "opts", "pub", "state", "resc")

T = TypeVar("T")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@contextmanager
def _guard(url: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis store {url} is unreachable: {exc}") from exc
    except redis.ResponseError as exc:
        raise StoreError(f"Redis store {url} refused a command: {exc}") from exc


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        with _guard(self.safe_url):
            return method(self, *args, **kwargs)

    return wrapper


class RedisStore(Store):
    def __init__(self, url: str, *, prefix: str = "reliable", shards: int = 1) -> None:
        self.url = url
        parts = urlsplit(url)
        self.safe_url = url.replace(f":{parts.password}@", ":***@") if parts.password else url
        query = parse_qs(parts.query)
        options: dict[str, Any] = {"decode_responses": True}
        # A hung store must not hang a task forever: fail closed within seconds.
        if "socket_timeout" not in query:
            options["socket_timeout"] = 5.0
        if "socket_connect_timeout" not in query:
            options["socket_connect_timeout"] = 2.0
        options["health_check_interval"] = 30
        self.client: redis.Redis = redis.Redis.from_url(url, **options)
        self.prefix = prefix
        self.shards = shards
        common = _lua("common")
        self._scripts: dict[str, Script] = {
            name: self.client.register_script(common + _lua(name))
            for name in (
                "publish", "lookup", "claim", "heartbeat", "complete", "release",
                "dead_letter", "sweep", "sweeper", "budget_deposit", "budget_withdraw",
                "breaker_check", "breaker_report",
            )
        }

    # -- key names -------------------------------------------------------------
    def _tag(self, key: str) -> str:
        shard = zlib.crc32(key.encode()) % self.shards if self.shards > 1 else 0
        return f"{{{self.prefix}:{shard}}}"

    def _names(self, key: str, task_id: str) -> tuple[str, str, str]:
        tag = self._tag(key)
        return f"{tag}:k:{key}", f"{tag}:t:{task_id}", f"{tag}:due"

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=list(keys), args=list(args))

    # -- producer side -----------------------------------------------------------
    @_guarded
    def publish(self, record: TaskRecord, deadline_in: float, dedupe: bool) -> PublishOutcome:
        status, task_id = self._run(
            "publish",
            self._names(record.key, record.task_id),
            [
                record.task_id, record.fingerprint, "1" if dedupe else "0", _ms(deadline_in),
                STALE_TTL_MS, record.name, record.key, record.body, record.content_type,
                record.content_encoding, record.options,
            ],
        )
        return PublishOutcome(PublishStatus(status), _expand(task_id))

    @_guarded
    def lookup(self, key: str, fingerprint: str) -> PublishOutcome:
        status, task_id = self._run("lookup", [self._names(key, "")[0]], [fingerprint])
        return PublishOutcome(PublishStatus(status), _expand(task_id))

    # -- consumer side -----------------------------------------------------------
    @_guarded
    def claim(
        self, key: str, fingerprint: str, task_id: str, owner: str, lease: float, max_lost: int
    ) -> Claim:
        status, holder, result, lost, left = self._run(
            "claim",
            self._names(key, task_id),
            [fingerprint, task_id, owner, _ms(lease), max_lost, STALE_TTL_MS],
        )
        return Claim(
            ClaimStatus(status), _expand(holder), _result(status, result), int(lost),
            int(left) / 1000,
        )

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
        fallback: TaskRecord | None = None,
    ) -> None:
        state, record, due = self._names(key, task_id)
        fields: list[Any] = []
        if fallback is not None:
            fields = [
                "name", fallback.name, "key", fallback.key, "fp", fallback.fingerprint,
                "body", fallback.body, "ctype", fallback.content_type,
                "cenc", fallback.content_encoding, "opts", fallback.options,
                "pub", int(fallback.published_at * 1000), "resc", fallback.rescues,
            ]
        self._run(
            "dead_letter", [record, due, f"{self._tag(key)}:dead", state],
            [task_id, reason, error or "", *fields],
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
        values, raw_state = pipe.execute()
        if not values:
            return None
        if values.get("state") == "queued" and raw_state and raw_state.startswith("["):
            current = json.loads(raw_state)
            live = current[4] / 1000 > time.time()  # inspection only: the local clock will do
            if current[0] == "R" and current[2] == task_id and live:
                values["state"] = "running"  # the claim records it in the key only
        return _record(task_id, values)

    @_guarded
    def dead_letters(self, limit: int = 100) -> list[TaskRecord]:
        out = []
        for shard in range(self.shards):
            tag = f"{{{self.prefix}:{shard}}}"
            for task_id in self.client.zrevrange(f"{tag}:dead", 0, limit - 1):
                values = self.client.hgetall(f"{tag}:t:{task_id!s}")
                if values:
                    out.append(_record(str(task_id), values))
        out.sort(key=lambda r: r.dead_at or 0, reverse=True)
        return out[:limit]

    @_guarded
    def pending_count(self) -> int:
        return sum(
            int(self.client.zcard(f"{{{self.prefix}:{shard}}}:due")) for shard in range(self.shards)
        )

    @_guarded
    def ping(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.client.close()

    def after_fork(self) -> None:
        # redis-py's pool notices the new pid by itself; drop sockets eagerly anyway.
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
