"""Django settings of the test project: django-celery-beat's models in a SQLite file.

``TEST_DJANGO_DB`` is the database file (one per test); the broker, the store, the
key prefix and the queue come from the same ``TEST_*`` variables as the shop's.
"""

from __future__ import annotations

import os

SECRET_KEY = "tests-only, never deployed"
DEBUG = False
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["TEST_DJANGO_DB"],
        # Two beat processes write their entries' last run to the same file.
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
# Not UTC, so a slot computed from a local last run would show (slot keys are in UTC).
TIME_ZONE = "Europe/Berlin"

CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/14")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TEST_QUEUE", "celery")
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "celery_reliable.beat:DatabaseScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 0.2  # wake often: slots are seconds apart here

CELERY_RELIABLE_STORE_URL = os.environ.get("TEST_STORE_URL", "redis://127.0.0.1:6379/15")
CELERY_RELIABLE_KEY_PREFIX = os.environ.get("TEST_PREFIX", "djangoproj")
