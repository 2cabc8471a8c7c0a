"""The state recorder's settings: the ``reliable_state_*`` rows of the settings table.

Validated with every other setting in :mod:`celery_reliable.settings`; this
module only gives the recorder and the state stores the part they need.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery_reliable.settings import Settings

SYNC, ASYNC = "sync", "async"


@dataclass(frozen=True)
class StateSettings:
    """See the ``reliable_state_*`` rows of :class:`celery_reliable.settings.Settings`."""

    enabled: bool
    store_url: str | None
    """reliable_state_store_url, else reliable_store_url."""
    retention: float
    flush: str
    flush_interval: float
    buffer_size: int
    batch_size: int
    key_prefix: str
    redis_shards: int


def from_settings(settings: Settings) -> StateSettings:
    """The state recorder's view of the app's validated settings."""
    return StateSettings(
        enabled=settings.state_enabled,
        store_url=settings.state_store_url or settings.store_url,
        retention=settings.state_retention,
        flush=settings.state_flush,
        flush_interval=settings.state_flush_interval,
        buffer_size=settings.state_buffer_size,
        batch_size=settings.state_batch_size,
        key_prefix=settings.key_prefix,
        redis_shards=settings.redis_shards,
    )
