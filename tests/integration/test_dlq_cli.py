"""``celery -A <app> reliable-dlq ...`` as a user runs it: a subprocess, real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

from celery_reliable import records
from celery_reliable.dlq.dead_letter import DeadLetterCause, dead_letter
from celery_reliable.stores.model import Failure
from tests.harness import ROOT
from tests.shopfixture import Shop


def cli(shop: Shop, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.apps.shop", "reliable-dlq", *args],
        env={**os.environ, **shop.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, input=stdin,
        capture_output=True, text=True, timeout=120,
    )


def seed(shop: Shop, order_id: int) -> str:
    """A dead letter as a worker leaves it: published to the DLQ queue and indexed."""
    task_id = str(uuid.uuid4())
    record, _ = records.encode(
        shop.app, name="shop.charge", task_id=task_id, key=f"charge:{order_id}",
        fingerprint="0" * 16, args=[order_id], kwargs={}, options={},
    )
    dead_letter(shop.app, DeadLetterCause(
        record, "attempts_exhausted", "ConnectionError: the gateway is down",
        Failure("ConnectionError", "Traceback ...", 2, "w1", shop.env["TEST_QUEUE"])))
    return task_id


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_cli_as_a_subprocess(make_shop: Callable[..., Shop], broker: str) -> None:
    shop = make_shop(broker)
    first, second = seed(shop, 1), seed(shop, 2)

    listed = cli(shop, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {e["task_id"] for e in json.loads(listed.stdout)["entries"]} == {first, second}

    unknown = cli(shop, "show", "no-such-task")
    assert unknown.returncode == 2
    assert "no dead letter with task id 'no-such-task'" in unknown.stderr
    shown = cli(shop, "show", first)
    assert shown.returncode == 0 and "args:      [1]" in shown.stdout

    assert cli(shop, "check", "--older-than", "0").returncode == 1
    assert cli(shop, "check", "--older-than", "3600").returncode == 0

    replayed = cli(shop, "replay", first)
    assert replayed.returncode == 0, replayed.stderr
    assert shop.queue_length(shop.env["TEST_QUEUE"]) == 1
    assert cli(shop, "replay", first).returncode == 1  # already replayed: nothing published
    assert shop.queue_length(shop.env["TEST_QUEUE"]) == 1

    assert cli(shop, "purge", "--all", stdin="n\n").returncode == 1
    purged = cli(shop, "purge", "--all", "--yes")
    assert purged.returncode == 0 and "discarded 2" in purged.stdout
    assert json.loads(cli(shop, "list", "--json").stdout)["entries"] == []
    assert shop.dlq_messages() == []
    assert cli(shop, "reconcile").returncode == 0
