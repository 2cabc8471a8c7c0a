"""The dead-letter queue at 100,000 entries: the first list page, and replay speed.

Why: an incident can dead-letter a whole backlog; the operator lists it (the
first page must come back at once: under 0.5 s with 100,000 entries) and
replays it once the cause is fixed (at least 1,000 entries per second, with
no --rate).

How: seed N entries into the index through the store's own dead_letter
operation (Redis: its Lua script, pipelined; SQL: a bulk INSERT into the
dead-letter table), newest first mixed over 4 task names, 3 reasons and 2
exception types.  Time ``DeadLetters.list()`` pages (no filter, one equality
filter, a text filter, a page deep in the listing by cursor), median of 5.
Then publish R of the entries' dead letters to a DLQ queue on a real Redis
broker and time ``DeadLetters.replay(query, to_queue=<scratch queue>)`` for
those R: decode, mark replayed, persist a fresh task record, publish the task,
record REPLAYED, and take the R messages off the DLQ queue.  Everything is
under a random prefix and queue names, deleted afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from celery import Celery

from bench._common import (
    REDIS,
    cleanup_broker,
    command_line,
    delete_matching,
    emit,
    machine,
    table,
    tag,
)
from celery_reliable import records
from celery_reliable.dlq.api import DeadLetters
from celery_reliable.dlq.message import build
from celery_reliable.dlq.publisher import publisher
from celery_reliable.runtime import reset, runtime
from celery_reliable.stores.model import DeadLetterQuery, Failure, TaskRecord

NAMES = ("shop.charge", "shop.refund", "shop.ship", "shop.mail")
REASONS = ("attempts_exhausted", "permanent_error", "expired")
EXCEPTIONS = ("ConnectionError", "ValueError")
TRACEBACK = "Traceback (most recent call last):\n" + "  File \"x.py\", line 1, in f\n" * 20


def entry(app: Celery, i: int) -> tuple[TaskRecord, str, str, Failure]:
    name = NAMES[i % len(NAMES)]
    record, _ = records.encode(
        app, name=name, task_id=f"bench-{i:07d}", key=f"{name}:{i}", fingerprint="0" * 16,
        args=[i], kwargs={"note": "x" * 40}, options={"queue": "work"},
    )
    exc = EXCEPTIONS[i % 2]
    error = f"{exc}: order {i} failed" + (" (card declined)" if i % 1000 == 7 else "")
    failure = Failure(exc, TRACEBACK, 3, "w1@bench", "work")
    return record, REASONS[i % 3], error, failure


def seed_redis(app: Celery, n: int, batch: int) -> None:
    store: Any = runtime(app).store
    script = store._scripts["dead_letter"]
    for start in range(0, n, batch):
        pipe = store.client.pipeline(transaction=False)
        for i in range(start, min(n, start + batch)):
            record, reason, error, f = entry(app, i)
            state, rec, due = store._names(record.key, record.task_id)
            t = store._tag(record.key)
            script(keys=[rec, due, f"{t}:dead", state, f"{t}:d:{record.task_id}"],
                   args=[record.task_id, record.key, reason, error, f"{t}:dead:", f.exc_type,
                         f.traceback, f.attempts, f.worker, f.queue, "name", record.name,
                         "key", record.key, "fp", record.fingerprint, "body", record.body,
                         "ctype", record.content_type, "cenc", record.content_encoding,
                         "opts", record.options, "pub", 0, "resc", 0],
                   client=pipe)
        pipe.execute()


def seed_sql(app: Celery, n: int, batch: int) -> None:
    store: Any = runtime(app).store
    store.migrate()
    table_ = store.schema.dead_letters
    now = time.time() - n * 0.001
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(n, start + batch)):
            record, reason, error, f = entry(app, i)
            rows.append({
                "task_id": record.task_id, "name": record.name, "key": record.key,
                "fingerprint": record.fingerprint, "body": record.body,
                "content_type": record.content_type,
                "content_encoding": record.content_encoding, "options": record.options,
                "published_at": 0.0, "rescues": 0, "reason": reason, "error": error,
                "dead_at": now + i * 0.001, "exc_type": f.exc_type, "traceback": f.traceback,
                "attempts": f.attempts, "worker": f.worker, "queue": f.queue, "replays": 0,
                "replayed_at": None})
        with store.engine.begin() as conn:
            conn.execute(table_.insert(), rows)
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {table_.name}")


def timed(call: Any, repeat: int = 5) -> tuple[float, Any]:
    samples, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = call()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), out


def measure(store_url: str, broker_url: str, args: argparse.Namespace) -> dict[str, Any]:
    run = tag("bdlq")
    app = Celery(run, broker=broker_url, set_as_current=False)
    app.conf.update(reliable_store_url=store_url, reliable_key_prefix=run,
                    reliable_dlq_queue=f"{run}-dlq")
    letters = DeadLetters(app)
    out: dict[str, Any] = {"store": getattr(runtime(app).store, "safe_url", store_url),
                           "entries": args.entries}
    try:
        t = time.perf_counter()
        (seed_redis if store_url.startswith("redis") else seed_sql)(app, args.entries, 2000)
        out["seed_seconds"] = time.perf_counter() - t
        first = letters.list(limit=100)
        deep_cursor = first.cursor
        for _ in range(100):  # 10,000 entries deep
            deep_cursor = letters.list(limit=100, cursor=deep_cursor).cursor
        queries = {
            "first page": lambda: letters.list(limit=100),
            "--task": lambda: letters.list(DeadLetterQuery(name="shop.ship"), limit=100),
            "--reason --exception": lambda: letters.list(
                DeadLetterQuery(reason="expired", exc_type="ValueError"), limit=100),
            "--text (rare)": lambda: letters.list(DeadLetterQuery(text="card declined"),
                                                  limit=100),
            "page at 10,000": lambda: letters.list(limit=100, cursor=deep_cursor),
        }
        out["list"] = {}
        for label, call in queries.items():
            seconds, page = timed(call)
            out["list"][label] = {"seconds": seconds, "entries": len(page.entries)}
        if args.replay:
            out["replay"] = replay(app, letters, args.replay, run)
    finally:
        cleanup(app, store_url, broker_url, run)
    return out


def replay(app: Celery, letters: DeadLetters, n: int, run: str) -> dict[str, Any]:
    """Replay the ``n`` newest shop.charge entries, their messages in the DLQ queue."""
    chosen = []
    for e in letters.matching(DeadLetterQuery(name="shop.charge")):
        chosen.append(e)
        if len(chosen) == n:
            break
    settings = runtime(app).settings
    t = time.perf_counter()
    publisher(app).publish_many(settings.dlq_queue, (
        build(e.record, e.failure, settings.dlq_traceback_max) for e in chosen))
    published = time.perf_counter() - t
    result = letters.replay(query=DeadLetterQuery(name="shop.charge"), limit=n,
                            to_queue=f"{run}-scratch")
    return {"entries": n, "dlq_publish_seconds": published, "replayed": len(result.replayed),
            "removed_from_queue": result.removed_from_queue, "seconds": result.seconds,
            "per_second": len(result.replayed) / result.seconds}


def cleanup(app: Celery, store_url: str, broker_url: str, run: str) -> None:
    store: Any = runtime(app).store
    if store_url.startswith("redis"):
        delete_matching(store.client, f"{{{run}:*")
    else:
        store.schema.metadata.drop_all(store.engine)
    cleanup_broker(redis.Redis.from_url(broker_url), run)
    publisher(app).close()
    reset(app)


def report(res: dict[str, Any]) -> str:
    rows = []
    for r in res["stores"]:
        for label, m in r["list"].items():
            rows.append([r["store"], f"{r['entries']:,}", label, m["entries"],
                         f"{m['seconds'] * 1e3:.1f}"])
    lines = [f"machine: {res['machine']['cpus']} CPUs, load {res['machine']['loadavg_1m']}; "
             f"package {res['machine']['package']}",
             table(["store", "entries", "list (limit 100)", "returned", "ms (median of 5)"],
                   rows), "target: first page < 500 ms"]
    replays = [[r["store"], r["replay"]["replayed"], r["replay"]["removed_from_queue"],
                f"{r['replay']['seconds']:.2f}", f"{r['replay']['per_second']:,.0f}"]
               for r in res["stores"] if "replay" in r]
    if replays:
        lines += ["", table(["store", "replayed", "removed from DLQ", "seconds", "entries/s"],
                            replays), "target: replay >= 1,000 entries/s"]
    return "\n".join(lines)


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--store", action="append",
                   help=f"store URL, repeatable (default {REDIS}/12); e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--broker", default=f"{REDIS}/11", help="Redis broker URL for the replay")
    p.add_argument("--entries", type=int, default=100_000, help="entries (default 100000)")
    p.add_argument("--replay", type=int, default=10_000,
                   help="entries replayed per store (default 10000; 0: skip)")
    args = p.parse_args()
    stores = args.store or [f"{REDIS}/12"]
    res = {"machine": machine(), "stores": [measure(url, args.broker, args) for url in stores]}
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
