"""A worker under load survives its broker Redis restarting, again and again.

The broker is a Redis of the test's own, without persistence: each restart
empties every queue and drops every connection while the worker holds
unacknowledged messages and waits on a BRPOP, the state in which kombu's Redis
transport used to stop the worker (``celery_reliable/worker/kombu_compat.py``).
The worker must stay alive and go on consuming, and every task whose
``apply_async`` returned must succeed, its effect once: those the restart
emptied from the queue (or published before the worker declared its queue on
the new broker) come back through the rescuer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_reliable.states import State, flush_all, queries
from tests.harness import Producer, RedisServer, restart_under_load, wait_for
from tests.servers import IN_CI
from tests.shopfixture import Shop

pytestmark = pytest.mark.chaos

RESTARTS = 5
#: publishes per second while the broker restarts: a busy worker, not a flooded one,
#: so it holds messages in flight with a BRPOP pending most of the time
RATE = 150.0
HOLD = 0.005
#: tasks the worker runs between its reconnection and the next restart
SETTLE = 100


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """The broker Redis this test restarts (requested before ``make_shop``, so it is
    still up when the shop's teardown deletes its queues)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed; this test starts a broker of its own"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    directory = tmp_path / "broker"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


def test_worker_under_load_survives_five_broker_restarts(
    broker: RedisServer, make_shop: Callable[..., Shop]
) -> None:
    shop = make_shop("redis", TEST_BROKER_URL=broker.url)
    task = shop.task("send_receipt")
    worker = shop.new_worker(pool="prefork", concurrency=3).start()

    def ran(order: int) -> bool:
        worker.check_alive()
        return shop.counter.get("effect", order) == 1

    def publish(order: int) -> str:
        return str(task.delay(order, HOLD).id)

    producer = Producer(publish, RATE)
    try:
        published = restart_under_load(broker, producer, ran, publish, RESTARTS, SETTLE)

        def all_completed() -> bool:
            worker.check_alive()
            return shop.store.pending_count() == 0

        wait_for(all_completed, 45, "every task to complete (the rescued ones included)")
        not_done = [order for order, task_id in published.items()
                    if (key := shop.store.get_key(f"receipt:{order}")) is None
                    or (key.state, key.task_id) != ("done", task_id)]
        assert not_done == [], f"{len(not_done)} tasks not done in the store: {not_done[:10]}"
        not_once = [order for order in published if shop.counter.get("effect", order) != 1]
        assert not_once == [], f"{len(not_once)} effects not counted once: {not_once[:10]}"
        assert worker.alive()
        flush_all()  # the producer's PENDING transitions
        # Counted, not asserted: a task the rescuer republished while its first copy ran
        # may lose that copy's SUCCEEDED to a RESCUED recorded just before it (transitions
        # from two processes taken in arrival order, issue 28's third part).
        timelines = [queries.timeline(shop.app, task_id=task_id) for task_id in published.values()]
        states = [{step.state for step in timeline} for timeline in timelines]
        succeeded = sum(1 for seen in states if State.SUCCEEDED in seen)
        rescued = sum(1 for seen in states if State.RESCUED in seen)
        print(f"\n{len(published)} tasks published through {RESTARTS} broker restarts "
              f"({producer.refused} publishes refused while it was down): all done, each "
              f"effect once; {rescued} came back through the rescuer; {succeeded} show "
              "SUCCEEDED in the state store")
    finally:
        worker.kill()
