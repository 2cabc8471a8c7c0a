"""The project's Celery app, as Django projects write it (``proj/celery.py``).

``celery -A tests.apps.djangoproj.celery worker`` / ``beat`` load it; its one task
counts its runs per idempotency key (for a beat send: its schedule slot) in Redis,
outside the processes.
"""

from __future__ import annotations

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.djangoproj.settings")
django.setup()

from celery_reliable import ReliableTask  # noqa: E402
from tests.apps.counter import COUNTER_URL, Counter  # noqa: E402

app = Celery("djangoproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
counter = Counter(os.environ.get("TEST_PREFIX", "djangoproj"),
                  os.environ.get("TEST_COUNTER_URL", COUNTER_URL))


@app.task(name="djangoproj.tick", base=ReliableTask, bind=True)
def tick(self: ReliableTask, label: str) -> int:
    """A periodic task with fixed arguments: counts its runs per schedule slot."""
    return counter.incr("slot", self.idempotency_key)
