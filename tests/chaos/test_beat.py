"""Scheduled work runs once per slot: real ``celery beat`` processes and a real worker.

Each run of the periodic task counts itself under its idempotency key (the slot), in
Redis outside the processes; the tests count runs per slot instead of reading logs.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from celery_reliable.states import State, queries
from tests.harness import Beat, beats, wait_for
from tests.shopfixture import Shop

pytestmark = pytest.mark.chaos


def runs_per_slot(shop: Shop) -> dict[str, int]:
    return shop.counter.per_ident("slot")


def consecutive(keys: list[str], step: float) -> bool:
    """Whether the slots of ``keys`` (``beat:tick:<UTC time>Z``) follow each other."""
    times = [datetime.strptime(k[len("beat:tick:"):], "%Y-%m-%dT%H:%M:%SZ")
             .replace(tzinfo=timezone.utc).timestamp() for k in keys]
    return all(abs(b - a - step) < 1e-6 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("schedule", ["interval", "crontab"])
def test_two_beats_run_every_slot_exactly_once(
    make_shop: Callable[..., Shop], schedule: str
) -> None:
    # crontab: every minute, on a clock 30 times faster (a minute takes 2 s)
    extra = ({"TEST_BEAT": "interval:2"} if schedule == "interval" else
             {"TEST_BEAT": "crontab", "TEST_CLOCK_START": str(time.time()),
              "TEST_CLOCK_SPEED": "30"})
    shop = make_shop("redis", "redis", **extra)
    with shop.worker(pool="prefork", concurrency=2), beats(shop.env, shop.log_dir, 2):
        time.sleep(20)  # the run's length: about ten slots go by
    wait_for(lambda: shop.store.pending_count() == 0, 30, "the last slot's run to finish")
    runs = runs_per_slot(shop)
    assert 8 <= len(runs) <= 12, runs  # about ten slots: not one, not twenty
    assert set(runs.values()) == {1}, f"a slot ran twice or never: {runs}"
    step = 2.0 if schedule == "interval" else 60.0
    assert consecutive(sorted(runs), step), f"a slot was skipped: {sorted(runs)}"


def test_beat_killed_and_restarted_inside_a_slot_does_not_run_it_twice(
    make_shop: Callable[..., Shop],
) -> None:
    """Killed before it saved the schedule, the restarted beat sends the slot again (its
    file says the entry has not run): the key answers that publish with the first."""
    shop = make_shop("redis", "redis", TEST_BEAT="interval:12")
    schedule_file, log = shop.log_dir / "killed.schedule", shop.log_dir / "killed.log"
    with shop.worker():
        beat = Beat(shop.env, log, schedule_file=schedule_file).start()
        try:
            wait_for(lambda: len(runs_per_slot(shop)) == 1, 30, "the first slot's run")
            beat.kill()  # SIGKILL: nothing synced since start-up
            slot = next(iter(runs_per_slot(shop)))
            beat = Beat(shop.env, log, schedule_file=schedule_file).start()
            wait_for(lambda: len({t.task_id for t in queries.timeline(shop.app, key=slot)}) == 2,
                     20, "the restarted beat to send the slot again")
            wait_for(lambda: len(runs_per_slot(shop)) == 2, 30, "the next slot's run")
        finally:
            beat.kill(signal.SIGTERM)
    runs = runs_per_slot(shop)
    assert runs[slot] == 1, runs
    history = queries.timeline(shop.app, key=slot)
    assert State.DEDUPLICATED in {t.state for t in history}, history
    assert len({t.task_id for t in history}) == 2  # two publishes, one run
