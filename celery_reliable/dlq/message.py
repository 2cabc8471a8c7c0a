"""The dead-letter message: what goes to the DLQ queue, and reading it back.

The message *is* the original call, plus the failure:

* the body is the task's serialized ``[args, kwargs]`` exactly as its record keeps
  it (same content type and encoding: nothing is deserialized on the way in);
* ``x-reliable-*`` headers carry the failure (reason, exception type and message,
  traceback, attempts, worker, time), the task's identity (id, name,
  idempotency key, fingerprint) and its routing (queue, exchange, routing key)
  and publish options (the original headers among them) as JSON text.

It deliberately has no Celery ``task``/``id`` headers: a worker that consumes
the DLQ queue by mistake rejects it instead of running it.

Reading it back treats the message as untrusted: :func:`parse` only reads
headers (never the body), and anything that is not one of ours comes back as
a :class:`Unreadable` with kind ``foreign`` or ``malformed``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery_reliable.records import BINARY
from celery_reliable.stores.model import Failure, TaskRecord

FORMAT = 1
P = "x-reliable-"
H_FORMAT = P + "format"
H_TASK_ID = P + "task-id"
H_TASK = P + "task"
H_KEY = P + "key"
H_FINGERPRINT = P + "fingerprint"
H_REASON = P + "reason"
H_EXC_TYPE = P + "exception-type"
H_ERROR = P + "exception-message"
H_TRACEBACK = P + "traceback"
H_ATTEMPTS = P + "attempts"
H_WORKER = P + "worker"
H_DEAD_AT = P + "dead-at"
H_QUEUE = P + "queue"
H_EXCHANGE = P + "exchange"
H_ROUTING_KEY = P + "routing-key"
H_OPTIONS = P + "options"
H_PUBLISHED_AT = P + "published-at"

#: Reasons of index entries that are not task messages (indexed by reconcile from the
#: queue): shown and purged, never replayed or republished.
UNREADABLE_REASONS = frozenset({"foreign", "malformed"})
#: Longest error message kept in a header (the traceback has its own setting).
ERROR_MAX = 2000


@dataclass(frozen=True)
class DeadLetterMessage:
    """A dead letter as published: the task's record, its failure and where it came from."""

    record: TaskRecord
    """reason, error and dead_at are set."""
    failure: Failure
    exchange: str = ""
    routing_key: str = ""

    @property
    def task_id(self) -> str:
        return self.record.task_id

    def headers(self) -> dict[str, Any]:
        r, f = self.record, self.failure
        return {
            H_FORMAT: FORMAT,
            H_TASK_ID: r.task_id,
            H_TASK: r.name,
            H_KEY: r.key,
            H_FINGERPRINT: r.fingerprint,
            H_REASON: r.reason or "",
            H_EXC_TYPE: f.exc_type or "",
            H_ERROR: (r.error or "")[:ERROR_MAX],
            H_TRACEBACK: f.traceback or "",
            H_ATTEMPTS: f.attempts,
            H_WORKER: f.worker or "",
            H_DEAD_AT: repr(r.dead_at or 0.0),
            H_PUBLISHED_AT: repr(r.published_at),
            H_QUEUE: f.queue or "",
            H_EXCHANGE: self.exchange,
            H_ROUTING_KEY: self.routing_key,
            H_OPTIONS: r.options,
        }

    def body(self) -> tuple[bytes | str, str, str]:
        """(body, content type, content encoding) of the message: the original call."""
        r = self.record
        if r.content_encoding == BINARY:
            return base64.b64decode(r.body), r.content_type, "binary"
        return r.body, r.content_type or "application/json", r.content_encoding or "utf-8"


@dataclass(frozen=True)
class Unreadable:
    """A message in the DLQ queue that is not a dead letter we can read."""

    kind: str
    """``foreign`` (not ours: no x-reliable-* headers) or ``malformed`` (ours, damaged)."""
    problem: str
    task_id: str | None = None


def build(
    record: TaskRecord, failure: Failure, traceback_max: int, exchange: str = "",
    routing_key: str = "",
) -> DeadLetterMessage:
    """The message for ``record`` (reason/error/dead_at set), the traceback cut to its end."""
    tb = failure.traceback
    if tb is not None and len(tb) > traceback_max:
        tb = "...\n" + tb[len(tb) - traceback_max:] if traceback_max else None
    return DeadLetterMessage(
        record, Failure(failure.exc_type, tb, failure.attempts, failure.worker, failure.queue),
        exchange, routing_key,
    )


def parse(
    headers: Mapping[str, Any] | None, body: bytes | str | None, content_type: str | None,
    content_encoding: str | None,
) -> DeadLetterMessage | Unreadable:
    """Read a message from the DLQ queue; never raises, never deserializes the body."""
    if not isinstance(headers, Mapping) or H_TASK_ID not in headers:
        return Unreadable("foreign", "no x-reliable-task-id header: not a celery_reliable "
                                     "dead letter")
    task_id = headers.get(H_TASK_ID)
    try:
        return _parse(headers, body, content_type, content_encoding)
    except (TypeError, ValueError, KeyError, binascii.Error) as exc:
        return Unreadable("malformed", f"{type(exc).__name__}: {exc}",
                          task_id if isinstance(task_id, str) else None)


def _text(headers: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = headers.get(name, "")
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        raise TypeError(f"header {name} is {type(value).__name__}, not text")
    if required and not value:
        raise ValueError(f"header {name} is empty")
    return value


def body_text(body: bytes | str, content_encoding: str | None) -> tuple[str, str]:
    """The body as a record keeps it: text, or base64 text when it is binary."""
    if isinstance(body, str):
        return body, content_encoding or "utf-8"
    if content_encoding and content_encoding != "binary":
        try:
            return body.decode(content_encoding), content_encoding
        except (UnicodeDecodeError, LookupError):
            pass
    return base64.b64encode(body).decode(), BINARY


def _parse(
    headers: Mapping[str, Any], body: bytes | str | None, content_type: str | None,
    content_encoding: str | None,
) -> DeadLetterMessage:
    if headers.get(H_FORMAT) != FORMAT:
        raise ValueError(f"unknown dead-letter format {headers.get(H_FORMAT)!r}")
    options = _text(headers, H_OPTIONS) or "{}"
    if not isinstance(json.loads(options), dict):
        raise ValueError("x-reliable-options is not a JSON object")
    if body is None:
        raise ValueError("no body")
    text, encoding = body_text(body, content_encoding)
    attempts = headers.get(H_ATTEMPTS, 0)
    if not isinstance(attempts, int):
        raise TypeError("x-reliable-attempts is not an integer")
    record = TaskRecord(
        task_id=_text(headers, H_TASK_ID, required=True),
        name=_text(headers, H_TASK, required=True),
        key=_text(headers, H_KEY),
        fingerprint=_text(headers, H_FINGERPRINT),
        body=text,
        content_type=content_type or "",
        content_encoding=encoding,
        options=options,
        published_at=float(_text(headers, H_PUBLISHED_AT) or 0),
        state="dead",
        reason=_text(headers, H_REASON) or "unknown",
        error=_text(headers, H_ERROR) or None,
        dead_at=float(_text(headers, H_DEAD_AT) or 0),
    )
    failure = Failure(
        exc_type=_text(headers, H_EXC_TYPE) or None,
        traceback=_text(headers, H_TRACEBACK) or None,
        attempts=attempts,
        worker=_text(headers, H_WORKER) or None,
        queue=_text(headers, H_QUEUE) or None,
    )
    return DeadLetterMessage(record, failure, _text(headers, H_EXCHANGE),
                             _text(headers, H_ROUTING_KEY))
