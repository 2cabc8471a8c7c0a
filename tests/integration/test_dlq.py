"""The dead-letter queue (G4) with real workers on a real Redis and RabbitMQ broker.

Effects are counted in Redis, outside the worker; the DLQ queue is read through
kombu (taken with acks and put back); the index through the Python API.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from kombu import Connection, Exchange, Queue

from celery_reliable.dlq import DeadLetters
from celery_reliable.dlq.message import DeadLetterMessage
from celery_reliable.states import State, queries
from celery_reliable.stores.model import DeadLetterQuery
from tests.harness import wait_for
from tests.shopfixture import Shop

BROKERS = ["redis", "rabbitmq"]


def settled(shop: Shop) -> bool:
    """Nothing waiting in the task queue, nothing delivered and unacknowledged."""
    return shop.queue_length(shop.env["TEST_QUEUE"]) == 0 and shop.unacked() == 0


def dead_letter_ids(shop: Shop) -> list[str]:
    return [t.identity for t in shop.dlq_messages()]


@pytest.mark.parametrize("broker", BROKERS)
def test_final_failure_then_replay_after_the_fix_runs_once(
    make_shop: Callable[..., Shop], broker: str
) -> None:
    shop = make_shop(broker)
    letters = DeadLetters(shop.app)
    handle = shop.task("charge").delay(1, note="first try")
    with shop.worker():
        wait_for(lambda: letters.get(handle.id) is not None, 60, "the dead letter")
        wait_for(lambda: settled(shop), 30, "the original message to be acknowledged")
        entry = letters.get(handle.id)
        assert entry is not None
        assert (entry.reason, entry.exc_type, entry.attempts) == (
            "attempts_exhausted", "ConnectionError", 2)
        assert entry.queue == shop.env["TEST_QUEUE"]
        [taken] = shop.dlq_messages()
        message = taken.parsed
        assert isinstance(message, DeadLetterMessage) and message.task_id == handle.id
        assert json.loads(taken.body) == [[1], {"note": "first try"}]
        assert taken.headers["x-reliable-attempts"] == 2
        assert "the gateway is down (first try)" in (message.failure.traceback or "")
        assert "Traceback" in (message.failure.traceback or "")
        assert message.record.key == "charge:1"
        assert shop.counter.get("start", 1) == 2

        # the cause is fixed: a replay runs it once, with its key, from attempt 1
        shop.counter.client.set(f"{shop.env['TEST_PREFIX']}:gateway_fixed", 1)
        result = letters.replay([handle.id])
        assert result.replayed == [handle.id] and result.removed_from_queue == 1
        wait_for(lambda: shop.counter.get("effect", 1) == 1, 30, "the replayed task")
        assert shop.counter.get("start", 1) == 3
        again = letters.replay([handle.id])
        assert again.replayed == [] and again.skipped == [handle.id]
        assert shop.queue_length(shop.env["TEST_QUEUE"]) == 0  # nothing published
        assert dead_letter_ids(shop) == []

        def succeeded() -> bool:
            states = [t.state for t in queries.timeline(shop.app, task_id=handle.id)]
            return states[-1] is State.SUCCEEDED
        wait_for(succeeded, 10, "SUCCEEDED in the timeline")
        states = [t.state for t in queries.timeline(shop.app, task_id=handle.id)]
        assert states.count(State.DEAD_LETTERED) == 1
        assert states[states.index(State.DEAD_LETTERED) + 1] is State.REPLAYED

        # a forced replay of what succeeded meanwhile is absorbed by the claim
        assert letters.replay([handle.id], force=True).replayed == [handle.id]
        wait_for(lambda: settled(shop), 30, "the forced replay to be consumed")
    assert shop.counter.get("effect", 1) == 1
    assert shop.counter.get("start", 1) == 3


@pytest.mark.parametrize("broker", BROKERS)
def test_filtered_purge_and_replay_touch_exactly_the_matching_entries(
    make_shop: Callable[..., Shop], broker: str
) -> None:
    # 50 tasks wait in line longer than the default 4 s: no rescue copies meanwhile
    shop = make_shop(broker, TEST_RESCUE_AFTER="120")
    letters = DeadLetters(shop.app)
    charges = {shop.task("charge").delay(i, note="alpha" if i % 3 == 0 else "beta").id: i
               for i in range(25)}
    rejects = {shop.task("reject_input").delay(100 + i).id for i in range(25)}
    with shop.worker():
        wait_for(lambda: len(letters.list(limit=100).entries) == 50, 120, "50 dead letters")
        wait_for(lambda: settled(shop), 30, "every original message acknowledged")
        assert sorted(dead_letter_ids(shop)) == sorted([*charges, *rejects])

        purged = letters.purge(query=DeadLetterQuery(name="shop.reject_input"))
        assert {e.task_id for e in purged.purged} == rejects
        assert purged.removed_from_queue == 25
        assert {e.task_id for e in letters.list(limit=100).entries} == set(charges)
        assert sorted(dead_letter_ids(shop)) == sorted(charges)

        shop.counter.client.set(f"{shop.env['TEST_PREFIX']}:gateway_fixed", 1)
        alpha = {task_id for task_id, i in charges.items() if i % 3 == 0}
        result = letters.replay(query=DeadLetterQuery(text="(alpha)"))
        assert set(result.replayed) == alpha and result.removed_from_queue == len(alpha)
        wait_for(lambda: shop.counter.total("effect") == len(alpha), 60, "the replays")
        wait_for(lambda: settled(shop), 30, "the replays acknowledged")
    assert {charges[t] for t in alpha} == {
        i for i in range(25) if shop.counter.get("effect", i) == 1}
    assert sorted(dead_letter_ids(shop)) == sorted(set(charges) - alpha)
    assert letters.check(0).count == len(charges) - len(alpha)
    assert not letters.reconcile().changed


def test_a_slow_replay_holds_its_rate_and_the_rescuer_sends_nothing_early(
    make_shop: Callable[..., Shop],
) -> None:
    """5 entries at 2/s take 2 s, longer than rescue_after (1 s): each entry's record
    is due for rescue a rescue_after after its own planned publish, so the rescuer of
    the running worker (sweeping every 0.2 s) never republishes one the replay has not
    sent yet. (It did: the batch was persisted due in rescue_after, before the pacing.)"""
    shop = make_shop("redis", TEST_RESCUE_AFTER="1", TEST_RESCUE_INTERVAL="0.2")
    letters = DeadLetters(shop.app)
    handles = [shop.task("charge").delay(i) for i in range(5)]
    with shop.worker():
        wait_for(lambda: len(letters.list().entries) == 5, 60, "5 dead letters")
        wait_for(lambda: settled(shop), 30, "the original messages acknowledged")
        shop.counter.client.set(f"{shop.env['TEST_PREFIX']}:gateway_fixed", 1)
        result = letters.replay(query=DeadLetterQuery(), rate=2)
        assert len(result.replayed) == 5
        assert result.seconds >= 2.0  # sent at 0, 0.5, 1, 1.5 and 2 s
        wait_for(lambda: shop.counter.total("effect") == 5, 30, "the replays")
        wait_for(lambda: settled(shop), 30, "the replays acknowledged")
    for handle in handles:
        states = [t.state for t in queries.timeline(shop.app, task_id=handle.id)]
        after = states[states.index(State.REPLAYED):]
        assert State.RESCUED not in after, states
        assert after.count(State.RECEIVED) == 1, states  # one message per replayed entry
    assert shop.counter.total("start") == 5 * 3  # 2 attempts, then the replay


@pytest.mark.parametrize("broker", BROKERS)
def test_poison_messages_end_in_the_dlq(make_shop: Callable[..., Shop], broker: str) -> None:
    shop = make_shop(broker)
    letters = DeadLetters(shop.app)
    queue = shop.env["TEST_QUEUE"]
    target = Queue(queue, Exchange(queue), routing_key=queue)  # as Celery declares it
    with Connection(shop.env["TEST_BROKER_URL"]) as conn:
        producer = conn.Producer()
        # no task header and a body that is not JSON: Celery cannot even decode it
        producer.publish(b"{not json", routing_key=queue, exchange=target.exchange,
                         content_type="application/json", content_encoding="utf-8",
                         headers={"x-origin": "a broken producer"}, declare=[target])
        # a well-formed message of a task nobody registered
        producer.publish(json.dumps([[1], {}, {}]), routing_key=queue,
                         exchange=target.exchange, content_type="application/json",
                         content_encoding="utf-8",
                         headers={"task": "shop.no_such_task", "id": "ghost-1"})
    with shop.worker():
        wait_for(lambda: len(letters.list().entries) == 2, 30, "two poison dead letters")
        wait_for(lambda: settled(shop), 30, "the poison messages acknowledged")
        ok = shop.task("send_receipt").delay(5)
        assert ok.get(timeout=30)["order"] == 5  # the worker goes on
    by_reason = {e.reason: e for e in letters.list().entries}
    assert set(by_reason) == {"undecodable", "unknown_task"}
    assert by_reason["unknown_task"].task_id == "ghost-1"
    assert by_reason["unknown_task"].name == "shop.no_such_task"
    detail = letters.show(by_reason["undecodable"].task_id)
    assert detail is not None and detail.args is None and detail.raw_body == "{not json"
    assert sorted(dead_letter_ids(shop)) == sorted(e.task_id for e in by_reason.values())
    ghost = letters.show("ghost-1")
    assert ghost is not None and ghost.args == [1]  # kept replayable


@pytest.mark.parametrize("broker", BROKERS)
def test_worker_killed_between_the_dlq_publish_and_the_ack(
    make_shop: Callable[..., Shop], broker: str
) -> None:
    shop = make_shop(broker, TEST_KILL_AFTER_DLQ="1", TEST_VISIBILITY_TIMEOUT="3")
    letters = DeadLetters(shop.app)
    handle = shop.task("reject_input").delay(9)
    first = shop.new_worker().start()
    try:
        wait_for(lambda: not first.alive(), 30, "the worker to kill itself after the publish")
    finally:
        first.kill()
    assert shop.counter.get("killed", handle.id) == 1
    assert [e.task_id for e in letters.list().entries] == [handle.id]
    with shop.worker():
        # The redelivered copy is a stale copy of a dead letter: absorbed, not run again.
        wait_for(lambda: settled(shop), 60, "the redelivered copy acknowledged")
    assert shop.counter.get("start", 9) == 1
    assert [e.task_id for e in letters.list().entries] == [handle.id]  # one entry
    assert dead_letter_ids(shop) == [handle.id]  # one copy in the DLQ queue
    fixed = letters.reconcile()
    assert not fixed.duplicates_removed and not fixed.indexed and not fixed.republished


@pytest.mark.parametrize("broker", BROKERS)
def test_a_dead_letter_of_bad_input_replayed_with_corrected_kwargs_runs_once_with_them(
    make_shop: Callable[..., Shop], broker: str
) -> None:
    """Through the Python API and the command line: the replay keeps the task id and key,
    the body receives the corrected arguments, once, and the timeline names them."""
    from tests.integration.test_dlq_cli import cli

    shop = make_shop(broker)
    letters = DeadLetters(shop.app)
    mail = shop.task("mail_receipt")
    by_api, by_cli = mail.delay(1, email="nobody"), mail.delay(2, email="no-one")
    mailed = shop.counter.client
    with shop.worker():
        wait_for(lambda: all(letters.get(h.id) for h in (by_api, by_cli)), 60,
                 "both dead letters")
        wait_for(lambda: settled(shop), 30, "the original messages to be acknowledged")
        result = letters.replay([by_api.id], kwargs={"email": "one@example.com"})
        assert result.replayed == [by_api.id]
        replayed = cli(shop, "replay", by_cli.id, "--kwargs", '{"email": "two@example.com"}')
        assert replayed.returncode == 0, replayed.stderr
        for order_id in (1, 2):
            wait_for(lambda n=order_id: shop.counter.get("effect", n) == 1, 30,  # type: ignore[misc]
                     f"the corrected replay of order {order_id}")
        wait_for(lambda: settled(shop), 30, "the replays to be acknowledged")

        def succeeded(task_id: str) -> bool:
            timeline = queries.timeline(shop.app, task_id=task_id)
            return bool(timeline) and timeline[-1].state is State.SUCCEEDED
        for handle in (by_api, by_cli):
            wait_for(lambda h=handle: succeeded(h.id), 10, "SUCCEEDED in the timeline")  # type: ignore[misc]
    prefix = shop.env["TEST_PREFIX"]
    assert mailed.lrange(f"{prefix}:mailed:1", 0, -1) == ["one@example.com"]
    assert mailed.lrange(f"{prefix}:mailed:2", 0, -1) == ["two@example.com"]
    assert [shop.counter.get("start", n) for n in (1, 2)] == [2, 2]  # failed once, ran once
    for handle in (by_api, by_cli):
        timeline = queries.timeline(shop.app, task_id=handle.id)
        [replay] = [t for t in timeline if t.state is State.REPLAYED]
        assert replay.detail == {"replay": 1, "arguments_changed": ["email"]}
        assert {t.key for t in timeline} == {f"mail:{1 if handle is by_api else 2}"}
