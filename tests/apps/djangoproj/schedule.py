"""``python -m tests.apps.djangoproj.schedule <seconds>``: migrate the test project's
database and schedule ``djangoproj.tick("fixed")`` every ``<seconds>`` in it, as a
user does in Django's admin (a PeriodicTask on an IntervalSchedule)."""

from __future__ import annotations

import json
import os
import sys

import django


def main(every: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.djangoproj.settings")
    django.setup()
    from django.core.management import call_command
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    call_command("migrate", verbosity=0)
    interval, _ = IntervalSchedule.objects.get_or_create(
        every=every, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(
        name="tick", defaults={"task": "djangoproj.tick", "interval": interval,
                               "args": json.dumps(["fixed"])})


if __name__ == "__main__":
    main(int(sys.argv[1]))
