"""The broker's Redis: does it keep what it is given (eviction, AOF), and what its
``visibility_timeout`` delivers twice.

The persistence check reads the server the broker URL names (through kombu's own
Redis client, so Sentinel, TLS and sockets are reached as the workers reach them);
the visibility check judges the timeout the worker will really run with, our default
included (``worker/transport.py``).
"""

from __future__ import annotations

import redis
from kombu.exceptions import OperationalError

from celery_reliable.doctor.deployment import Deployment
from celery_reliable.findings import Finding
from celery_reliable.stores.redis_server import ServerFacts, broker_findings
from celery_reliable.worker.transport import hold_findings, is_redis_broker


def redis_server(d: Deployment) -> list[Finding]:
    """A Redis broker that evicts queues or does not persist them (AOF off)."""
    if not is_redis_broker(d.app):
        return []
    url = d.safe_broker_url
    connection = d.app.connection_for_write()
    try:
        connection.ensure_connection(max_retries=1)
        facts = ServerFacts.read(connection.default_channel.client)
    except (redis.RedisError, OSError, OperationalError) as exc:
        return [Finding(
            "broker.unreachable", "error",
            f"the Redis broker {url} cannot be reached: {exc}",
            "Start it, or correct broker_url", "operating.md#broker-persistence",
        )]
    finally:
        connection.release()
    return broker_findings(url, facts)


def visibility_timeout(d: Deployment) -> list[Finding]:
    """Holds reaching the Redis ``visibility_timeout`` and a publish-key retention that
    does not outlast it."""
    return hold_findings(d.app, d.settings, d.tasks)
