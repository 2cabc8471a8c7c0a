"""Per-app, per-process state: validated settings, the store, the heartbeat, counters.

One :class:`Runtime` per Celery app (kept in a weak mapping, so two apps in one
process never share a store), rebuilt after a fork: a prefork child must not
reuse its parent's sockets or heartbeat thread.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING

from celery import Celery

from celery_reliable.errors import ConfigurationError
from celery_reliable.retry.breaker import Breakers
from celery_reliable.retry.budget import BudgetMeter
from celery_reliable.settings import Settings, from_conf
from celery_reliable.spelling import Spelling
from celery_reliable.stores import Store, open_store
from celery_reliable.worker.claim_ahead import ClaimAhead
from celery_reliable.worker.heartbeat import Heartbeat

if TYPE_CHECKING:
    from celery_reliable.dlq.publisher import Publisher

logger = logging.getLogger("celery_reliable")

_runtimes: weakref.WeakKeyDictionary[Celery, Runtime] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class Runtime:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self.pid = os.getpid()
        #: how this app's configuration spells our settings (for error messages)
        self.spelling = Spelling.of_namespace(app.namespace)
        self.settings: Settings = from_conf(app.conf, namespace=app.namespace)
        self.counters: collections.Counter[str] = collections.Counter()
        self._store: Store | None = None
        self._heartbeat: Heartbeat | None = None
        self._budget: BudgetMeter | None = None
        self._breakers: Breakers | None = None
        self._dlq_publisher: Publisher | None = None
        self._lock = threading.Lock()
        self.claim_ahead = ClaimAhead(self)

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    url = self.settings.store_url
                    if url is None:
                        raise ConfigurationError(
                            self.spelling.missing("store_url", "redis://127.0.0.1:6379/1")
                        )
                    store = open_store(
                        url, prefix=self.settings.key_prefix, shards=self.settings.redis_shards
                    )
                    store.outage_after = 2 * self.settings.rescue_interval
                    self._store = store
        return self._store

    @property
    def budget(self) -> BudgetMeter:
        if self._budget is None:
            with self._lock:
                if self._budget is None:
                    self._budget = BudgetMeter(self)
        return self._budget

    @property
    def breakers(self) -> Breakers:
        if self._breakers is None:
            with self._lock:
                if self._breakers is None:
                    self._breakers = Breakers(self)
        return self._breakers

    @property
    def heartbeat(self) -> Heartbeat:
        if self._heartbeat is None:
            with self._lock:
                if self._heartbeat is None:
                    self._heartbeat = Heartbeat(self)
        return self._heartbeat

    @property
    def dlq_publisher(self) -> Publisher:
        """The connection dead letters are published on (see ``dlq/publisher.py``)."""
        if self._dlq_publisher is None:
            from celery_reliable.dlq.publisher import Publisher  # dlq imports the runtime

            with self._lock:
                if self._dlq_publisher is None:
                    self._dlq_publisher = Publisher(self.app)
        return self._dlq_publisher

    def count(self, event: str, n: int = 1) -> None:
        """Count an event (deduplicated, deferred, store_error, rescued, ...)."""
        self.counters[event] += n

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._budget is not None:
            self._budget.stop()
        if self._dlq_publisher is not None:
            self._dlq_publisher.close()
        if self._store is not None:
            self._store.close()


def runtime(app: Celery) -> Runtime:
    """The runtime of ``app`` in this process (validates the settings on first use)."""
    current = _runtimes.get(app)
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        current = _runtimes.get(app)
        if current is None or current.pid != os.getpid():
            if current is not None and current._store is not None:
                current._store.after_fork()
            current = Runtime(app)
            _runtimes[app] = current
        return current


def reset(app: Celery) -> None:
    """Forget the app's runtime and recorded-state buffers (tests, or after changing
    settings at run time)."""
    from celery_reliable.states import reset as reset_states

    reset_states(app)
    with _lock:
        current = _runtimes.pop(app, None)
    if current is not None:
        current.close()
