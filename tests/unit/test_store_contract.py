"""The store contract (DESIGN §5), run against every backend.

Each backend must pass the same tests: memory, fakeredis and real Redis,
SQLite, PostgreSQL and MariaDB.  Lease expiry is waited for as a condition with a
deadline, never with a fixed sleep.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest

from celery_reliable.stores import (
    ClaimStatus,
    DeadLetterQuery,
    Failure,
    Lease,
    PublishStatus,
    Store,
    SweepPolicy,
    TaskRecord,
)
from tests.harness import dead_records

FP = "f" * 16
SHORT = 0.3


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def record(key: str, task_id: str | None = None, fp: str = FP) -> TaskRecord:
    return TaskRecord(
        task_id=task_id or uuid.uuid4().hex,
        name="shop.send_receipt",
        key=key,
        fingerprint=fp,
        body='[[42], {}, {}]',
        content_type="application/json",
        content_encoding="utf-8",
        options=json.dumps({"queue": "celery"}),
    )


def test_claim_busy_complete_done(any_store: Store) -> None:
    first = any_store.claim("k1", FP, "t1", "owner-a", 30, max_lost=3)
    assert first.status is ClaimStatus.CLAIMED
    busy = any_store.claim("k1", FP, "t2", "owner-b", 30, max_lost=3)
    assert busy.status is ClaimStatus.BUSY
    assert busy.task_id == "t1"
    assert 0 < busy.lease_left <= 30
    assert any_store.complete("k1", FP, "owner-a", "t1", '{"sent": true}', retention=60)
    done = any_store.claim("k1", FP, "t3", "owner-c", 30, max_lost=3)
    assert done.status is ClaimStatus.DONE
    assert done.task_id == "t1"
    assert done.result == '{"sent": true}'
    state = any_store.get_key("k1")
    assert state is not None and state.state == "done"


def test_complete_soon_answers_as_complete_does_and_is_settled_after_drain(
    any_store: Store,
) -> None:
    answers: list[tuple[object, object]] = []
    assert any_store.claim("k1", FP, "t1", "owner-a", 30, max_lost=3).runs
    any_store.complete_soon("k1", FP, "owner-b", "t1", None, 60, lambda *a: answers.append(a))
    any_store.complete_soon("k1", FP, "owner-a", "t1", "7", 60, lambda *a: answers.append(a))
    any_store.drain()
    assert answers == [(False, None), (True, None)]  # fenced, then done
    done = any_store.claim("k1", FP, "t2", "owner-c", 30, max_lost=3)
    assert done.status is ClaimStatus.DONE and done.result == "7"


def test_done_without_kept_result(any_store: Store) -> None:
    any_store.claim("k", FP, "t1", "a", 30, max_lost=3)
    assert any_store.complete("k", FP, "a", "t1", None, retention=60)
    assert any_store.claim("k", FP, "t2", "b", 30, max_lost=3).result is None


def test_takeover_after_lease_lapses_and_fencing(any_store: Store) -> None:
    assert any_store.claim("k", FP, "t1", "a", SHORT, max_lost=3).runs
    claims = []

    def taken() -> bool:
        claims.append(any_store.claim("k", FP, "t1", "b", 30, max_lost=3))
        return claims[-1].runs

    wait_until(taken)
    assert claims[-1].status is ClaimStatus.TAKEN_OVER
    assert claims[-1].lost == 1
    # The first owner lost its lease: none of its writes may land.
    assert any_store.heartbeat([Lease("k", "a", "t1")], 30) == [False]
    assert not any_store.complete("k", FP, "a", "t1", None, retention=60)
    assert not any_store.release("k", "a", "t1", requeued=False)
    state = any_store.get_key("k")
    assert state is not None and state.owner == "b"
    assert any_store.complete("k", FP, "b", "t1", None, retention=60)


def test_heartbeat_keeps_the_lease(any_store: Store) -> None:
    assert any_store.claim("k", FP, "t1", "a", 1.0, max_lost=3).runs
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        assert any_store.heartbeat([Lease("k", "a", "t1")], 1.0) == [True]
        assert any_store.claim("k", FP, "t2", "b", 1.0, max_lost=3).status is ClaimStatus.BUSY
        time.sleep(0.2)


def outage(seconds: float) -> None:
    """What a store sees of an outage that cuts every worker off (it restarts, or its
    network is down): no operation at all for ``seconds``.  The sleep is the outage
    itself, not a wait for a condition."""
    time.sleep(seconds)


def test_a_lease_that_lapses_while_nobody_reaches_the_store_is_not_taken_over(
    any_store: Store,
) -> None:
    any_store.outage_after = 0.3
    rec = record("k")
    assert any_store.publish(rec, 60, dedupe=True).status is PublishStatus.NEW
    assert any_store.claim("k", FP, rec.task_id, "a", 1.0, max_lost=3).runs
    outage(1.5)  # longer than the lease: nobody could renew it
    # The lease still has the second it had left when the silence began...
    busy = any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3)
    assert busy.status is ClaimStatus.BUSY, busy
    assert 0.5 < busy.lease_left <= 1.0 + 0.3  # (+ how stale "last seen" may be)
    assert any_store.lookup("k", FP).status is PublishStatus.IN_FLIGHT
    assert any_store.sweep(SweepPolicy(60, 60, 10)) == []  # ...and the rescuer waits too
    outage(1.5)  # silences add up
    assert any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3).status is ClaimStatus.BUSY
    # Its owner, back in touch, renews it and completes: nothing ran twice.
    assert any_store.heartbeat([Lease("k", "a", rec.task_id)], 1.0) == [True]
    assert any_store.complete("k", FP, "a", rec.task_id, None, retention=60)
    assert any_store.claim("k", FP, "t2", "c", 30, max_lost=3).status is ClaimStatus.DONE


def test_a_lease_lapses_as_usual_while_the_store_is_in_use(any_store: Store) -> None:
    any_store.outage_after = 0.3
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    assert any_store.claim("k", FP, rec.task_id, "a", 0.5, max_lost=3).runs
    claims = []

    def taken() -> bool:  # other workers reach the store every 20 ms meanwhile
        claims.append(any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3))
        return claims[-1].runs

    wait_until(taken)
    assert claims[-1].status is ClaimStatus.TAKEN_OVER


def test_a_silence_shorter_than_outage_after_counts(any_store: Store) -> None:
    any_store.outage_after = 5.0
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    assert any_store.claim("k", FP, rec.task_id, "a", 0.3, max_lost=3).runs
    outage(0.6)  # twice the lease, but no outage to the store: its owner could renew
    assert any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3).status is (
        ClaimStatus.TAKEN_OVER
    )


def test_a_heartbeat_never_pulls_a_republished_retry_forward(any_store: Store) -> None:
    # The body failed and republished itself for a retry (due after its countdown);
    # a heartbeat that lands before the release must not make it due at the lease's end.
    policy = SweepPolicy(rescue_after=30, backoff_cap=30, limit=100)
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    assert any_store.claim("k", FP, rec.task_id, "a", SHORT, max_lost=3).runs
    any_store.publish(rec, 60, dedupe=False)
    assert any_store.heartbeat([Lease("k", "a", rec.task_id)], SHORT) == [True]
    assert any_store.release("k", "a", rec.task_id, requeued=True)
    time.sleep(SHORT * 2)  # past the lease the heartbeat would have set
    assert any_store.sweep(policy) == []


def test_same_owner_reclaims(any_store: Store) -> None:
    # An owner names one execution: its claim made again (the first reply was lost
    # with the connection) is the same claim, not a lost attempt.
    assert any_store.claim("k", FP, "t1", "a", 30, max_lost=3).runs
    again = any_store.claim("k", FP, "t1", "a", 30, max_lost=3)
    assert again.status is ClaimStatus.CLAIMED
    assert again.lost == 0
    state = any_store.get_key("k")
    assert state is not None and state.owner == "a" and state.lost == 0


def test_claim_soon_answers_as_claim_does(any_store: Store) -> None:
    first = any_store.claim_soon("k", FP, "t1", "a", 30, max_lost=3)
    second = any_store.claim_soon("k", FP, "t2", "b", 30, max_lost=3)
    conflict = any_store.claim_soon("k", "0" * 16, "t3", "c", 30, max_lost=3)
    assert second().status is ClaimStatus.BUSY  # answers may be asked for in any order
    assert first().status is ClaimStatus.CLAIMED
    assert conflict().status is ClaimStatus.CONFLICT
    assert any_store.complete("k", FP, "a", "t1", "7", retention=60)
    done = any_store.claim_soon("k", FP, "t4", "d", 30, max_lost=3)()
    assert done.status is ClaimStatus.DONE and done.task_id == "t1" and done.result == "7"


def test_fingerprint_conflict(any_store: Store) -> None:
    any_store.claim("k", FP, "t1", "a", 30, max_lost=3)
    conflict = any_store.claim("k", "0" * 16, "t2", "b", 30, max_lost=3)
    assert conflict.status is ClaimStatus.CONFLICT
    assert conflict.task_id == "t1"
    outcome = any_store.publish(record("k", fp="1" * 16), 60, dedupe=True)
    assert outcome.status is PublishStatus.CONFLICT


def test_a_done_key_keeps_all_64_bits_of_the_fingerprint(any_store: Store) -> None:
    task_id = str(uuid.uuid4())  # a UUID: the Redis store packs it into the done value
    assert any_store.claim("k", FP, task_id, "a", 30, max_lost=3).runs
    assert any_store.complete("k", FP, "a", task_id, None, retention=60)
    state = any_store.get_key("k")
    assert state is not None and state.fingerprint == FP and state.task_id == task_id
    late = "f" * 8 + "0" * 8  # the same first 32 bits, other arguments
    assert any_store.claim("k", late, "t2", "b", 30, max_lost=3).status is ClaimStatus.CONFLICT
    outcome = any_store.publish(record("k", fp=late), 60, dedupe=True)
    assert outcome.status is PublishStatus.CONFLICT and outcome.task_id == task_id
    assert any_store.lookup("k", late).status is PublishStatus.CONFLICT
    assert any_store.claim("k", FP, "t3", "c", 30, max_lost=3).status is ClaimStatus.DONE


def test_release_requeued_keeps_key_in_flight(any_store: Store) -> None:
    any_store.claim("k", FP, "t1", "a", 30, max_lost=3)
    assert any_store.release("k", "a", "t1", requeued=True)
    state = any_store.get_key("k")
    assert state is not None and state.state == "queued" and state.task_id == "t1"
    assert any_store.publish(record("k"), 60, dedupe=True).status is PublishStatus.IN_FLIGHT
    assert any_store.claim("k", FP, "t1", "b", 30, max_lost=3).status is ClaimStatus.CLAIMED
    assert any_store.release("k", "b", "t1", requeued=False)
    assert any_store.get_key("k") is None


def test_a_key_of_a_publish_is_its_task_id_and_a_later_publish_of_it_is_absorbed(
    any_store: Store,
) -> None:
    """No declared key: key and task id are one string.  A second publish of that id
    after the completion (a forced replay, a canvas re-sending a frozen id) writes a
    record again; the claim that finds the key done drops it, or the rescuer would
    bring it back for ever."""
    task_id = str(uuid.uuid4())
    first = record(task_id, task_id)
    assert any_store.publish(first, 60, dedupe=False).status is PublishStatus.NEW
    assert any_store.claim(task_id, FP, task_id, "a", 30, max_lost=3).runs
    assert any_store.complete(task_id, FP, "a", task_id, "null", retention=60)
    done = any_store.get_key(task_id)
    assert done is not None and done.state == "done" and done.task_id == task_id
    assert any_store.publish(record(task_id, task_id), 60, dedupe=False).status is not None
    assert any_store.pending_count() == 1
    again = any_store.claim(task_id, FP, task_id, "b", 30, max_lost=3)
    assert again.status is ClaimStatus.DONE and again.task_id == task_id
    assert any_store.pending_count() == 0


def test_publish_dedupe_and_record_lifecycle(any_store: Store) -> None:
    first = record("order:1")
    assert any_store.publish(first, 60, dedupe=True).status is PublishStatus.NEW
    again = any_store.publish(record("order:1"), 60, dedupe=True)
    assert again.status is PublishStatus.IN_FLIGHT
    assert again.task_id == first.task_id
    assert any_store.pending_count() == 1
    stored = any_store.get_record(first.task_id, "order:1")
    assert stored is not None
    assert stored.body == first.body and json.loads(stored.options) == {"queue": "celery"}
    assert stored.published_at > 0

    assert any_store.claim("order:1", FP, first.task_id, "a", 30, max_lost=3).runs
    assert any_store.get_record(first.task_id, "order:1").state == "running"  # type: ignore[union-attr]
    assert any_store.complete("order:1", FP, "a", first.task_id, "null", retention=60)
    assert any_store.get_record(first.task_id, "order:1") is None
    assert any_store.pending_count() == 0
    done = any_store.publish(record("order:1"), 60, dedupe=True)
    assert done.status is PublishStatus.DONE and done.task_id == first.task_id


def test_publish_many_answers_each_as_publish_would(any_store: Store) -> None:
    any_store.claim("done", FP, "t-done", "a", 30, max_lost=3)
    any_store.complete("done", FP, "a", "t-done", None, retention=60)
    fresh, again = record("new"), record("done")
    outcomes = any_store.publish_many([(fresh, 60), (again, 60)], dedupe=True)
    assert [o.status for o in outcomes] == [PublishStatus.NEW, PublishStatus.DONE]
    assert outcomes[1].task_id == "t-done"
    assert any_store.get_record(fresh.task_id, "new") is not None
    assert any_store.get_record(again.task_id, "done") is None
    assert any_store.publish_many([], dedupe=False) == []
    # a later record of a key sees what an earlier one of the batch decided
    first, second = record("same"), record("same")
    outcomes = any_store.publish_many([(first, 60), (second, 60)], dedupe=True)
    assert [(o.status, o.task_id) for o in outcomes] == [
        (PublishStatus.NEW, first.task_id), (PublishStatus.IN_FLIGHT, first.task_id)]
    # a record written again (a retry re-persists) and a key whose retention ran out
    any_store.claim("gone", FP, "t-gone", "a", 30, max_lost=3)
    any_store.complete("gone", FP, "a", "t-gone", None, retention=SHORT)
    wait_until(lambda: any_store.get_key("gone") is None)
    again = any_store.publish_many([(fresh, 60), (record("gone"), 60)], dedupe=False)
    assert [o.status for o in again] == [PublishStatus.NEW, PublishStatus.NEW]
    assert any_store.get_key("gone").state == "queued"  # type: ignore[union-attr]
    assert any_store.pending_count() == 3  # fresh (once), first, and the one of "gone"


def test_publish_without_dedupe_never_downgrades_done(any_store: Store) -> None:
    any_store.claim("k", FP, "t1", "a", 30, max_lost=3)
    any_store.complete("k", FP, "a", "t1", "1", retention=60)
    copy = record("k")
    assert any_store.publish(copy, 60, dedupe=False).status is PublishStatus.NEW
    assert any_store.get_key("k").state == "done"  # type: ignore[union-attr]
    # The copy is absorbed by its claim and its record dropped.
    assert any_store.claim("k", FP, copy.task_id, "b", 30, max_lost=3).status is ClaimStatus.DONE
    assert any_store.get_record(copy.task_id, "k") is None


def test_lookup_only_trusts_done_and_live_leases(any_store: Store) -> None:
    assert any_store.lookup("k", FP).status is PublishStatus.NEW
    any_store.publish(record("k"), 60, dedupe=True)
    assert any_store.lookup("k", FP).status is PublishStatus.NEW  # queued: may be lost
    any_store.claim("k", FP, "t1", "a", 30, max_lost=3)
    assert any_store.lookup("k", FP).status is PublishStatus.IN_FLIGHT
    any_store.complete("k", FP, "a", "t1", None, retention=60)
    assert any_store.lookup("k", FP).status is PublishStatus.DONE
    assert any_store.lookup("k", "2" * 16).status is PublishStatus.CONFLICT


def test_soon_calls_answer_like_the_calls(any_store: Store) -> None:
    """publish_soon / lookup_soon: the same outcomes, whenever the answer is read."""
    first, second = record("k"), record("k")
    first_answer = any_store.publish_soon(first, 60, dedupe=True)
    second_answer = any_store.publish_soon(second, 60, dedupe=True)
    assert first_answer().status is PublishStatus.NEW
    duplicate = second_answer()
    assert (duplicate.status, duplicate.task_id) == (PublishStatus.IN_FLIGHT, first.task_id)
    assert any_store.lookup_soon("k", FP)().status is PublishStatus.NEW  # queued
    any_store.claim("k", FP, first.task_id, "a", 30, max_lost=3)
    assert any_store.lookup_soon("k", FP)().status is PublishStatus.IN_FLIGHT
    assert any_store.lookup_soon("k", "2" * 16)().status is PublishStatus.CONFLICT


def test_lost_too_often_stays_dead_until_republished(any_store: Store) -> None:
    assert any_store.claim("k", FP, "t1", "a", SHORT, max_lost=2).status is ClaimStatus.CLAIMED
    wait_until(lambda: any_store.claim("k", FP, "t1", "b", SHORT, max_lost=2).runs)
    results = []

    def gave_up() -> bool:
        results.append(any_store.claim("k", FP, "t1", "c", SHORT, max_lost=2))
        return results[-1].status is not ClaimStatus.BUSY

    wait_until(gave_up)
    assert results[-1].status is ClaimStatus.LOST_TOO_OFTEN
    assert results[-1].lost == 2
    # A stale copy delivered later is absorbed, not run.
    assert any_store.claim("k", FP, "t1", "d", 30, max_lost=2).status is ClaimStatus.LOST_TOO_OFTEN
    # A fresh publish is a fresh decision.
    assert any_store.publish(record("k"), 60, dedupe=True).status is PublishStatus.NEW


def test_sweep_takes_each_expiry_once_and_backs_off(any_store: Store) -> None:
    policy = SweepPolicy(rescue_after=0.5, backoff_cap=10, limit=100)
    lost = record("k")
    any_store.publish(lost, 0.001, dedupe=True)
    taken: list[TaskRecord] = []
    wait_until(lambda: bool(taken.extend(any_store.sweep(policy)) or taken))
    assert [r.task_id for r in taken] == [lost.task_id]
    assert taken[0].rescues == 0 and taken[0].state == "queued"
    assert taken[0].body == lost.body
    assert any_store.sweep(policy) == []  # its deadline moved: not taken twice
    again: list[TaskRecord] = []
    wait_until(lambda: bool(again.extend(any_store.sweep(policy)) or again))
    assert again[0].rescues == 1


def test_claim_moves_deadline_to_lease_and_complete_clears_it(any_store: Store) -> None:
    policy = SweepPolicy(rescue_after=30, backoff_cap=30, limit=100)
    rec = record("k")
    any_store.publish(rec, 0.001, dedupe=True)
    assert any_store.claim("k", FP, rec.task_id, "a", 30, max_lost=3).runs
    time.sleep(0.05)
    assert any_store.sweep(policy) == []
    assert any_store.complete("k", FP, "a", rec.task_id, None, retention=60)
    assert any_store.pending_count() == 0


def test_expired_lease_is_swept_as_running(any_store: Store) -> None:
    policy = SweepPolicy(rescue_after=30, backoff_cap=30, limit=100)
    rec = record("k")
    any_store.publish(rec, 30, dedupe=True)
    any_store.claim("k", FP, rec.task_id, "a", SHORT, max_lost=3)
    taken: list[TaskRecord] = []
    wait_until(lambda: bool(taken.extend(any_store.sweep(policy)) or taken))
    assert taken[0].task_id == rec.task_id and taken[0].state == "running"
    # Republished, it waits for a worker again.
    assert any_store.get_record(rec.task_id, "k").state == "queued"  # type: ignore[union-attr]


def test_sweeper_lease_admits_one(any_store: Store) -> None:
    assert any_store.acquire_sweeper("w1", 30)
    assert not any_store.acquire_sweeper("w2", 30)
    assert any_store.acquire_sweeper("w1", 30)


def test_dead_letter_moves_record(any_store: Store) -> None:
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    any_store.dead_letter(rec.task_id, "k", "worker_lost", "killed 3 times")
    assert any_store.pending_count() == 0
    dead = any_store.get_record(rec.task_id, "k")
    assert dead is not None and dead.state == "dead" and dead.reason == "worker_lost"
    any_store.dead_letter("t-none", "k2", "failed", "boom", fallback=record("k2", "t-none"))
    letters = dead_records(any_store)
    assert {r.task_id for r in letters} == {rec.task_id, "t-none"}
    assert all(r.dead_at for r in letters)
    by_id = {r.task_id: r for r in letters}
    assert by_id["t-none"].name == "shop.send_receipt" and by_id["t-none"].error == "boom"


def test_dead_letter_forgets_a_key_still_in_flight(any_store: Store) -> None:
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    any_store.dead_letter(rec.task_id, "k", "expired", None)
    assert any_store.get_key("k") is None
    assert any_store.publish(record("k"), 60, dedupe=True).status is PublishStatus.NEW
    # a key done by another task is left alone
    any_store.claim("k2", FP, "t1", "a", 30, max_lost=3)
    any_store.complete("k2", FP, "a", "t1", None, retention=60)
    any_store.dead_letter("t2", "k2", "expired", None, fallback=record("k2", "t2"))
    assert any_store.get_key("k2").state == "done"  # type: ignore[union-attr]


def test_a_dead_lettered_task_runs_again_only_after_a_replay(any_store: Store) -> None:
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    assert any_store.claim("k", FP, rec.task_id, "a", 30, max_lost=3).runs
    assert any_store.release("k", "a", rec.task_id, requeued=False)
    any_store.dead_letter(rec.task_id, "k", "attempts_exhausted", "ValueError: no")
    # a stale copy of that task (a redelivery, an earlier rescue) is absorbed
    stale = any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3)
    assert stale.status is ClaimStatus.DEAD_LETTERED and not stale.runs
    assert any_store.get_key("k") is None
    # so is one that republished itself first (deferred by the retry budget): the key
    # and record its publish wrote go, or the rescuer would send it again
    assert any_store.publish(rec, 60, dedupe=False).status is PublishStatus.NEW
    deferred = any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3)
    assert deferred.status is ClaimStatus.DEAD_LETTERED
    assert any_store.get_key("k") is None and any_store.pending_count() == 0
    assert any_store.get_dead_letter(rec.task_id) is not None
    # another task of the key is a new decision
    other = any_store.claim("k", FP, "t-other", "c", 30, max_lost=3)
    assert other.runs
    assert any_store.release("k", "c", "t-other", requeued=False)
    # a replay runs it (and only one replay until it fails again)
    assert any_store.claim_replays([rec.task_id], force=False) == [rec.task_id]
    assert any_store.claim("k", FP, rec.task_id, "d", 30, max_lost=3).runs


def test_a_replay_with_corrected_arguments_supersedes_the_tasks_older_copies(
    any_store: Store,
) -> None:
    """A dead letter replayed with other arguments keeps its task id and key, with a new
    fingerprint: the store takes it, and a stale copy with the old arguments is absorbed
    (never run, nothing written) whether the key is queued, running or done."""
    rec, new = record("k"), "2" * 16
    any_store.publish(rec, 60, dedupe=True)
    assert any_store.claim("k", FP, rec.task_id, "a", 30, max_lost=3).runs
    assert any_store.release("k", "a", rec.task_id, requeued=False)
    any_store.dead_letter(rec.task_id, "k", "permanent_error", "ValueError: bad email")
    assert any_store.claim_replays([rec.task_id], force=False) == [rec.task_id]
    corrected = replace(rec, fingerprint=new, body='[[42], {"email": "a@b.c"}, {}]')
    assert any_store.publish_many([(corrected, 60)], dedupe=False)[0].status is PublishStatus.NEW
    stale = any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3)
    assert stale.status is ClaimStatus.SUPERSEDED and not stale.runs
    assert any_store.get_key("k").fingerprint == new  # type: ignore[union-attr]
    assert any_store.pending_count() == 1  # the replay's record stays, for the rescuer
    assert any_store.claim("k", new, rec.task_id, "c", 30, max_lost=3).runs
    assert any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3).status is (
        ClaimStatus.SUPERSEDED)
    assert any_store.complete("k", new, "c", rec.task_id, None, 60)
    done = any_store.claim("k", FP, str(uuid.uuid4()), "d", 30, max_lost=3)
    assert done.status is ClaimStatus.CONFLICT  # another task with the old arguments
    assert any_store.claim("k", FP, rec.task_id, "b", 30, max_lost=3).status is (
        ClaimStatus.SUPERSEDED)


def test_a_task_published_again_with_other_arguments_takes_its_queued_key(
    any_store: Store,
) -> None:
    """Its newest publish is the task: a copy left queued (a stale copy deferred after
    the dead-lettering) must not make the corrected replay look stale."""
    task_id = str(uuid.uuid4())  # a UUID: Redis keeps it compacted in a done key
    rec = record("k", task_id)
    any_store.publish(rec, 60, dedupe=False)
    any_store.publish(replace(rec, fingerprint="3" * 16), 60, dedupe=False)
    assert any_store.get_key("k").fingerprint == "3" * 16  # type: ignore[union-attr]
    assert any_store.claim("k", FP, task_id, "a", 30, max_lost=3).status is (
        ClaimStatus.SUPERSEDED)
    assert any_store.claim("k", "3" * 16, task_id, "b", 30, max_lost=3).runs
    assert any_store.complete("k", "3" * 16, "b", task_id, None, 60)
    assert any_store.claim("k", FP, task_id, "a", 30, max_lost=3).status is (
        ClaimStatus.SUPERSEDED)


def test_discard_drops_record(any_store: Store) -> None:
    rec = record("k")
    any_store.publish(rec, 60, dedupe=False)
    any_store.discard(rec.task_id, "k")
    assert any_store.get_record(rec.task_id, "k") is None
    assert any_store.pending_count() == 0


def test_ping(any_store: Store) -> None:
    any_store.ping()


@pytest.mark.parametrize("n", [50])
def test_concurrent_claims_admit_one_owner(any_store: Store, n: int) -> None:
    import threading

    statuses: list[ClaimStatus] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        for j in range(n // 8):
            statuses.append(any_store.claim("hot", FP, f"t{i}", f"o{i}-{j}", 30, 3).status)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(ClaimStatus.CLAIMED) == 1
    assert set(statuses) == {ClaimStatus.CLAIMED, ClaimStatus.BUSY}


def test_budget_caps_retries_by_first_attempts(any_store: Store) -> None:
    any_store.budget_deposit("mailer", 10)
    # 20% of 10 first attempts + a floor of 0.1/s over 10 s = 3 retries
    granted = [any_store.budget_withdraw("mailer", 0.2, 0.1, 10) for _ in range(6)]
    assert granted == [True, True, True, False, False, False]
    assert any_store.budget_withdraw("other", 0.2, 0.1, 10)  # scopes are separate
    any_store.budget_deposit("mailer", 5)
    assert any_store.budget_withdraw("mailer", 0.2, 0.1, 10)


def test_breaker_opens_probes_and_closes(any_store: Store) -> None:
    assert any_store.breaker_check("smtp", "w1", 5).state == "closed"
    assert any_store.breaker_report("smtp", False, threshold=2, cool_down=0.3) == "closed"
    assert any_store.breaker_report("smtp", False, threshold=2, cool_down=0.3) == "open"
    check = any_store.breaker_check("smtp", "w1", 5)
    assert not check.allowed and check.state == "open" and 0 < check.wait <= 0.3
    wait_until(lambda: any_store.breaker_check("smtp", "w1", 5).allowed)
    probing = any_store.breaker_check("smtp", "w2", 5)
    assert not probing.allowed and probing.state == "probing"  # one probe at a time
    # the probe fails: open again for a full cool-down
    assert any_store.breaker_report("smtp", False, threshold=2, cool_down=0.3) == "open"
    assert not any_store.breaker_check("smtp", "w2", 5).allowed
    wait_until(lambda: any_store.breaker_check("smtp", "w2", 5).state == "half_open")
    assert any_store.breaker_report("smtp", True, threshold=2, cool_down=0.3) == "closed"
    assert any_store.breaker_check("smtp", "w1", 5).failures == 0


@pytest.mark.parametrize("task_id", ["not-a-uuid", "z" * 8 + "-aaaa-bbbb-cccc-" + "d" * 12])
def test_done_keys_keep_any_task_id(any_store: Store, task_id: str) -> None:
    any_store.claim("k", FP, task_id, "a", 30, max_lost=3)
    assert any_store.complete("k", FP, "a", task_id, '{"x": 1}', retention=60)
    done = any_store.claim("k", FP, "copy", "b", 30, max_lost=3)
    assert (done.status, done.task_id, done.result) == (ClaimStatus.DONE, task_id, '{"x": 1}')


# -- the dead-letter index -----------------------------------------------------------
def _letter(store: Store, i: int, *, name: str = "shop.a", reason: str = "failed",
            exc: str = "ValueError", queue: str = "celery", error: str = "boom") -> str:
    task_id = f"t{i:04d}"
    store.dead_letter(
        task_id, f"k{i}", reason, f"{exc}: {error} {i}",
        fallback=replace(record(f"k{i}", task_id), name=name),
        failure=Failure(exc_type=exc, traceback="Traceback...", attempts=3, worker="w1",
                        queue=queue),
    )
    return task_id


def test_dead_letter_keeps_a_given_dead_at_and_is_listed_by_it(any_store: Store) -> None:
    """Reconcile indexes a message found in the DLQ queue with the message's own time."""
    then = time.time() - 7200
    any_store.dead_letter("old", "k-old", "failed", "boom", fallback=record("k-old", "old"),
                          dead_at=then)
    any_store.dead_letter("new", "k-new", "failed", "boom", fallback=record("k-new", "new"))
    old = any_store.get_dead_letter("old")
    assert old is not None and old.dead_at == pytest.approx(then, abs=0.002)
    assert [e.task_id for e in any_store.list_dead_letters(
        DeadLetterQuery(until=time.time() - 3600)).entries] == ["old"]


def test_dead_letter_index_entry_and_redead(any_store: Store) -> None:
    rec = record("k")
    any_store.publish(rec, 60, dedupe=True)
    any_store.dead_letter(rec.task_id, "k", "failed", "ValueError: no",
                          failure=Failure("ValueError", "tb", 5, "w1", "celery"))
    letter = any_store.get_dead_letter(rec.task_id)
    assert letter is not None
    assert letter.record.body == rec.body and letter.record.name == rec.name
    assert letter.failure == Failure("ValueError", "tb", 5, "w1", "celery")
    assert letter.dead_at > 0 and not letter.replayed and letter.replays == 0
    # a second dead letter of the same task (a crash before the ack): still one entry
    assert any_store.claim_replays([rec.task_id], force=False) == [rec.task_id]
    time.sleep(0.01)
    any_store.dead_letter(rec.task_id, "k", "failed", "ValueError: again",
                          failure=Failure("ValueError", "tb2", 1, "w2", "celery"))
    page = any_store.list_dead_letters(DeadLetterQuery())
    assert [e.task_id for e in page.entries] == [rec.task_id]
    again = page.entries[0]
    assert again.record.error == "ValueError: again" and again.replays == 1
    assert not again.replayed  # failed again after its replay: unresolved
    assert any_store.get_dead_letter("missing") is None


def test_dead_letter_filters_and_paging(any_store: Store) -> None:
    ids = []
    for i in range(30):
        ids.append(_letter(
            any_store, i, name="shop.a" if i % 2 else "shop.b",
            reason="failed" if i % 3 else "expired", exc="ValueError" if i % 5 else "KeyError",
            queue="q1" if i < 10 else "q2", error="card declined" if i % 7 == 0 else "boom",
        ))
        time.sleep(0.002)  # distinct dead_at (Redis keeps milliseconds)
    everything = any_store.list_dead_letters(DeadLetterQuery(), limit=100)
    assert [e.task_id for e in everything.entries] == ids[::-1] and everything.cursor is None
    # paging: 7 at a time, no entry twice, none missed
    seen: list[str] = []
    cursor = None
    while True:
        page = any_store.list_dead_letters(DeadLetterQuery(), limit=7, cursor=cursor)
        seen += [e.task_id for e in page.entries]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == ids[::-1]
    queries = [
        DeadLetterQuery(name="shop.a"), DeadLetterQuery(reason="expired"),
        DeadLetterQuery(exc_type="KeyError"), DeadLetterQuery(queue="q1"),
        DeadLetterQuery(text="CARD"), DeadLetterQuery(name="shop.b", reason="failed", queue="q2"),
        DeadLetterQuery(since=everything.entries[20].dead_at,
                        until=everything.entries[5].dead_at),
    ]
    for query in queries:
        expected = [e.task_id for e in everything.entries if query.matches(e)]
        assert expected, query
        got = [e.task_id for e in any_store.list_dead_letters(query, limit=100).entries]
        assert got == expected, query
        first = any_store.list_dead_letters(query, limit=2)
        assert [e.task_id for e in first.entries] == expected[:2]
        rest = any_store.list_dead_letters(query, limit=100, cursor=first.cursor)
        assert [e.task_id for e in rest.entries] == expected[2:], query


def test_replay_marks_once_unless_forced(any_store: Store) -> None:
    a, b = _letter(any_store, 1), _letter(any_store, 2)
    assert sorted(any_store.claim_replays([a, b, "missing"], force=False)) == [a, b]
    assert any_store.claim_replays([a, b], force=False) == []
    assert any_store.claim_replays([a], force=True) == [a]
    letter = any_store.get_dead_letter(a)
    assert letter is not None and letter.replays == 2 and letter.replayed
    any_store.undo_replay(b)
    undone = any_store.get_dead_letter(b)
    assert undone is not None and not undone.replayed and undone.replays == 0
    replayed = any_store.list_dead_letters(DeadLetterQuery(replayed=True)).entries
    assert [e.task_id for e in replayed] == [a]
    unresolved = any_store.list_dead_letters(DeadLetterQuery(replayed=False)).entries
    assert [e.task_id for e in unresolved] == [b]


def test_delete_dead_letters(any_store: Store) -> None:
    ids = [_letter(any_store, i, name=f"shop.{i % 2}") for i in range(5)]
    assert any_store.delete_dead_letters([ids[0], ids[3], "missing"]) == 2
    left = any_store.list_dead_letters(DeadLetterQuery()).entries
    assert {e.task_id for e in left} == {ids[1], ids[2], ids[4]}
    assert [e.task_id for e in any_store.list_dead_letters(DeadLetterQuery(name="shop.1")).entries
            ] == [ids[1]]
    assert any_store.get_dead_letter(ids[0]) is None
    assert any_store.get_record(ids[0], "k0") is None


def test_bad_cursor_is_a_value_error(any_store: Store) -> None:
    with pytest.raises(ValueError):
        any_store.list_dead_letters(DeadLetterQuery(), cursor="nonsense")


def test_drop_forgets_the_prefix_and_nothing_else(
    any_store: Store, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What celery_reliable.testing calls after each test: keys, records, dead letters,
    limits and states of the prefix go; another prefix on the same server stays."""
    from celery_reliable.states import State, Transition
    from celery_reliable.states.stores import state_store_on
    from tests.conftest import drop_tables, make_store

    kind = request.node.callspec.params["any_store"]
    other: Store | None = None
    if kind == "fakeredis":  # a second prefix on the same (fake) server
        from celery_reliable.stores.redis import RedisStore

        other = RedisStore("redis://fake", prefix="o" + uuid.uuid4().hex[:10],
                           client=any_store.client)  # type: ignore[attr-defined]
    elif kind != "memory":  # memory: nothing is shared between two stores anyway
        other = make_store(kind, "o" + uuid.uuid4().hex[:10], tmp_path_factory)
    rec = record("drop:1")
    try:
        for store in filter(None, [any_store, other]):
            store.publish(rec, 60, dedupe=True)
            store.dead_letter(rec.task_id, "drop:1", "permanent_error", "no")
            store.claim("drop:2", FP, "t-done", "owner", 30, max_lost=3)
            store.complete("drop:2", FP, "owner", "t-done", None, retention=60)
            store.budget_deposit("mailer", 3)
            store.breaker_report("mailer", False, 5, 30)
            state_store_on(store).record([Transition(
                rec.task_id, "shop.x", "drop:1", State.PENDING, 1, None, time.time())])
        any_store.drop()
        any_store.migrate()  # SQL: the tables are gone; a later user migrates again
        assert any_store.get_key("drop:2") is None
        assert dead_records(any_store) == [] and any_store.pending_count() == 0
        if kind != "memory":  # the memory state store is an object of its own
            assert state_store_on(any_store).timeline(rec.task_id) == []
        if other is not None:
            assert other.get_key("drop:2") is not None and len(dead_records(other)) == 1
            assert len(state_store_on(other).timeline(rec.task_id)) == 1
    finally:
        if other is not None:
            drop_tables(other)
            other.close()
