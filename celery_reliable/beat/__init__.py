"""Celery beat, once per schedule slot (see :mod:`celery_reliable.beat.scheduler`).

``beat_scheduler = "celery_reliable.beat:PersistentScheduler"`` is Celery's default
scheduler keyed by slot; ``celery_reliable.beat:DatabaseScheduler`` is
django-celery-beat's.  Any other scheduler class: ``class S(SlotKeys, TheirScheduler)``.
A ReliableTask that beat publishes without a slot warns once per process, naming these.
"""

from __future__ import annotations

from typing import Any

from celery.beat import PersistentScheduler as _CeleryPersistentScheduler

from celery_reliable.beat.scheduler import SlotKeys


class PersistentScheduler(SlotKeys, _CeleryPersistentScheduler):  # type: ignore[misc]
    """Celery's default scheduler (a schedule file), keyed by slot."""


def __getattr__(name: str) -> Any:
    # django-celery-beat is optional: built on first use, then kept as a module attribute.
    if name == "DatabaseScheduler":
        from django_celery_beat.schedulers import DatabaseScheduler as _Database

        cls = type("DatabaseScheduler", (SlotKeys, _Database), {
            "__module__": __name__,
            "__doc__": "django-celery-beat's DatabaseScheduler, keyed by slot.",
        })
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DatabaseScheduler", "PersistentScheduler", "SlotKeys"]
