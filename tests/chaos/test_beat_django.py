"""django-celery-beat's DatabaseScheduler, keyed by slot: real beats on one database.

The entry is a PeriodicTask row on an IntervalSchedule, as a user makes it in
Django's admin; two ``celery beat -S celery_reliable.beat:DatabaseScheduler``
processes read it from the same SQLite database and a real worker runs the sends.
Runs are counted per slot in Redis, outside the processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.chaos.test_beat import consecutive
from tests.harness import ROOT, beats, wait_for
from tests.shopfixture import Shop

pytestmark = pytest.mark.chaos

pytest.importorskip("django_celery_beat", reason="django-celery-beat is in the test extra")

APP = "tests.apps.djangoproj.celery"
SCHEDULER = "celery_reliable.beat:DatabaseScheduler"


def schedule_every(shop: Shop, seconds: int) -> None:
    """Migrate the test's database and add the PeriodicTask (its own process, as
    ``manage.py migrate`` and the admin would: this one never sets Django up)."""
    subprocess.run(
        [sys.executable, "-m", "tests.apps.djangoproj.schedule", str(seconds)],
        env={**os.environ, **shop.env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        check=True, timeout=60,
    )


def test_two_database_schedulers_run_every_slot_exactly_once(
    make_shop: Callable[..., Shop], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    database = tmp_path_factory.mktemp("django") / "db.sqlite3"
    shop = make_shop("redis", "redis", TEST_DJANGO_DB=str(database))
    schedule_every(shop, 2)
    with shop.worker(app=APP, pool="prefork", concurrency=2), beats(
        shop.env, shop.log_dir, 2, app=APP, scheduler=SCHEDULER,
    ):
        time.sleep(20)  # the run's length: about ten slots go by
    wait_for(lambda: shop.store.pending_count() == 0, 30, "the last slot's run to finish")
    runs = shop.counter.per_ident("slot")
    assert 8 <= len(runs) <= 12, runs  # about ten slots: not one, not twenty
    assert set(runs.values()) == {1}, f"a slot ran twice or never: {runs}"
    assert consecutive(sorted(runs), 2.0), f"a slot was skipped: {sorted(runs)}"
