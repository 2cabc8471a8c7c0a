"""The dead-letter message: built from a record, read back, and never trusted."""

from __future__ import annotations

import base64
import json
import pickle

import pytest
from celery import Celery

from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.broker import identity
from celery_reliable.dlq.message import (
    H_ATTEMPTS,
    H_FORMAT,
    H_TASK_ID,
    DeadLetterMessage,
    Unreadable,
    build,
    parse,
)
from celery_reliable.runtime import runtime
from celery_reliable.stores.model import Failure, TaskRecord


def dead_record(body: str = '[[42], {"x": 1}]', content_type: str = "application/json",
                encoding: str = "utf-8") -> TaskRecord:
    return TaskRecord(
        task_id="t1", name="shop.pay", key="pay:42", fingerprint="f" * 16, body=body,
        content_type=content_type, content_encoding=encoding,
        options=json.dumps({"queue": "payments", "headers": {"reliable_key": "pay:42"}}),
        published_at=1.5, state="dead", reason="failed", error="ValueError: no", dead_at=2.25,
    )


def test_round_trip_keeps_the_call_and_the_failure() -> None:
    failure = Failure("ValueError", "Traceback...\nValueError: no", 5, "w1@host", "payments")
    message = build(dead_record(), failure, 8192, exchange="payments", routing_key="payments")
    body, content_type, encoding = message.body()
    assert (body, content_type, encoding) == ('[[42], {"x": 1}]', "application/json", "utf-8")
    parsed = parse(message.headers(), body.encode() if isinstance(body, str) else body,
                   content_type, encoding)
    assert isinstance(parsed, DeadLetterMessage)
    assert parsed.record == dead_record()
    assert parsed.failure == failure
    assert (parsed.exchange, parsed.routing_key) == ("payments", "payments")


def test_binary_body_round_trips_as_base64() -> None:
    raw = pickle.dumps(([1], {}))
    record = dead_record(base64.b64encode(raw).decode(), "application/x-python-serialize",
                         "base64")
    message = build(record, Failure(), 100)
    body, content_type, encoding = message.body()
    assert body == raw and encoding == "binary"
    parsed = parse(message.headers(), body if isinstance(body, bytes) else b"", content_type,
                   encoding)
    assert isinstance(parsed, DeadLetterMessage) and parsed.record.body == record.body


def test_traceback_is_cut_to_its_end() -> None:
    tb = "".join(f"line {i}\n" for i in range(1000))
    message = build(dead_record(), Failure(traceback=tb), 100)
    assert message.failure.traceback is not None
    assert message.failure.traceback.endswith("line 999\n")
    assert len(message.failure.traceback) <= 104


@pytest.mark.parametrize("headers", [None, {}, {"task": "shop.pay", "id": "x"}, "text"])
def test_foreign_messages(headers: object) -> None:
    parsed = parse(headers, b"whatever", "application/json", "utf-8")  # type: ignore[arg-type]
    assert isinstance(parsed, Unreadable) and parsed.kind == "foreign"


@pytest.mark.parametrize("change", [
    {H_FORMAT: 99}, {H_ATTEMPTS: "three"}, {"x-reliable-options": "[1, 2]"},
    {"x-reliable-options": "{not json"}, {"x-reliable-task": ""},
    {"x-reliable-dead-at": "yesterday"},
])
def test_malformed_messages(change: dict[str, object]) -> None:
    headers = {**build(dead_record(), Failure(), 100).headers(), **change}
    parsed = parse(headers, b"[[], {}]", "application/json", "utf-8")
    assert isinstance(parsed, Unreadable) and parsed.kind == "malformed"
    assert parsed.task_id == "t1"


def test_identity_of_unreadable_messages_is_stable() -> None:
    foreign = parse({}, b"x", None, None)
    assert identity(foreign, b"x", {}) == identity(foreign, b"x", {})
    assert identity(foreign, b"x", {}) != identity(foreign, b"y", {})
    assert identity(foreign, b"x", {}).startswith("foreign-")
    ours = parse(build(dead_record(), Failure(), 1).headers(), b"[]", "application/json", None)
    assert identity(ours, b"[]", {H_TASK_ID: "t1"}) == "t1"


def test_a_pickle_body_is_never_deserialized(app: Celery) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pickle was loaded!",))

    raw = base64.b64encode(pickle.dumps(((Boom(),), {}))).decode()
    record = dead_record(raw, "application/x-python-serialize", "base64")
    runtime(app).store.dead_letter("t1", "pay:42", "failed", "boom", fallback=record)
    letters = DeadLetters(app)
    detail = letters.show("t1")
    assert detail is not None and detail.args is None
    assert detail.body_note is not None and "accept_content" in detail.body_note
    assert detail.raw_body == raw[:2000]
    result = letters.replay(["t1"])
    assert result.replayed == [] and "application/x-python-serialize" in result.refused["t1"]
    assert letters.get("t1") is not None and not letters.get("t1").replayed  # type: ignore[union-attr]
