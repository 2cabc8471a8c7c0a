from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_reliable.runtime import reset
from celery_reliable.stores import Store, open_store
from celery_reliable.stores.memory import MemoryStore
from tests.harness import wait_for
from tests.servers import IN_CI, MARIADB, POSTGRES, REDIS, free_port

pytest_plugins = ["tests.shopfixture"]

STORE_KINDS = ["memory", "fakeredis", "redis", "sqlite", "postgresql", "mariadb"]


@pytest.fixture
def app() -> Iterator[Celery]:
    """An app on kombu's memory transport and a memory store, with queue names of its own
    (tasks and dead letters): unit tests of the task, the DLQ and the events."""
    name = uuid.uuid4().hex[:6]
    app = Celery(f"unit{name}", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = "memory://"
    app.conf.reliable_dlq_queue = f"dlq-{name}"
    app.conf.task_default_queue = f"work-{name}"
    # The broker is kombu's memory transport: eager dead letters may go to its DLQ
    # queue, where the DLQ tests read them (the default keeps them off the broker).
    app.conf.reliable_dlq_publish_eager = True
    yield app
    reset(app)


@pytest.fixture
def dlq_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DLQ queue refuses every dead letter, as when a publish is not confirmed
    (``monkeypatch.undo()`` brings it back)."""
    from celery_reliable.dlq.publisher import DeadLetterPublishError, Publisher

    def down(self: Publisher, queue: str, message: object) -> None:
        raise DeadLetterPublishError("the DLQ queue did not confirm")

    monkeypatch.setattr(Publisher, "publish", down)


@pytest.fixture
def prefix() -> str:
    """A namespace no other test uses, so tests can share one server."""
    return "t" + uuid.uuid4().hex[:10]


def make_store(kind: str, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "fakeredis":
        import fakeredis

        from celery_reliable.stores.redis import RedisStore

        return RedisStore(
            "redis://fake", prefix=prefix, client=fakeredis.FakeRedis(decode_responses=True)
        )
    if kind == "redis":
        return open_store(REDIS.require() + "/15", prefix=prefix)
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "store.db"
        store = open_store(f"sqlite:///{path}", prefix=prefix)
    elif kind == "postgresql":
        store = open_store(POSTGRES.require(), prefix=prefix)
    else:
        store = open_store(MARIADB.require(), prefix=prefix)
    store.migrate()
    return store


@pytest.fixture(params=STORE_KINDS)
def any_store(
    request: pytest.FixtureRequest, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """Every backend, each against its real server (memory and fakeredis need none)."""
    store = make_store(request.param, prefix, tmp_path_factory)
    yield store
    drop_tables(store)
    store.close()


def drop_tables(store: Store) -> None:
    """Tests use random prefixes: drop their SQL tables so the server does not fill up."""
    from celery_reliable.stores.sql import SQLStore

    if isinstance(store, SQLStore) and store.engine.dialect.name != "sqlite":
        store.schema.metadata.drop_all(store.engine)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs real servers, so ``-m "not integration and not chaos"`` runs the
    unit tests alone (the folder decides: tests/integration and tests/chaos)."""
    for item in items:
        parts = item.path.parts
        if "integration" in parts or "chaos" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def redis_with(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``start(*options)``: the URL of a new redis-server of the test's own, started with
    those options (``--appendonly no``, ``--maxmemory-policy ...``) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; these tests start servers of their own"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        port = free_port()
        directory = tmp_path / str(port)
        directory.mkdir()
        started.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
             *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        client = redis.Redis(port=port)
        wait_for(lambda: _answers(client), 10, f"redis-server on port {port}")
        client.close()
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for server in started:
        server.terminate()
        server.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
