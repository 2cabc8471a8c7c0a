"""Settings changed on the user's app for one test, and put back after it.

A Django app reads ``CELERY_RELIABLE_STORE_URL`` from its settings module, a plain
app has ``reliable_store_url`` on ``app.conf``, and Celery keeps both spellings as
written: an override under one name would leave the other in force (the settings
table reads every spelling, and which one wins would depend on their order).  So a
``reliable_*`` override is written under every spelling the configuration already
has, plus the app's own (:mod:`celery_reliable.spelling`), and each is restored or
removed at the end.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_reliable.spelling import PREFIX, Spelling

_MISSING = object()


class Overrides:
    """Configuration keys of one app set for a while (``restore()`` undoes them all)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._saved: dict[str, Any] = {}

    def reliable(self, name: str, value: Any) -> None:
        """Set setting ``name`` (a field of the settings table: ``store_url``)."""
        conf = self.app.conf
        keys = {Spelling.of_namespace(self.app.namespace)(name)}
        for key in list(conf.keys()):
            lowered = str(key).lower()
            if lowered in (PREFIX + name, "celery_" + PREFIX + name):
                keys.add(str(key))
        for key in sorted(keys):
            self.celery(key, value)

    def celery(self, key: str, value: Any) -> None:
        """Set configuration key ``key`` as written (``task_always_eager``)."""
        changes = self.app.conf.changes
        if key not in self._saved:
            self._saved[key] = changes.get(key, _MISSING)
        self.app.conf[key] = value

    def restore(self) -> None:
        changes = self.app.conf.changes
        for key, value in self._saved.items():
            if value is _MISSING:
                changes.pop(key, None)
            else:
                changes[key] = value
        self._saved.clear()
