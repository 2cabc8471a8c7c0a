"""Calling the store's Lua scripts with as little client work as possible.

Why this exists: a task's hot path is two script calls (claim, complete) and a
publish is one.  Measured with redis-py 8 on loopback, its generic command path
(connection pool checkout with a readiness poll, argument encoding, retry and
observability wrappers) costs about 85 us of CPU per ``EVALSHA``: more than the
round trip itself, and more than a plain ``GET`` (65 us).  Here a call packs the
RESP request in one pass and writes it on a connection the calling thread keeps
(about 45 us).  Replies are parsed by redis-py's own parser, and every failure
takes the ordinary redis-py path, so errors, retries and ``NOSCRIPT`` behave
exactly as they do there.

:meth:`ScriptCaller.send` writes a call without waiting for its reply, which is
read before the thread's next call: the completion of a task is sent this way,
so the worker goes on to acknowledge the message while Redis runs it.  Why that
keeps the guarantee: once the request is written, a crash of the worker process
does not lose it (the kernel delivers what a dead process wrote, and a reply
waiting unread proves it arrived), and the broker's acknowledgement is sent
after it.  The reply is still checked: a lapsed lease is reported, a reply lost
with its connection makes the call again.

One connection per thread and process: a connection is never shared between
threads, and a forked child opens its own (the parent's socket is left alone).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.commands.core import Script


def pack(args: Sequence[Any]) -> bytes:
    """One RESP array of bulk strings (str, bytes, int or float arguments).

    Our calls are ASCII text and integers, and for those a length in characters
    is a length in bytes: they are formatted as one string and encoded once.
    Anything else (a key with accents, bytes) takes the general path.
    """
    text = []
    for arg in args:
        kind = type(arg)
        if kind is str and arg.isascii():
            text.append(f"${len(arg)}\r\n{arg}\r\n")
        elif kind is int or kind is float:
            number = repr(arg)
            text.append(f"${len(number)}\r\n{number}\r\n")
        else:
            return _pack_bytes(args)
    return f"*{len(args)}\r\n{''.join(text)}".encode()


def _pack_bytes(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} {arg!r} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


Then = Callable[[Any, BaseException | None, bool], None]
"""``then(reply, error, again)`` of :meth:`ScriptCaller.send`: the reply or the error;
``again`` when the first reply was lost and the call was made a second time."""


class _Held:
    """This thread's connection and the calls sent on it whose replies are unread."""

    def __init__(self, pid: int, connection: Any) -> None:
        self.pid = pid
        self.connection = connection
        self.pending: list[tuple[Script, Sequence[str], Sequence[Any], Then]] = []


class ScriptCaller:
    """``call``: ``EVALSHA`` on this thread's own connection; ``send``: the same without
    waiting for the reply, which is read before the thread's next call."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._local = threading.local()

    def _held(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        pid = os.getpid()
        if held is not None and held.pid == pid:
            return held
        pool = self.client.connection_pool
        held = self._local.held = _Held(pid, pool.connection_class(**pool.connection_kwargs))
        return held

    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        held = self._held()
        if held.pending:
            self._read_pending(held)
        try:
            held.connection.send_packed_command([_evalsha(script, keys, args)])
            return held.connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoScriptError):
            # Dropped connection (redis-py disconnected it) or a server that lost its
            # script cache (restart, SCRIPT FLUSH): redis-py's own path reconnects,
            # reloads and retries by its rules.
            return script(keys=list(keys), args=list(args))

    def call_many(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Several calls of one script in one round trip (written together, replies read
        in order).  On a failure they are made one by one, so use it for calls that may
        run twice (the replies of those that ran are lost with the connection)."""
        held = self._held()
        if held.pending:
            self._read_pending(held)
        try:
            held.connection.send_packed_command([_evalsha(script, k, a) for k, a in calls])
            return [held.connection.read_response() for _ in calls]
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoScriptError):
            held.connection.disconnect()  # after a NOSCRIPT the other replies are unread
            return [self.call(script, k, a) for k, a in calls]

    def send(self, script: Script, keys: Sequence[str], args: Sequence[Any], then: Then) -> None:
        """Write the call now; ``then`` gets its reply when this thread next calls the
        store (or at :meth:`drain`).  Raises redis-py's error if it could not be written."""
        held = self._held()
        held.connection.send_packed_command([_evalsha(script, keys, args)])
        held.pending.append((script, keys, args, then))

    def drain(self) -> None:
        """Read the replies of this thread's sent calls now."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid() and held.pending:
            self._read_pending(held)

    def _read_pending(self, held: _Held) -> None:
        pending, held.pending = held.pending, []
        lost = False
        for script, keys, args, then in pending:
            if not lost:
                try:
                    reply = held.connection.read_response()
                except redis.exceptions.NoScriptError:
                    self._again(script, keys, args, then)  # it did not run: run it now
                    continue
                except (redis.ConnectionError, redis.TimeoutError):
                    lost = True  # this reply and the ones after it are gone
                except redis.RedisError as exc:
                    then(None, exc, False)
                    continue
                else:
                    then(reply, None, False)
                    continue
            self._again(script, keys, args, then)

    @staticmethod
    def _again(script: Script, keys: Sequence[str], args: Sequence[Any], then: Then) -> None:
        try:
            reply = script(keys=list(keys), args=list(args))
        except redis.RedisError as exc:
            then(None, exc, True)
        else:
            then(reply, None, True)

    def close(self) -> None:
        self.drain()
        held: _Held | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held.pid == os.getpid():
            held.connection.disconnect()


def _evalsha(script: Script, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    return pack(("EVALSHA", script.sha, len(keys), *keys, *args))
