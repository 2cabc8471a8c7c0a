"""Task records: a call turned into what it takes to publish it again, and back.

Persist-on-publish writes a record *before* the message goes to the broker, so
a message the broker loses (a Redis restart without persistence, a SQLAlchemy
transport that never gives a taken message back) can be republished by the
rescuer with the same task id and idempotency key.

The record keeps the arguments serialized with the task's own serializer, and
the publish options (routing, headers, eta, expiry, links, retries) as JSON.
Republishing goes through ``app.send_task``, so routing and the message format
stay Celery's business.  Decoding obeys the app's ``accept_content``: a record
is untrusted input, and pickle is only loaded when the app accepts pickle.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery
from kombu import serialization
from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError
from kombu.utils.json import JSONEncoder

from celery_reliable.errors import UnpersistableTask
from celery_reliable.stores.model import TaskRecord

#: publish options that are objects of this process, not part of the call
_LOCAL_OPTIONS = frozenset(
    {"producer", "connection", "publisher", "result_cls", "task_type", "add_to_parent",
     "countdown", "eta", "expires"}
)
#: the content encoding of a body kept as base64 text (a binary serializer's output)
BINARY = "base64"
#: kombu's JSON (dates, UUIDs, decimals) with sorted keys, built once: this runs on
#: every publish
_OPTIONS_JSON = JSONEncoder(sort_keys=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _absolute(value: Any, now: datetime) -> datetime | None:
    """An eta/countdown/expires option as an absolute UTC time (None when unset)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        return _absolute(datetime.fromisoformat(value), now)
    return now + timedelta(seconds=float(value))


def encode(
    app: Celery,
    *,
    name: str,
    task_id: str,
    key: str,
    fingerprint: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    serializer: str | None = None,
) -> tuple[TaskRecord, float]:
    """The record of one publish, and seconds until it is due to run (its ETA).

    ``serializer``: the task's own (``Task.serializer``), which a per-call
    ``serializer`` option overrides; without either, the app's ``task_serializer``.
    """
    now = utcnow()
    eta = _absolute(options.get("eta"), now)
    if eta is None and options.get("countdown") is not None:
        eta = _absolute(options["countdown"], now)
    expires = _absolute(options.get("expires"), now)
    serializer = options.get("serializer") or serializer or app.conf.task_serializer
    try:
        content_type, encoding, data = serialization.dumps(
            (list(args), dict(kwargs)), serializer
        )
    except (EncodeError, TypeError, ValueError) as exc:
        raise UnpersistableTask(
            f"{name}: the arguments cannot be serialized with {serializer!r} ({exc}); "
            "pass plain data (ids, strings, numbers) instead of objects"
        ) from exc
    body = data if isinstance(data, str) else base64.b64encode(data).decode()
    if not isinstance(data, str):
        encoding = BINARY
    kept = {k: v for k, v in options.items() if k not in _LOCAL_OPTIONS and v is not None}
    if eta is not None:
        kept["eta"] = eta.isoformat()
    if expires is not None:
        kept["expires"] = expires.isoformat()
    try:
        options_text = _OPTIONS_JSON.encode(kept)
    except (TypeError, ValueError) as exc:
        raise UnpersistableTask(
            f"{name}: a publish option cannot be stored ({exc}); options were {sorted(kept)}"
        ) from exc
    record = TaskRecord(
        task_id=task_id,
        name=name,
        key=key,
        fingerprint=fingerprint,
        body=body,
        content_type=content_type,
        content_encoding=encoding,
        options=options_text,
    )
    delay = max(0.0, (eta - now).total_seconds()) if eta else 0.0
    return record, delay


def serializer_of(content_type: str) -> str | None:
    """The name of the serializer that wrote ``content_type`` (None: none registered)."""
    name: str | None = serialization.registry.type_to_name.get(content_type)
    return name


class UndecodableRecord(Exception):
    """A stored record that cannot be turned back into a call (never retried in a loop)."""


def decode(app: Celery, record: TaskRecord) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """The (args, kwargs, publish options) of a record, under the app's accept_content."""
    try:
        data: str | bytes = record.body
        encoding = record.content_encoding
        if encoding == BINARY:
            data, encoding = base64.b64decode(record.body), "binary"
        args, kwargs = serialization.loads(
            data, record.content_type, encoding,
            accept=serialization.prepare_accept_content(app.conf.accept_content),
        )
        options = json.loads(record.options)
        for name in ("eta", "expires"):
            if name in options:
                options[name] = datetime.fromisoformat(options[name])
    except (ContentDisallowed, DecodeError, ValueError, TypeError, KeyError) as exc:
        raise UndecodableRecord(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(options, dict):
        raise UndecodableRecord("record body is not (args, kwargs) with a dict of options")
    # A republish goes out, and a replay's record is written, with the serializer the
    # call was made with: send_task alone takes the app's default before Celery 5.7
    # (celery/celery#8542), and JSON would turn a pickle task's tuples into lists.
    options.setdefault("serializer", serializer_of(record.content_type))
    return args, kwargs, options


def expired(options: Mapping[str, Any], now: datetime | None = None) -> bool:
    expires = options.get("expires")
    return isinstance(expires, datetime) and expires <= (now or utcnow())
