"""The kombu workaround: installed for Redis brokers only, and what it changes in a close.

The end-to-end proof (a worker under load through broker restarts) is
``tests/chaos/test_broker_restarts.py``; these check the pieces without a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from celery_reliable.runtime import reset, runtime
from celery_reliable.worker import kombu_compat


@pytest.fixture
def make_app() -> Iterator[Any]:
    apps: list[Celery] = []

    def make(broker: str) -> Celery:
        app = Celery(f"compat{uuid.uuid4().hex[:6]}", broker=broker, set_as_current=False)
        app.conf.reliable_store_url = "memory://"
        apps.append(app)
        return app

    yield make
    for app in apps:
        reset(app)


@pytest.mark.parametrize(("broker", "redis_transport"), [
    ("redis://127.0.0.1:6379/0", True),
    ("rediss://127.0.0.1:6380/0", True),
    ("sentinel://127.0.0.1:26379", True),
    ("amqp://guest:guest@127.0.0.1:5672//", False),
    ("memory://", False),
    ("sqla+sqlite:///broker.db", False),
])
def test_only_apps_on_kombus_redis_transport_need_it(
    make_app: Any, broker: str, redis_transport: bool
) -> None:
    app = make_app(broker)
    assert kombu_compat.uses_redis_transport(app) is redis_transport
    assert kombu_compat.apply(app) is redis_transport


def _channel_waiting_on_a_dead_brpop() -> Any:
    """A Redis channel as a busy worker's is when its connection drops: a BRPOP sent,
    its reply unreadable.  Marked closed already, so kombu's own close does nothing
    else (no server needed)."""
    channel = object.__new__(kombu_redis.Channel)
    channel.closed = True
    channel._in_poll = object()
    channel.connection_errors = kombu_redis.Transport.connection_errors

    def brpop_read() -> None:
        channel._in_poll = None  # as kombu's _brpop_read does, in its finally
        raise redis.ConnectionError("Connection closed by server.")

    channel._brpop_read = brpop_read
    return channel


def test_a_close_with_a_dead_brpop_pending_completes_and_is_counted(make_app: Any) -> None:
    app = make_app("redis://127.0.0.1:6379/0")
    assert kombu_compat.apply(app)
    original = kombu_redis.Channel.close.__wrapped__
    with pytest.raises(redis.ConnectionError):  # kombu alone: the close ends there
        original(_channel_waiting_on_a_dead_brpop())
    channel = _channel_waiting_on_a_dead_brpop()
    channel.close()
    assert channel._in_poll is None
    assert runtime(app).counters["broker_close_drain_lost"] == 1


def test_it_is_installed_once_per_process(make_app: Any) -> None:
    first, second = make_app("redis://127.0.0.1:6379/0"), make_app("redis://127.0.0.1:6379/1")
    assert kombu_compat.apply(first) and kombu_compat.apply(second)
    wrapped = kombu_redis.Channel.close.__wrapped__
    assert not hasattr(wrapped, "__wrapped__"), "kombu's close was wrapped twice"
