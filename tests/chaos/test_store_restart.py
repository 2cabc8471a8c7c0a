"""A store outage cannot run a finished body twice (G2).

The store is a Redis of this test's own, persisting every write (AOF, ``appendfsync
always``), restarted cleanly while bodies finish: nothing it held is lost, only
time passes.  Each outage lasts longer than the lease, so on the wall clock every
running lease lapses while nobody can renew it.  Bodies run in a real prefork
worker; effects are counted in the shared Redis, outside both.  Every effect must
happen once and every completion must be recorded.  The rescuer sweeps more often
than a cut-off heartbeat retries, so without the store's lease clock its first sweep
after a restart republishes running tasks as if their worker had died, and an idle
child takes them over.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.harness import wait_for
from tests.servers import IN_CI
from tests.shopfixture import Shop

pytestmark = pytest.mark.chaos

LEASE = 2.0
#: longer than the lease: on the wall clock every lease running when it began lapses
OUTAGE = 3.0
TASKS, BODY, RESTARTS = 30, 0.8, 3
#: sweeps every 0.2 s: after a restart the rescuer looks before a heartbeat (0.5 s) does
RESCUE_INTERVAL = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DurableRedis:
    """``redis-server`` on a free port, every write fsynced to its AOF before the reply,
    so a clean restart loses nothing."""

    def __init__(self, data: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed; this test starts a server of its own"
            if IN_CI:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
                    "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(self._answers, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis shuts down cleanly (its AOF is complete) and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    server = DurableRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_store_restarts_while_bodies_finish_run_each_body_once(
    make_shop: Callable[..., Shop], durable_redis: DurableRedis
) -> None:
    shop = make_shop("redis", TEST_STORE_URL=durable_redis.url, TEST_LEASE=str(LEASE),
                     TEST_RESCUE_INTERVAL=str(RESCUE_INTERVAL))
    task = shop.task("slow_effect")
    handles = [task.delay(n, BODY) for n in range(TASKS)]
    counter = shop.counter

    def in_flight() -> bool:
        return counter.total("start") > counter.total("effect")

    with shop.worker(pool="prefork", concurrency=3) as worker:
        for restart in range(RESTARTS):
            wait_for(in_flight, 30, f"a body to be running before restart {restart + 1}")
            durable_redis.stop()
            time.sleep(OUTAGE)  # the outage itself: bodies finish and cannot complete
            durable_redis.start()
            done = counter.total("effect")
            wait_for(lambda done=done: counter.total("effect") > done + 2, 30,
                     f"work to go on after restart {restart + 1}")
        results = [h.get(timeout=60) for h in handles]
        assert results == [1] * TASKS, "a result says its effect ran twice"
        wait_for(lambda: shop.store.pending_count() == 0, 30, "every record to clear")
        worker.check_alive()
    effects = {n: counter.get("effect", n) for n in range(TASKS)}
    assert effects == dict.fromkeys(range(TASKS), 1), f"effects per task: {effects}"
    for n in range(TASKS):
        state = shop.store.get_key(f"slow:{n}")
        assert state is not None and state.state == "done", (n, state)
    assert counter.total("start") == TASKS  # no body even started twice

