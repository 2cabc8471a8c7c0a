"""The deployment doctor's checks that read a server: the broker's Redis (servers of the
test's own, started with ``--appendonly no`` and the like), a separate state store,
and RabbitMQ's queues (the shared server, queue names of the test's own)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import amqp
import pytest
from celery import Celery
from kombu import Queue

from celery_reliable import ReliableTask
from celery_reliable.doctor import broker, rabbitmq, store
from celery_reliable.doctor.deployment import Deployment
from celery_reliable.findings import Finding
from celery_reliable.runtime import reset
from tests.servers import RABBITMQ, free_port

NO_PERSISTENCE = ("--appendonly", "no", "--save", "")
RDB_ONLY = ("--appendonly", "no", "--save", "3600 1")
AOF = ("--appendonly", "yes")
EVICTING = ("--appendonly", "yes", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")


@pytest.fixture
def make_app() -> Iterator[Callable[..., Celery]]:
    apps: list[Celery] = []

    def build(broker_url: str, **conf: object) -> Celery:
        app = Celery("doctor", broker=broker_url, set_as_current=False)
        app.conf.update(reliable_store_url="memory://", **conf)
        apps.append(app)
        return app

    yield build
    for app in apps:
        reset(app)


def checks(found: list[Finding]) -> list[str]:
    return [f"{f.check}:{f.severity}" for f in found]


@pytest.mark.parametrize(("options", "expected"), [
    (NO_PERSISTENCE, ["broker.persistence:error"]),
    (RDB_ONLY, ["broker.persistence:warning"]),
    (EVICTING, ["broker.eviction:error"]),
    (AOF, []),
])
def test_the_broker_redis_is_judged_on_aof_and_eviction(
    redis_with: Callable[..., str], make_app: Callable[..., Celery],
    options: tuple[str, ...], expected: list[str],
) -> None:
    app = make_app(redis_with(*options))
    found = broker.redis_server(Deployment.of(app))
    assert checks(found) == expected, found
    if expected == ["broker.persistence:warning"]:
        assert 'save "3600 1"' in found[0].problem and "appendonly yes" in found[0].fix


def test_an_unreachable_broker_redis_is_an_error(make_app: Callable[..., Celery]) -> None:
    app = make_app(f"redis://127.0.0.1:{free_port()}/0")
    assert checks(broker.redis_server(Deployment.of(app))) == ["broker.unreachable:error"]


def test_a_separate_state_store_that_cannot_be_reached_is_an_error(
    redis_with: Callable[..., str], make_app: Callable[..., Celery],
) -> None:
    down = make_app("memory://", reliable_state_store_url=f"redis://127.0.0.1:{free_port()}/0")
    found = store.state_store(Deployment.of(down))
    assert checks(found) == ["states.unreachable:error"]
    assert "reliable_state_store_url" in found[0].problem
    up = make_app("memory://", reliable_state_store_url=redis_with(*AOF))
    assert store.state_store(Deployment.of(up)) == []
    at_risk = make_app("memory://", reliable_state_store_url=redis_with(*NO_PERSISTENCE))
    assert checks(store.state_store(Deployment.of(at_risk))) == ["store.persistence:error"]


@pytest.fixture
def rabbit() -> Iterator[tuple[str, list[str]]]:
    """The RabbitMQ URL, and a list of queue names the test declares (deleted after)."""
    url = RABBITMQ.require()
    names: list[str] = []
    yield url, names
    connection = amqp.Connection(f"{RABBITMQ.host}:{RABBITMQ.port}", userid="guest",
                                 password="guest")
    connection.connect()
    for name in names:
        connection.channel().queue_delete(name)
    connection.close()


def _declare_on_broker(name: str, **arguments: object) -> None:
    connection = amqp.Connection(f"{RABBITMQ.host}:{RABBITMQ.port}", userid="guest",
                                 password="guest")
    connection.connect()
    connection.channel().queue_declare(name, durable=True, auto_delete=False,
                                       arguments=arguments or None)
    connection.close()


def _reliable_task(app: Celery, queue: str) -> None:
    @app.task(base=ReliableTask, shared=False, name=f"shop.receipt.{queue}", queue=queue)
    def receipt() -> None: ...


def test_a_classic_queue_of_a_reliable_task_warns_and_a_quorum_one_passes(
    rabbit: tuple[str, list[str]], make_app: Callable[..., Celery],
) -> None:
    url, names = rabbit
    classic, quorum = f"doctor-classic-{uuid.uuid4().hex[:8]}", f"doctor-q-{uuid.uuid4().hex[:8]}"
    names += [classic, quorum]
    app = make_app(url, task_default_queue=classic)
    _reliable_task(app, classic)
    found = rabbitmq.queues(Deployment.of(app))  # not on the broker yet: the app's word
    assert checks(found) == ["rabbitmq.classic:warning"] and classic in found[0].problem
    _declare_on_broker(classic)
    assert checks(rabbitmq.queues(Deployment.of(app))) == ["rabbitmq.classic:warning"]
    safe = make_app(url, task_default_queue=quorum, task_default_queue_type="quorum")
    _reliable_task(safe, quorum)
    _declare_on_broker(quorum, **{"x-queue-type": "quorum"})
    assert rabbitmq.queues(Deployment.of(safe)) == []


def test_a_non_durable_queue_and_transient_messages_are_errors(
    rabbit: tuple[str, list[str]], make_app: Callable[..., Celery],
) -> None:
    url, _ = rabbit  # the queue is not declared on the broker: judged as the app says
    name = f"doctor-transient-{uuid.uuid4().hex[:8]}"
    app = make_app(url, task_queues=[Queue(name, durable=False)],
                   task_default_delivery_mode="transient")
    _reliable_task(app, name)
    found = rabbitmq.queues(Deployment.of(app))
    assert checks(found) == ["rabbitmq.durable:error", "rabbitmq.delivery_mode:error"]


def test_a_queue_the_broker_holds_otherwise_than_the_app_declares_is_an_error(
    rabbit: tuple[str, list[str]], make_app: Callable[..., Celery],
) -> None:
    """The app says classic, the broker has a quorum queue: what the passive look cannot
    tell, the app's own declaration does (RabbitMQ names the argument that differs)."""
    url, names = rabbit
    name = f"doctor-mismatch-{uuid.uuid4().hex[:8]}"
    names.append(name)
    _declare_on_broker(name, **{"x-queue-type": "quorum"})
    app = make_app(url)
    _reliable_task(app, name)
    found = rabbitmq.queues(Deployment.of(app))
    assert checks(found) == ["rabbitmq.mismatch:error"], found
    assert "x-queue-type is the value 'quorum'" in found[0].problem


def test_an_unreachable_rabbitmq_is_an_error(make_app: Callable[..., Celery]) -> None:
    app = make_app(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    _reliable_task(app, "celery")
    assert checks(rabbitmq.queues(Deployment.of(app))) == ["broker.unreachable:error"]
