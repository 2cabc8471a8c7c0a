"""Time of one rescue sweep over a store holding a million task records.

Why: the rescuer sweeps every ``reliable_rescue_interval`` (5 s) while the
store holds one record per queued or running task.  A sweep must cost the
records that are due, not the records that exist: an index range query, never
a scan.  Target: one ``store.sweep()`` under 1 s with 1,000,000 records.

How: seed N records (deadlines spread over the next hour) plus a few hundred
already due, written in bulk in the layout the store's own publish writes
(Redis: the record hash and the due sorted set, pipelined; SQL: the tasks table,
COPY on PostgreSQL, executemany elsewhere; key states are not seeded, a sweep
does not read them).  Then time ``store.sweep(SweepPolicy(60, 3600, 500))``
(the default rescue_after, rescue_backoff_cap and rescue_batch) from the
caller: wall time, store round trip included.  Repeated: before each repeat
the due records are made due again.  A sweep with nothing due is timed too.
Everything written is deleted afterwards (the SQL tables of the run's prefix
are dropped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REDIS, command_line, emit, machine, table, tag
from celery_reliable.stores import SweepPolicy, open_store
from celery_reliable.stores.base import Store

POLICY = SweepPolicy(rescue_after=60.0, backoff_cap=3600.0, limit=500)
BODY = "[[%d],{}]"
OPTIONS = json.dumps({"headers": {"reliable_key": "receipt:%d", "reliable_fp": "611f68ba290854af"},
                      "link": None, "link_error": None, "shadow": None, "queue": "celery"})


def row(prefix: str, i: int, now: float, due: bool) -> dict[str, Any]:
    """One record as publish writes it; due ones a few seconds late, the rest within the hour."""
    deadline = now - 1 - i % 60 if due else now + 60 + (i * 7919) % 3540
    return {"task_id": f"{prefix}-{i:07d}", "name": "shop.send_receipt", "key": f"receipt:{i}",
            "fingerprint": "611f68ba290854af", "body": BODY % i,
            "content_type": "application/json", "content_encoding": "utf-8",
            "options": OPTIONS.replace("%d", str(i)), "published_at": now - 5,
            "state": "queued", "rescues": 0, "deadline": deadline}


class RedisSeeder:
    def __init__(self, store: Any) -> None:
        self.store, self.client = store, store.client
        self.tag = f"{{{store.prefix}:0}}"

    def now(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + float(micros) / 1e6

    def seed(self, rows: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for r in rows:
            pipe.hset(f"{self.tag}:t:{r['task_id']}", mapping={
                "name": r["name"], "key": r["key"], "fp": r["fingerprint"], "body": r["body"],
                "ctype": r["content_type"], "cenc": r["content_encoding"], "opts": r["options"],
                "pub": int(r["published_at"] * 1000), "state": "queued", "resc": 0})
        pipe.zadd(f"{self.tag}:due", {r["task_id"]: int(r["deadline"] * 1000) for r in rows})
        pipe.execute()

    redue = seed  # overwriting the hash and the score is what makes a record due again

    def cleanup(self, prefix: str, n: int) -> None:
        for start in range(0, n, 10_000):
            self.client.unlink(*[f"{self.tag}:t:{prefix}-{i:07d}"
                                 for i in range(start, min(n, start + 10_000))])
        self.client.unlink(f"{self.tag}:due", f"{{{self.store.prefix}}}:sweeper")


class SQLSeeder:
    def __init__(self, store: Any) -> None:
        self.store, self.table = store, store.schema.tasks
        store.migrate()

    def now(self) -> float:
        return time.time()  # the SQL store uses the caller's clock

    def seed(self, rows: list[dict[str, Any]]) -> None:
        full = [{**r, "reason": None, "error": None, "dead_at": None} for r in rows]
        if self.store.dialect == "postgresql":
            raw = self.store.engine.raw_connection()
            try:
                cols = list(full[0])
                with raw.cursor() as cur, cur.copy(
                        f'COPY {self.table.name} ({", ".join(cols)}) FROM STDIN') as copy:
                    for r in full:
                        copy.write_row([r[c] for c in cols])
                raw.commit()
            finally:
                raw.close()
        else:
            with self.store.engine.begin() as conn:
                conn.execute(self.table.insert(), full)

    def redue(self, rows: list[dict[str, Any]]) -> None:
        t = self.table
        with self.store.engine.begin() as conn:
            conn.execute(t.update().where(t.c.task_id.in_([r["task_id"] for r in rows]))
                         .values(deadline=rows[0]["deadline"], rescues=0, state="queued"))

    def analyze(self) -> None:
        with self.store.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {self.table.name}")

    def cleanup(self, prefix: str, n: int) -> None:
        self.store.schema.metadata.drop_all(self.store.engine)


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    prefix = tag("sw")
    store: Store = open_store(url, prefix=prefix)
    seeder: Any = RedisSeeder(store) if url.startswith("redis") else SQLSeeder(store)
    due_ids = set(range(0, args.records, args.records // args.due)[: args.due])
    try:
        t0 = time.perf_counter()
        now = seeder.now()
        for start in range(0, args.records, args.batch):
            seeder.seed([row(prefix, i, now, i in due_ids)
                         for i in range(start, min(args.records, start + args.batch))])
        if hasattr(seeder, "analyze"):
            seeder.analyze()  # what autovacuum does after a bulk load
        seeded = time.perf_counter() - t0
        times, taken = [], []
        for _ in range(args.repeat):
            seeder.redue([row(prefix, i, seeder.now(), True) for i in sorted(due_ids)])
            t = time.perf_counter()
            records = store.sweep(POLICY)
            times.append(time.perf_counter() - t)
            taken.append(len(records))
        t = time.perf_counter()
        nothing = len(store.sweep(POLICY))
        idle = time.perf_counter() - t
    finally:
        seeder.cleanup(prefix, args.records)
        store.close()
    safe = getattr(store, "safe_url", url)
    return {"store": safe, "records": args.records, "due": len(due_ids), "seed_seconds": seeded,
            "sweep_seconds": times, "taken": taken, "idle_sweep_seconds": idle,
            "idle_taken": nothing}


def report(res: dict[str, Any]) -> str:
    rows = [[r["store"], f"{r['records']:,}", r["due"], f"{r['seed_seconds']:.0f}",
             " ".join(str(x) for x in r["taken"]),
             f"{statistics.median(r['sweep_seconds']) * 1e3:.1f}",
             f"{max(r['sweep_seconds']) * 1e3:.1f}", f"{r['idle_sweep_seconds'] * 1e3:.1f}"]
            for r in res["stores"]]
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs; package {res['machine']['package']}; "
        f"policy {POLICY}",
        table(["store", "records", "due", "seed s", "taken per sweep", "sweep ms (median)",
               "max ms", "idle sweep ms"], rows),
        "target: one sweep < 1000 ms",
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--store", action="append",
                   help=f"store URL, repeatable (default {REDIS}/12); e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--records", type=int, default=1_000_000, help="records (default 1000000)")
    p.add_argument("--due", type=int, default=300, help="records already due (default 300)")
    p.add_argument("--repeat", type=int, default=5, help="timed sweeps (default 5)")
    p.add_argument("--batch", type=int, default=10_000, help="records per seeding batch")
    args = p.parse_args()
    stores = args.store or [f"{REDIS}/12"]
    res = {"machine": machine(), "stores": [measure(url, args) for url in stores]}
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
