"""The result backend keeps results for ever when ``result_expires`` is off: it grows
until its server runs out of memory or disk, and a Redis that is also the broker or
the store then evicts or refuses writes."""

from __future__ import annotations

from celery_reliable.doctor.deployment import Deployment
from celery_reliable.findings import Finding


def expiry(d: Deployment) -> list[Finding]:
    backend = d.conf.result_backend
    if not backend or str(backend).startswith("disabled") or d.conf.task_ignore_result:
        return []
    expires = d.conf.result_expires
    seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else expires
    if seconds:
        return []
    return [Finding(
        "results.expiry", "warning",
        f"result_expires is {expires!r}: the result backend keeps every result for ever "
        "and grows until its server is full; a Redis shared with the broker or the store "
        "then evicts or refuses writes",
        "Set result_expires (Celery's default is one day: 86400); on a database backend "
        "run celery beat, whose backend_cleanup task deletes expired results",
        "operating.md#result-expiry",
    )]
