"""The demo's Celery app and tasks, configured from environment variables.

``examples/demo.py`` sets ``DEMO_DIR`` and ``DEMO_PREFIX`` (``REDIS_URL`` is the
user's) and starts workers with ``python -m celery -A examples.demo_app worker``:
producer and workers read the same environment, so they share one broker, store
and prefix.  The defaults (SQLite files in ``./demo-data/``) need no server.

Side effects are counted *outside* the worker (a SQLite file, or Redis), so a
SIGKILL can neither hide nor undo one: the demo counts outcomes, it does not
trust the worker's word.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from celery_reliable import PermanentError, ReliableTask

DIR = Path(os.environ.get("DEMO_DIR", "demo-data")).resolve()
REDIS_URL = os.environ.get("REDIS_URL")  # e.g. redis://127.0.0.1:6379 (db 0, or the URL's)
PREFIX = os.environ.get("DEMO_PREFIX", "demo")  # the store's keys/tables, the queue's name


def _urls() -> tuple[str, str, str, str]:
    """(broker, result backend, store, effects): SQLite files in DIR, or two Redis dbs."""
    if not REDIS_URL:
        DIR.mkdir(parents=True, exist_ok=True)
        return (f"sqla+sqlite:///{DIR}/broker.db", f"db+sqlite:///{DIR}/results.db",
                f"sqlite:///{DIR}/store.db", str(DIR / "effects.db"))
    url = urlsplit(REDIS_URL)
    db = int(url.path.strip("/") or 0)
    base = f"{url.scheme}://{url.netloc}"
    other = f"{base}/{db + 1 if db < 15 else db - 1}"  # the store gets a db of its own
    return f"{base}/{db}", f"{base}/{db}", other, other


BROKER_URL, RESULT_BACKEND, STORE_URL, EFFECTS = _urls()


class Effects:
    """Counts side effects where the worker cannot take them back: a SQLite file or Redis."""

    def __init__(self, target: str, prefix: str) -> None:
        self.target, self.prefix = target, prefix
        self._client: Any = None

    def incr(self, name: str) -> int:
        if self.target.startswith("redis"):
            return int(self._redis().incr(f"{self.prefix}:effects:{name}"))
        with closing(self._sqlite()) as db:
            (count,) = db.execute(
                "INSERT INTO effects (name, n) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET n = n + 1 RETURNING n", (name,)
            ).fetchall()[0]  # fetchall: the statement completes, so autocommit commits it
            return int(count)

    def get(self, name: str) -> int:
        if self.target.startswith("redis"):
            return int(self._redis().get(f"{self.prefix}:effects:{name}") or 0)
        with closing(self._sqlite()) as db:
            row = db.execute("SELECT n FROM effects WHERE name = ?", (name,)).fetchone()
            return int(row[0]) if row else 0

    def _sqlite(self) -> sqlite3.Connection:
        """A connection per call: nothing shared across fork, each write committed at once."""
        db = sqlite3.connect(self.target, timeout=30, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS effects (name TEXT PRIMARY KEY, n INTEGER)")
        return db

    def _redis(self) -> Any:
        if self._client is None:
            import redis  # only needed with REDIS_URL

            self._client = redis.Redis.from_url(self.target)
        return self._client


def _transport_options() -> dict[str, Any]:
    """Redis: every key under our prefix, so the demo removes exactly its own keys.
    (kombu's SQLAlchemy transport passes its options to ``create_engine``: none here.)"""
    return {"global_keyprefix": f"{PREFIX}:"} if BROKER_URL.startswith("redis") else {}


app = Celery("demo", broker=BROKER_URL, backend=RESULT_BACKEND)
app.conf.update(
    task_default_queue=PREFIX,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options=_transport_options(),
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
    reliable_store_url=STORE_URL,
    reliable_key_prefix=PREFIX,
    # Short, so the demo is quick; production defaults are 30 s and 5 s.
    reliable_lease_seconds=3,
    reliable_rescue_interval=0.5,
)
effects = Effects(EFFECTS, PREFIX)


def forget() -> None:
    """Delete this run's Redis keys (broker, results, store, effects: all carry PREFIX)."""
    if REDIS_URL:
        import redis

        for url in {BROKER_URL, STORE_URL}:
            with redis.Redis.from_url(url) as client, suppress(redis.ConnectionError):
                for key in client.scan_iter(match=f"*{PREFIX}*", count=1000):
                    client.delete(key)


def _receipt(order_id: int) -> str:
    number = effects.incr(f"receipt:{order_id}")
    sent = datetime.now().time().isoformat(timespec="milliseconds")
    return f"receipt #{number} for order {order_id}, sent at {sent}"


@app.task(base=ReliableTask, name="demo.send_receipt", idempotency_key="receipt:{order_id}")
def send_receipt(order_id: int) -> str:
    """E-mail a receipt: a customer must get one, never two, whatever is published."""
    return _receipt(order_id)


@app.task(base=ReliableTask, name="demo.resend_receipt", idempotency_key="receipt:{order_id}",
          dedupe_on_publish=False)
def resend_receipt(order_id: int) -> str:
    """The same receipt, but every publish reaches the broker: only the worker's claim on
    the key 'receipt:{order_id}' stands between a copy and a second e-mail."""
    return _receipt(order_id)


@app.task(base=ReliableTask, name="demo.charge_card", idempotency_key="charge:{order_id}")
def charge_card(order_id: int, seconds: float = 4.0) -> str:
    """A slow call to a payment provider: the demo kills its worker half-way through."""
    effects.incr(f"charge-started:{order_id}")
    time.sleep(seconds)
    number = effects.incr(f"charge:{order_id}")
    return f"charge #{number} for order {order_id}"


@app.task(base=ReliableTask, name="demo.ship_order", idempotency_key="ship:{order_id}")
def ship_order(order_id: int) -> str:
    """Book a courier. Until the carrier's API is fixed it refuses the order for good
    (a PermanentError is not retried): the task is dead-lettered, kept for a replay."""
    if not effects.get("carrier-fixed"):
        raise PermanentError(f"carrier API refused order {order_id}: unknown service code")
    number = effects.incr(f"shipped:{order_id}")
    return f"shipment #{number} for order {order_id}"
