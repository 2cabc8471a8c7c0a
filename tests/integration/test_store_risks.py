"""The store server's own settings that put the guarantees at risk, on real Redis servers.

Each test starts a throwaway ``redis-server`` with the settings in question on a
free port (the shared server's settings are not ours to change), and checks
what ``RedisStore.risks()`` and ``celery -A app reliable-store check`` say.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from click.testing import CliRunner

from celery_reliable import ReliableTask
from celery_reliable.cli.store import reliable_store
from celery_reliable.runtime import reset
from celery_reliable.stores import open_store
from celery_reliable.stores.redis_base import redis_risks
from tests.servers import IN_CI

AT_RISK = ("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru",
           "--save", "", "--appendonly", "no")
SAFE = ("--maxmemory", "64mb", "--maxmemory-policy", "noeviction", "--appendonly", "yes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_with(tmp_path: Path) -> Iterator[object]:
    """``start(*options)``: the URL of a new redis-server started with those options."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; these tests start servers of their own"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        port = _free_port()
        directory = tmp_path / str(port)
        directory.mkdir()
        started.append(subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
             *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for server in started:
        server.terminate()
        server.wait(timeout=10)


def test_redis_risks_names_eviction_and_persistence() -> None:
    url = "redis://h:6379/1"
    assert redis_risks(url, "noeviction", 1 << 30, "yes", "") == []
    assert redis_risks(url, "allkeys-lru", 0, "yes", "") == []  # no limit: nothing evicted
    assert redis_risks(url, "noeviction", 0, "no", "3600 1") == []  # RDB snapshots
    assert redis_risks(url, "noeviction", 0, None, None) == []  # CONFIG refused: unknown
    evicting = redis_risks(url, "volatile-lru", 1 << 30, "yes", "")
    assert len(evicting) == 1 and "maxmemory-policy volatile-lru" in evicting[0]
    assert "noeviction" in evicting[0]  # the fix is named
    forgetting = redis_risks(url, "noeviction", 0, "no", "")
    assert len(forgetting) == 1 and "does not persist" in forgetting[0]


def test_a_redis_that_evicts_and_forgets_is_reported_and_a_safe_one_is_not(
    redis_with: object,
) -> None:
    start = redis_with
    assert callable(start)
    at_risk, safe = open_store(start(*AT_RISK)), open_store(start(*SAFE))
    try:
        risks = at_risk.risks()
        assert len(risks) == 2, risks
        assert "allkeys-lru" in risks[0] and "does not persist" in risks[1]
        assert safe.risks() == []
    finally:
        at_risk.close()
        safe.close()


@pytest.mark.parametrize(("options", "code"), [(AT_RISK, 1), (SAFE, 0)])
def test_store_check_exits_1_when_the_store_is_at_risk(
    redis_with: object, options: tuple[str, ...], code: int
) -> None:
    start = redis_with
    assert callable(start)
    app = Celery("risks", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = start(*options)

    @app.task(base=ReliableTask, shared=False, name="shop.receipt", idempotency_key="r:{n}")
    def receipt(n: int) -> None: ...

    try:
        result = CliRunner().invoke(reliable_store, ["check", "--json"],
                                    obj=SimpleNamespace(app=app))
        assert result.exit_code == code, result.output
        report = json.loads(result.stdout)
        assert len(report["risks"]) == (2 if code else 0)
        assert report["reliable_tasks"] == ["shop.receipt"]
    finally:
        reset(app)


def test_a_worker_warns_at_start_when_its_store_is_at_risk(
    redis_with: object, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_reliable.worker.steps import ReliableWorkerStep

    start = redis_with
    assert callable(start)
    app = Celery("risks", broker="memory://", set_as_current=False)
    app.conf.update(reliable_store_url=start(*AT_RISK), reliable_rescue_enabled=False)
    step = ReliableWorkerStep.__new__(ReliableWorkerStep)
    step.rescuer, step.hostname = None, "w@test"
    try:
        with caplog.at_level("WARNING", logger="celery_reliable"):
            step.start(SimpleNamespace(app=app))
    finally:
        reset(app)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("may evict keys" in w for w in warnings), warnings
    assert any("does not persist" in w for w in warnings), warnings
