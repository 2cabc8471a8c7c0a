"""What every part of the Redis store shares: the client, the scripts, key names,
error translation and the lean script calls (``redis_calls.py``)."""

from __future__ import annotations

import base64
import functools
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
from celery_reliable.findings import Finding
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import TaskRecord
from celery_reliable.stores.redis_calls import ScriptCaller
from celery_reliable.stores.redis_server import ServerFacts, store_findings

KEY_STATES = {"Q": "queued", "R": "running", "D": "done", "X": "dead"}
RECORD_FIELDS = ("name", "key", "fp", "body", "ctype", "cenc", "opts", "pub", "state", "resc")

T = TypeVar("T")


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


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


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: RedisBase, *args: Any, **kwargs: Any) -> T:
        with _guard(self.safe_url):
            return method(self, *args, **kwargs)

    return wrapper


class RedisBase(Store):
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

    def drain(self) -> None:
        with _guard(self.safe_url):
            self._caller.drain()

    def _store_error(self, error: BaseException) -> StoreError:
        """The error a call sent ahead (``ScriptCaller.send``) came back with, as ours."""
        if isinstance(error, redis.RedisError):
            return _translated(self.safe_url, error)
        return StoreError(str(error))

    @guarded
    def ping(self) -> None:
        self.client.ping()

    @guarded
    def risks(self) -> list[Finding]:
        """Eviction and persistence: completed keys, leases and task records carry a TTL,
        so any eviction policy may drop them under memory pressure; a Redis that does not
        persist forgets them all when it restarts, one without AOF the last minutes.
        A server that will not say (managed services refusing ``CONFIG``) is not judged
        on what it did not say."""
        return store_findings(self.safe_url, ServerFacts.read(self.client))

    def drop(self) -> None:
        # Every key is {prefix:...} (keys, records, budgets, breakers, states) or
        # {prefix}:... (the sweeper lease): one SCAN matches both, so a big database is
        # walked once (about 1 s per 700,000 keys here) and never blocked.
        pattern = "{" + _glob_escaped(self.prefix) + "[:}]*"
        with _guard(self.safe_url):
            batch: list[str] = []
            for name in self.client.scan_iter(match=pattern, count=1000):
                batch.append(name)
                if len(batch) == 500:
                    self.client.unlink(*batch)
                    batch = []
            if batch:
                self.client.unlink(*batch)

    def close(self) -> None:
        self._caller.close()
        self.client.close()

    def after_fork(self) -> None:
        # redis-py's pool and the script caller notice the new pid by themselves;
        # drop the pool's sockets eagerly anyway.
        self.client.connection_pool.reset()


#: first character of a packed done value -> characters of the fingerprint it keeps:
#: 'E' keeps all 16 (64 bits); 'D', written before, kept 8 and is still read
DONE_FINGERPRINT = {"E": 16, "D": 8}


def compact_id(task_id: str) -> str:
    """A UUID task id as ``#`` + its 16 bytes in unpadded base64url (23 characters), so
    a done key with the whole fingerprint still fits Redis's embedded strings (44 bytes:
    ``E`` + 16 + 23 + tab = 41 for a None result)."""
    if len(task_id) != 36 or task_id.count("-") != 4:
        return task_id
    try:
        raw = uuid.UUID(task_id).bytes
    except ValueError:  # 36 characters with four dashes, but not hexadecimal
        return task_id
    return "#" + base64.urlsafe_b64encode(raw).decode()[:22]


def expand_id(task_id: str | None) -> str | None:
    """The task id a done value keeps (``#`` + base64url, or ``!`` + 32 hex digits as
    written before the whole fingerprint was kept)."""
    if not task_id:
        return None
    if task_id.startswith("#") and len(task_id) == 23:
        return str(uuid.UUID(bytes=base64.urlsafe_b64decode(task_id[1:] + "==")))
    if task_id.startswith("!") and len(task_id) == 33:
        return str(uuid.UUID(task_id[1:]))
    return task_id


def record_of(task_id: str, v: Mapping[Any, Any]) -> TaskRecord:
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


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis glob (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
