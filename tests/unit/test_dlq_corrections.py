"""Replaying one dead letter with corrected arguments (memory transport and store)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_reliable import ARGUMENTS, PermanentError, ReliableTask
from celery_reliable.cli.dlq import reliable_dlq
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.errors import ConfigurationError
from celery_reliable.headers import HEADER_FINGERPRINT
from celery_reliable.runtime import runtime
from celery_reliable.states import State, queries, recorder
from celery_reliable.stores.model import DeadLetterQuery
from tests.unit.test_dlq_api import drain


def mailer(app: Celery, **options: Any) -> Any:
    """``shop.mail(order_id, email)``: fails for good on an address without '@'."""
    sent: list[tuple[int, str]] = []

    @app.task(base=ReliableTask, shared=False, name="shop.mail", **options)
    def mail(order_id: int, email: str, copy: bool = False) -> str:
        if "@" not in email:
            raise PermanentError(f"bad address {email!r}")
        sent.append((order_id, email))
        return email

    task = mail._get_current_object()
    task.sent = sent
    return task


def deliver(app: Celery, task: Any, message: Any) -> Any:
    """Run a published message as a worker would (its id and headers, eagerly)."""
    args, kwargs = message.decode()[:2]
    return task.apply(args, kwargs, task_id=message.headers["id"], headers={
        k: v for k, v in message.headers.items() if k.startswith("reliable_")})


def test_a_replay_with_corrected_kwargs_runs_once_with_them(app: Celery) -> None:
    mail = mailer(app, idempotency_key="mail:{order_id}")
    failed = mail.apply((7,), {"email": "nobody"})
    recorder(app).flush(force=True)  # the worker's DEAD_LETTERED, before the replay
    result = DeadLetters(app).replay([failed.id], kwargs={"email": "a@b.c"})
    assert result.replayed == [failed.id]
    [message] = drain(app, app.conf.task_default_queue)
    assert message.decode()[:2] == [[7], {"email": "a@b.c"}]
    assert message.headers["reliable_key"] == "mail:7"  # same task id and key
    key, fingerprint = mail.key_for((7,), {"email": "a@b.c"})
    assert message.headers[HEADER_FINGERPRINT] == fingerprint
    record = runtime(app).store.get_record(failed.id, key)
    assert record is not None and record.fingerprint == fingerprint  # what a rescue sends
    assert deliver(app, mail, message).get() == "a@b.c"
    assert mail.sent == [(7, "a@b.c")]
    recorder(app).flush(force=True)
    timeline = queries.timeline(app, task_id=failed.id)
    [replayed] = [t for t in timeline if t.state is State.REPLAYED]
    assert replayed.detail == {"replay": 1, "arguments_changed": ["email"]}  # names only
    assert timeline[-1].state is State.SUCCEEDED


def test_a_stale_copy_with_the_old_arguments_is_absorbed(app: Celery) -> None:
    mail = mailer(app, idempotency_key="mail:{order_id}")
    failed = mail.apply((7, "nobody"))
    old_fingerprint = mail.key_for((7, "nobody"), {})[1]
    DeadLetters(app).replay([failed.id], kwargs={"email": "a@b.c"})
    [message] = drain(app, app.conf.task_default_queue)
    assert message.decode()[:2] == [[7, "a@b.c"], {}]  # passed by position: corrected there
    stale = mail.apply((7, "nobody"), task_id=failed.id, headers={
        "reliable_key": "mail:7", HEADER_FINGERPRINT: old_fingerprint})
    assert stale.state == "IGNORED" and mail.sent == []
    assert runtime(app).counters["superseded_copy_absorbed"] == 1
    deliver(app, mail, message)
    assert mail.sent == [(7, "a@b.c")]


def test_positional_arguments_can_be_replaced(app: Celery) -> None:
    mail = mailer(app)  # keyed by its publish: any argument may change
    failed = mail.apply((7, "nobody"))
    DeadLetters(app).replay([failed.id], args=[8, "x@y.z"])
    [message] = drain(app, app.conf.task_default_queue)
    assert message.decode()[:2] == [[8, "x@y.z"], {}]
    assert message.headers["reliable_key"] == failed.id


def test_a_bulk_replay_with_arguments_is_refused(app: Celery) -> None:
    mail = mailer(app)
    one, two = mail.apply((1, "x")).id, mail.apply((2, "y")).id
    letters = DeadLetters(app)
    for selection in ({"task_ids": [one, two]}, {"query": DeadLetterQuery()}):
        with pytest.raises(ConfigurationError, match="corrected arguments replay one entry"):
            letters.replay(**selection, kwargs={"email": "a@b.c"})  # type: ignore[arg-type]
    assert drain(app, app.conf.task_default_queue) == []


def test_arguments_that_change_the_key_are_refused(app: Celery) -> None:
    mail = mailer(app, idempotency_key="mail:{order_id}")
    failed = mail.apply((7, "nobody"))
    with pytest.raises(ConfigurationError,
                       match=r"change the key of shop.mail from 'mail:7' to 'mail:8'.*purge"):
        DeadLetters(app).replay([failed.id], kwargs={"order_id": 8, "email": "a@b.c"})
    assert drain(app, app.conf.task_default_queue) == []


def test_an_arguments_key_may_be_corrected_only_in_an_excluded_argument(app: Celery) -> None:
    mail = mailer(app, idempotency_key=ARGUMENTS, fingerprint_exclude=("copy",))
    failed = mail.apply((7, "nobody"))
    with pytest.raises(ConfigurationError, match="change the key"):
        DeadLetters(app).replay([failed.id], kwargs={"email": "a@b.c"})


def test_a_name_the_task_does_not_take_is_refused(app: Celery) -> None:
    mail = mailer(app)
    failed = mail.apply((7, "nobody"))
    takes = r"do not fit shop.mail: it takes \(order_id, email, copy\), not 'emial'"
    with pytest.raises(ConfigurationError, match=takes):
        DeadLetters(app).replay([failed.id], kwargs={"emial": "a@b.c"})


def test_the_command_line_replays_with_kwargs_and_refuses_a_bulk_one(app: Celery) -> None:
    mail = mailer(app, idempotency_key="mail:{order_id}")
    failed = mail.apply((7,), {"email": "nobody"})
    other = mail.apply((8,), {"email": "nobody"})

    def run(*args: str) -> Any:
        return CliRunner().invoke(reliable_dlq, list(args), obj=SimpleNamespace(app=app))

    bulk = run("replay", "--all", "--kwargs", '{"email": "a@b.c"}')
    assert bulk.exit_code == 2 and "corrected arguments replay one entry" in bulk.output
    bad = run("replay", failed.id, "--kwargs", "[1]")
    assert bad.exit_code == 2 and "a JSON object" in bad.output
    done = run("replay", failed.id, "--kwargs", json.dumps({"email": "a@b.c"}), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["replayed"] == [failed.id]
    [message] = drain(app, app.conf.task_default_queue)
    assert message.decode()[:2] == [[7], {"email": "a@b.c"}]
    assert DeadLetters(app).get(other.id) is not None  # untouched
