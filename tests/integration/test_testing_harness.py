"""The test harness on real stores: each test's prefix is isolated and leaves nothing
behind (Redis keys deleted, PostgreSQL and MariaDB tables dropped)."""

from __future__ import annotations

import pytest
import sqlalchemy
from celery import Celery

from celery_reliable import PermanentError, ReliableTask
from celery_reliable.testing import use_store
from tests.servers import MARIADB, POSTGRES, REDIS


def _app() -> tuple[Celery, list[int]]:
    app = Celery("harnessed", broker="memory://", set_as_current=False)
    app.conf.reliable_retry_backoff_base = 0
    app.conf.task_default_queue = "harnessed"
    sent: list[int] = []

    @app.task(base=ReliableTask, idempotency_key="receipt:{n}", shared=False)
    def send(n: int) -> None:
        if n < 0:
            raise PermanentError("refused")
        sent.append(n)

    return app, sent


@pytest.mark.parametrize("server", ["redis", "postgresql", "mariadb"])
def test_a_real_store_is_isolated_and_left_empty(server: str) -> None:
    url = {"redis": lambda: REDIS.require() + "/15", "postgresql": POSTGRES.require,
           "mariadb": MARIADB.require}[server]()
    app, sent = _app()
    task = app.tasks[f"{__name__}.send"]
    with use_store(app, url) as reliable, reliable.worker():
        task.delay(1)
        reliable.assert_ran_once(task.delay(1))
        reliable.assert_dead_lettered(task.delay(-1), reason="permanent_error")
        prefix = reliable.key_prefix
    assert sent == [1]
    if server == "redis":
        import redis

        client = redis.Redis.from_url(url)
        assert list(client.scan_iter(match="{" + prefix + "[:}]*", count=1000)) == []
    else:
        engine = sqlalchemy.create_engine(url)
        left = [t for t in sqlalchemy.inspect(engine).get_table_names() if t.startswith(prefix)]
        engine.dispose()
        assert left == []
