"""The store server's own settings that put the guarantees at risk, on real Redis servers.

Each test starts a throwaway ``redis-server`` with the settings in question on a
free port (the shared server's settings are not ours to change, ``redis_with`` in
tests/conftest.py), and checks what ``RedisStore.risks()`` and ``celery -A app
reliable-store check`` say.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_reliable import ReliableTask
from celery_reliable.cli.store import reliable_store
from celery_reliable.runtime import reset
from celery_reliable.stores import open_store
from celery_reliable.stores.redis_server import ServerFacts, store_findings

AT_RISK = ("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru",
           "--save", "", "--appendonly", "no")
SAFE = ("--maxmemory", "64mb", "--maxmemory-policy", "noeviction", "--appendonly", "yes")
RDB_ONLY = ("--appendonly", "no", "--save", "3600 1")


def judged(policy: str, maxmemory: int, aof: bool | None, save: str | None) -> list[str]:
    facts = ServerFacts(policy=policy, maxmemory=maxmemory, aof=aof, save=save)
    return [f"{f.check}:{f.severity}" for f in store_findings("redis://h:6379/1", facts)]


def test_a_store_server_is_judged_on_eviction_and_persistence() -> None:
    assert judged("noeviction", 1 << 30, True, "") == []
    assert judged("allkeys-lru", 0, True, "") == []  # no limit: nothing evicted
    assert judged("noeviction", 0, None, None) == []  # the server would not say
    assert judged("noeviction", 0, False, "3600 1") == ["store.persistence:warning"]  # RDB
    assert judged("volatile-lru", 1 << 30, True, "") == ["store.eviction:error"]
    assert judged("noeviction", 0, False, "") == ["store.persistence:error"]
    evicting = store_findings("redis://h:6379/1", ServerFacts("volatile-lru", 1 << 30, True, ""))
    assert "maxmemory-policy volatile-lru" in evicting[0].problem
    assert "noeviction" in evicting[0].fix  # the fix is named


def test_a_redis_that_evicts_and_forgets_is_reported_and_a_safe_one_is_not(
    redis_with: Callable[..., str],
) -> None:
    start = redis_with
    at_risk, safe = open_store(start(*AT_RISK)), open_store(start(*SAFE))
    try:
        risks = at_risk.risks()
        assert [r.check for r in risks] == ["store.eviction", "store.persistence"], risks
        assert "allkeys-lru" in risks[0].problem and "does not persist" in risks[1].problem
        assert safe.risks() == []
        rdb_only = open_store(start(*RDB_ONLY))
        assert [(r.check, r.severity) for r in rdb_only.risks()] == [
            ("store.persistence", "warning")]
        rdb_only.close()
    finally:
        at_risk.close()
        safe.close()


@pytest.mark.parametrize(("options", "code"), [(AT_RISK, 1), (SAFE, 0)])
def test_store_check_exits_1_when_the_store_is_at_risk(
    redis_with: Callable[..., str], options: tuple[str, ...], code: int
) -> None:
    start = redis_with
    app = Celery("risks", broker="memory://", set_as_current=False)
    app.conf.reliable_store_url = start(*options)

    @app.task(base=ReliableTask, shared=False, name="shop.receipt", idempotency_key="r:{n}")
    def receipt(n: int) -> None: ...

    try:
        result = CliRunner().invoke(reliable_store, ["check", "--json"],
                                    obj=SimpleNamespace(app=app))
        assert result.exit_code == code, result.output
        report = json.loads(result.stdout)
        stored = [f["check"] for f in report["findings"] if f["check"].startswith("store.")]
        assert stored == (["store.eviction", "store.persistence"] if code else [])
        assert report["reliable_tasks"] == ["shop.receipt"]
    finally:
        reset(app)


def test_a_worker_warns_at_start_when_its_store_is_at_risk(
    redis_with: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    from celery_reliable.worker.steps import ReliableWorkerStep

    start = redis_with
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
