"""Test your own reliable tasks: a fresh store per test, a worker, a clock, and
assertions that read like the guarantees.

With pytest the plugin is active once celery-reliable is installed (entry point
``pytest11``; fixtures ``reliable``, ``reliable_app``, ``reliable_worker``,
``reliable_eager``, ``reliable_clock``, ``reliable_store_url``; see
:mod:`celery_reliable.testing.plugin`).  Without pytest (a Django ``TestCase``)::

    from celery_reliable.testing import use_store

    class ReceiptTests(TestCase):
        def setUp(self):
            self.reliable = self.enterContext(use_store(app, eager=True))

The public surface is ``__all__``; the modules are private.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_reliable.testing.clock import Clock, ClockNotAdjustable
    from celery_reliable.testing.harness import (
        DEFAULT_STORE_URL,
        STORE_URL_ENV,
        Harness,
        TaskRef,
        store_url_from_env,
        use_store,
    )

#: name -> module.  Imported on first use: pytest loads the plugin in every run of a
#: project that installed us, and most of those tests never touch the harness.
_LAZY = {
    "Clock": "clock", "ClockNotAdjustable": "clock", "DEFAULT_STORE_URL": "harness",
    "STORE_URL_ENV": "harness", "Harness": "harness", "TaskRef": "harness",
    "store_url_from_env": "harness", "use_store": "harness",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_reliable.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"celery_reliable.testing.{module}"), name)


__all__ = [
    "DEFAULT_STORE_URL",
    "STORE_URL_ENV",
    "Clock",
    "ClockNotAdjustable",
    "Harness",
    "TaskRef",
    "store_url_from_env",
    "use_store",
]
