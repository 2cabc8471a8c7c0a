"""State stores, one per store backend, opened by URL like the stores.

``open_state_store(url)`` first opens the ordinary store for ``url`` through
the scheme registry of :mod:`celery_reliable.stores` (which validates the
scheme, names a missing optional dependency and sets the connection up),
then wraps its connection in the state backend that belongs to it.
"""

from __future__ import annotations

import importlib

from celery_reliable.errors import ConfigurationError
from celery_reliable.settings import STATE_RETENTION
from celery_reliable.states.stores.base import StateStore
from celery_reliable.stores import Store, open_store

#: store backend module -> "module:class" of its state backend.
_BACKENDS = {
    "celery_reliable.stores.memory": "celery_reliable.states.stores.memory:MemoryStateStore",
    "celery_reliable.stores.redis": "celery_reliable.states.stores.redis:RedisStateStore",
    "celery_reliable.stores.sql": "celery_reliable.states.stores.sql:SQLStateStore",
}


def open_state_store(
    url: str, *, prefix: str = "reliable", shards: int = 1, retention: float = STATE_RETENTION
) -> StateStore:
    """Open the state store for ``url`` (``redis://``, ``postgresql+psycopg://``, ``memory://``...)."""
    return state_store_on(open_store(url, prefix=prefix, shards=shards), retention)


def state_store_on(store: Store, retention: float = STATE_RETENTION) -> StateStore:
    """The state store using ``store``'s connection (and closing it when closed)."""
    target = _BACKENDS.get(type(store).__module__)
    if target is None:
        raise ConfigurationError(f"no state store for a {type(store).__name__} ({store.url!r})")
    module_name, _, class_name = target.partition(":")
    backend: type[StateStore] = getattr(importlib.import_module(module_name), class_name)
    return backend.on(store, retention)


__all__ = ["StateStore", "open_state_store", "state_store_on"]
