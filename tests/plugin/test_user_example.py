"""How a user tests their own reliable task with the plugin: only its public fixtures
(``reliable``, ``reliable_worker``, ``reliable_eager``) and the user's app and fake."""

from __future__ import annotations

from typing import Any

from celery_reliable.testing import Harness
from tests.plugin.usershop import Mailer, send_receipt


def test_the_same_order_twice_mails_one_receipt(
    reliable: Harness, reliable_worker: Any, mailer: Mailer
) -> None:
    first, second = send_receipt.delay(7), send_receipt.delay(order_id=7)
    reliable.assert_ran_once(first)
    reliable.assert_timeline(second, "RECEIVED → STARTED → SUCCEEDED")
    assert mailer.sent == [7]


def test_a_timeout_is_retried_then_the_receipt_goes_once(
    reliable: Harness, reliable_worker: Any, mailer: Mailer
) -> None:
    mailer.failures_left = 2
    result = send_receipt.delay(8)
    reliable.assert_timeline(
        result,
        "RECEIVED → STARTED → RETRY_SCHEDULED → RECEIVED → STARTED → RETRY_SCHEDULED"
        " → RECEIVED → STARTED → SUCCEEDED",
    )
    reliable.assert_ran_once(result)
    assert mailer.sent == [8]


def test_a_refused_receipt_is_dead_lettered_and_a_replay_sends_it(
    reliable: Harness, reliable_worker: Any, mailer: Mailer
) -> None:
    mailer.refuse = True
    result = send_receipt.delay(9)
    reliable.assert_dead_lettered(result, reason="permanent_error", error="refused")
    assert mailer.sent == []

    mailer.refuse = False  # the address is fixed
    reliable.replay(result)
    reliable.assert_ran_once(result)
    assert mailer.sent == [9]
    assert reliable.dead_letters.resolved(result.id)


def test_eager_mode_runs_the_task_in_the_call(reliable_eager: Harness, mailer: Mailer) -> None:
    send_receipt.delay(10)
    result = send_receipt.delay(10)
    reliable_eager.assert_timeline(result, "RECEIVED", "DEDUPLICATED")
    reliable_eager.assert_ran_once(key="receipt:10")
    assert mailer.sent == [10]
