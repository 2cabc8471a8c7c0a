"""Effects counted in Redis, outside the processes that cause them.

A test counts outcomes (runs, effects, runs per slot) after it killed or stopped
real worker and beat processes, instead of reading their logs.
"""

from __future__ import annotations

from typing import Any

import redis

COUNTER_URL = "redis://127.0.0.1:6379/13"


class Counter:
    """Effects counted outside the worker: ``INCR <prefix>:<event>:<id>``."""

    def __init__(self, prefix: str, url: str = COUNTER_URL) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def incr(self, event: str, ident: Any) -> int:
        return int(self.client.incr(f"{self.prefix}:{event}:{ident}"))

    def get(self, event: str, ident: Any) -> int:
        return int(self.client.get(f"{self.prefix}:{event}:{ident}") or 0)

    def total(self, event: str) -> int:
        keys = list(self.client.scan_iter(f"{self.prefix}:{event}:*", count=1000))
        return sum(int(v or 0) for v in self.client.mget(keys)) if keys else 0

    def per_ident(self, event: str) -> dict[str, int]:
        """``{id: count}`` of every ``<prefix>:<event>:<id>``."""
        names = sorted(self.client.scan_iter(f"{self.prefix}:{event}:*", count=1000))
        head = f"{self.prefix}:{event}:"
        return {n[len(head):]: int(self.client.get(n) or 0) for n in names}
