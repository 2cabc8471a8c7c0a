"""One state store and one recorder per Celery app and process.

Kept in a weak mapping like :mod:`celery_reliable.runtime`, so two apps in a
process never share them.  The recorder and the query API use the same store
object: with ``memory://`` they see the same data, elsewhere they share the
connections.  Nothing connects until the first write or query.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

from celery import Celery

from celery_reliable.errors import ConfigurationError
from celery_reliable.states import config
from celery_reliable.states.recorder import Recorder
from celery_reliable.states.stores import StateStore, open_state_store


class AppStates:
    """The state store and recorder of one app, opened on first use."""

    def __init__(self, app: Celery) -> None:
        from celery_reliable.runtime import runtime

        self.settings = config.from_settings(runtime(app).settings)
        self.spelling = runtime(app).spelling
        self._store: StateStore | None = None
        self._lock = threading.Lock()
        s = self.settings
        self.recorder = Recorder(
            self.open_store, flush=s.flush, interval=s.flush_interval,
            buffer_size=s.buffer_size, batch_size=s.batch_size, enabled=s.enabled,
        )

    def open_store(self) -> StateStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    s = self.settings
                    if s.store_url is None:
                        spell = self.spelling
                        raise ConfigurationError(
                            f"neither {spell('state_store_url')} nor {spell('store_url')} is "
                            f"set; {spell.where('store_url', 'redis://127.0.0.1:6379/1')}"
                        )
                    self._store = open_state_store(
                        s.store_url, prefix=s.key_prefix, shards=s.redis_shards,
                        retention=s.retention,
                    )
        return self._store

    def close(self) -> None:
        self.recorder.close()
        if self._store is not None:
            self._store.close()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        if self._store is not None:
            self._store.after_fork()


_apps: weakref.WeakKeyDictionary[Celery, AppStates] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def states_of(app: Celery) -> AppStates:
    """The app's states (validates the ``reliable_state_*`` settings on first use)."""
    entry = _apps.get(app)
    if entry is None:
        with _lock:
            entry = _apps.get(app)
            if entry is None:
                entry = _apps[app] = AppStates(app)
    return entry


def recorder(app: Celery) -> Recorder:
    """Where the app's task and signal handlers report transitions."""
    return states_of(app).recorder


def state_store(app: Celery) -> StateStore:
    return states_of(app).open_store()


def prune_expired(app: Celery, limit: int = 1000) -> int:
    """Forget, in one bounded batch, tasks whose last transition is older than
    ``reliable_state_retention``; how many.  Run periodically (the rescuer does)."""
    entry = states_of(app)
    return entry.open_store().prune(time.time() - entry.settings.retention, limit)


def reset(app: Celery) -> None:
    """Write what is buffered and forget the app's states (tests, settings changed)."""
    with _lock:
        entry = _apps.pop(app, None)
    if entry is not None:
        entry.close()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    for entry in list(_apps.values()):
        entry.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
