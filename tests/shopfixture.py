"""One fixture for a shop on a real broker and store, with real worker processes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Queue

from celery_reliable.runtime import reset, runtime
from celery_reliable.stores import Store
from tests.apps.shop import Counter, build
from tests.conftest import drop_tables
from tests.harness import Worker, worker
from tests.servers import POSTGRES, RABBITMQ, REDIS


@dataclass
class Shop:
    """A producer app, the env its workers get, and the counter of their effects."""

    env: dict[str, str]
    app: Celery
    counter: Counter
    log_dir: Path
    broker: str

    @property
    def store(self) -> Store:
        return runtime(self.app).store

    def task(self, name: str) -> Any:
        return self.app.tasks[f"shop.{name}"]

    def worker(self, **kwargs: Any) -> AbstractContextManager[Worker]:
        return worker(self.env, self.log_dir, **kwargs)

    def new_worker(self, **kwargs: Any) -> Worker:
        return Worker(self.env, self.log_dir, **kwargs)

    def drop_queue(self) -> None:
        """What a broker restart without persistence does to the queue: it is gone."""
        queue = self.env["TEST_QUEUE"]
        with Connection(self.env["TEST_BROKER_URL"]) as conn:
            conn.default_channel.queue_purge(queue)

    @property
    def dlq(self) -> str:
        return self.env["TEST_DLQ_QUEUE"]

    def queue_length(self, queue: str) -> int:
        """Messages ready in ``queue`` (declared if missing)."""
        from celery_reliable.dlq.publisher import dlq_queue

        with Connection(self.env["TEST_BROKER_URL"]) as conn:
            target = dlq_queue(queue) if queue == self.dlq else Queue(queue)
            _, count, _ = target.bind(conn.default_channel).queue_declare()
            return int(count)

    def dlq_messages(self) -> list[Any]:
        """The DLQ queue's messages, read and put back (taken with acks, then requeued)."""
        from celery_reliable.dlq.broker import sweep

        seen: list[Any] = []
        sweep(self.app, self.dlq, lambda taken: bool(seen.append(taken)))
        return seen

    def unacked(self) -> int:
        """Messages delivered to a consumer and not acknowledged (Redis and RabbitMQ)."""
        if self.broker == "rabbitmq":
            out = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout
            for line in out.splitlines():
                name, _, count = line.partition("\t")
                if name == self.env["TEST_QUEUE"]:
                    return int(count)
            return 0
        import redis

        # The unacked hash is shared by every queue of the DB: count this shop's queue only
        # (its values are JSON [message, exchange, routing key]).
        client = redis.Redis.from_url(self.env["TEST_BROKER_URL"])
        queue = self.env["TEST_QUEUE"]
        return sum(1 for raw in client.hvals("unacked") if json.loads(raw)[2] == queue)


def _broker_url(kind: str, tmp: Path) -> str:
    if kind == "redis":
        return REDIS.require() + "/14"
    if kind == "rabbitmq":
        return RABBITMQ.require()
    return f"sqla+sqlite:///{tmp / 'broker.db'}"


def _store_url(kind: str, tmp: Path) -> str:
    if kind == "redis":
        return REDIS.require() + "/15"
    if kind == "postgresql":
        return POSTGRES.require()
    return f"sqlite:///{tmp / 'store.db'}"


@pytest.fixture
def make_shop(tmp_path: Path) -> Iterator[Callable[..., Shop]]:
    shops: list[Shop] = []

    def make(broker: str = "redis", store: str = "redis", **overrides: str) -> Shop:
        REDIS.require()  # effects are counted in Redis whatever the broker
        prefix = "t" + uuid.uuid4().hex[:10]
        env = {
            "TEST_PREFIX": prefix,
            "TEST_QUEUE": f"q-{prefix}",
            "TEST_DLQ_QUEUE": f"dlq-{prefix}",
            "TEST_BROKER_URL": _broker_url(broker, tmp_path),
            "TEST_BACKEND_URL": REDIS.url + "/14",
            "TEST_STORE_URL": _store_url(store, tmp_path),
            **overrides,
        }
        app = build(env)
        runtime(app).store.migrate()
        shop = Shop(env, app, Counter(prefix), tmp_path, broker)
        shops.append(shop)
        return shop

    yield make
    for shop in shops:
        if shop.broker in ("rabbitmq", "redis"):
            with Connection(shop.env["TEST_BROKER_URL"]) as conn:
                channel = conn.default_channel
                if shop.broker == "rabbitmq":
                    channel.queue_delete(shop.env["TEST_QUEUE"])
                    channel.exchange_delete(shop.dlq)
                channel.queue_delete(shop.dlq)
        drop_tables(shop.store)
        reset(shop.app)
