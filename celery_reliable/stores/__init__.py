"""Stores, chosen by URL scheme through one small registry.

``open_store("redis://...")`` imports only the backend it needs, so a user of
the SQL store does not need redis-py installed, and vice versa.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from celery_reliable.errors import ConfigurationError
from celery_reliable.stores.base import Store
from celery_reliable.stores.model import (
    Claim,
    ClaimStatus,
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    Failure,
    KeyState,
    Lease,
    PublishOutcome,
    PublishStatus,
    SweepPolicy,
    TaskRecord,
)

# scheme -> "module:class"; SQLAlchemy dialects share one backend.
_BACKENDS = {
    "memory": "celery_reliable.stores.memory:MemoryStore",
    "redis": "celery_reliable.stores.redis:RedisStore",
    "rediss": "celery_reliable.stores.redis:RedisStore",
    "sqlite": "celery_reliable.stores.sql:SQLStore",
    "postgresql": "celery_reliable.stores.sql:SQLStore",
    "postgres": "celery_reliable.stores.sql:SQLStore",
    "mysql": "celery_reliable.stores.sql:SQLStore",
    "mariadb": "celery_reliable.stores.sql:SQLStore",
}


def known_schemes() -> frozenset[str]:
    return frozenset(_BACKENDS)


def open_store(url: str, *, prefix: str = "reliable", shards: int = 1) -> Store:
    """Open the store for ``url`` (``redis://``, ``postgresql+psycopg://``, ``sqlite:///``, ...)."""
    scheme = urlsplit(url).scheme.split("+")[0]
    target = _BACKENDS.get(scheme)
    if target is None:
        raise ConfigurationError(
            f"no store for URL scheme {scheme!r} in {url!r}; known: {', '.join(sorted(_BACKENDS))}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = "redis" if scheme.startswith("redis") else "sql"
        raise ConfigurationError(
            f"the {scheme}:// store needs an optional dependency ({exc.name}); "
            f"pip install 'celery-reliable[{extra}]'"
        ) from exc
    store: Store = getattr(module, class_name)(url, prefix=prefix, shards=shards)
    return store


__all__ = [
    "Claim",
    "ClaimStatus",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterQuery",
    "Failure",
    "KeyState",
    "Lease",
    "PublishOutcome",
    "PublishStatus",
    "Store",
    "SweepPolicy",
    "TaskRecord",
    "known_schemes",
    "open_store",
]
