"""Time of the state store's queries over a million recorded transitions.

Why: ``celery -A app reliable-tasks stuck|stats`` and the Flower tab ask these
questions of a store that keeps every transition of every task for the
retention (7 days by default).  They must cost what they return, not what is
stored: "stuck" is an index range scan per state, "stats" reads per-minute
counts.  Target: ``stuck()`` and ``stats()`` under 200 ms each with 1,000,000
history rows.

How: seed ``--rows`` history rows (tasks following realistic paths: most
succeed, some retried, dead-lettered, deduplicated, a few still in flight),
with their current rows and per-minute counts, spread over the last
``--hours``, in the layout ``record()`` writes (PostgreSQL: COPY; other SQL
databases: multi-row INSERTs).  Then time, from the caller (round trip
included), each query ``--repeat`` times, plus ``record()`` of a 500-transition
batch, the write the recorder's flush thread makes.  The tables of the run's
prefix are dropped afterwards.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import command_line, emit, machine, table, tag
from celery_reliable.states import State, Transition
from celery_reliable.states.model import new_id
from celery_reliable.states.stores.sql import SQLStateStore
from celery_reliable.stores import open_store
from celery_reliable.stores.sql import SQLStore

S = State
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_MS = 200.0
NAMES = ["shop.send_receipt", "shop.charge", "shop.refund", "shop.ship", "shop.notify"]
# (weight, path): most tasks succeed; the in-flight ones are what "stuck" finds.
PROFILES = [
    (80, [S.PENDING, S.RECEIVED, S.STARTED, S.SUCCEEDED]),
    (8, [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.RECEIVED, S.STARTED,
         S.SUCCEEDED]),
    (4, [S.PENDING, S.RECEIVED, S.STARTED, S.FAILED, S.DEAD_LETTERED]),
    (3, [S.PENDING, S.RECEIVED, S.DEDUPLICATED]),
    (2, [S.PENDING, S.RECEIVED, S.STARTED]),
    (1, [S.PENDING, S.RECEIVED, S.DEFERRED]),
    (1, [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED]),
    (1, [S.PENDING]),
]
HISTORY = ("id", "task_id", "name", "key", "state", "attempt", "worker", "at", "error_type",
           "error_message", "detail")
CURRENT = ("task_id", "name", "key", "state", "since", "attempt", "worker")


def tasks(rows: int, hours: float, seed: int) -> Iterator[list[Transition]]:
    """Paths of tasks until ``rows`` transitions, started uniformly over the last hours."""
    rng = random.Random(seed)
    weights, paths = zip(*PROFILES, strict=True)
    now, made, i = time.time(), 0, 0
    while made < rows:
        path = rng.choices(paths, weights)[0][: rows - made]
        at, attempt, task_id = now - rng.uniform(0, hours * 3600), 1, f"bench-{i:08d}"
        name = NAMES[i % len(NAMES)]
        steps = []
        for state in path:
            if state is S.RECEIVED and steps and steps[-1].state is S.RETRY_SCHEDULED:
                attempt += 1
            failed = state in (S.RETRY_SCHEDULED, S.FAILED)
            steps.append(Transition(
                task_id, name, f"{name}:{i}", state, attempt, f"w{i % 8}@bench", at,
                "ConnectionError" if failed else None, "upstream down" if failed else None,
                {"countdown": 2.0} if state is S.RETRY_SCHEDULED else None, new_id(at),
            ))
            at += rng.uniform(0.01, 2.0)
        made += len(steps)
        i += 1
        yield steps


class Seeder:
    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.schema = store.schema

    def load(self, rows: int, hours: float, batch: int) -> int:
        """Seed; returns the number of tasks."""
        history: list[tuple[Any, ...]] = []
        current: list[tuple[Any, ...]] = []
        counts: Counter[tuple[int, str, str]] = Counter()
        n = 0
        for steps in tasks(rows, hours, seed=7):
            n += 1
            for t in steps:
                history.append((t.id, t.task_id, t.name, t.key, t.state.value, t.attempt,
                                t.worker, t.at, t.error_type, t.error_message,
                                t.detail_json()))
                counts[(int(t.at // 60), t.name, t.state.value)] += 1
            last = steps[-1]
            current.append((last.task_id, last.name, last.key, last.state.value, last.at,
                            last.attempt, last.worker))
            if len(history) >= batch:
                self.write(self.schema.transitions.name, HISTORY, history)
                self.write(self.schema.states.name, CURRENT, current)
                history, current = [], []
        self.write(self.schema.transitions.name, HISTORY, history)
        self.write(self.schema.states.name, CURRENT, current)
        self.write(self.schema.state_counts.name, ("minute", "name", "state", "n"),
                   [(*key, k) for key, k in counts.items()])
        with self.store.engine.begin() as conn:
            for t in (self.schema.transitions, self.schema.states, self.schema.state_counts):
                conn.exec_driver_sql(f"ANALYZE {'TABLE ' if self.store.dialect == 'mysql' else ''}"
                                     f"{t.name}")  # what autovacuum does after a bulk load
        return n

    def write(self, table_name: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.store.dialect == "postgresql":
            raw = self.store.engine.raw_connection()
            try:
                names = ", ".join(f'"{c}"' for c in columns)
                with raw.cursor() as cur, cur.copy(
                        f"COPY {table_name} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                raw.commit()
            finally:
                raw.close()
        else:
            table_obj = self.schema.metadata.tables[table_name]
            with self.store.engine.begin() as conn:
                conn.execute(table_obj.insert(), [dict(zip(columns, r, strict=True))
                                                  for r in rows])


def timed(call: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times, result


def fresh_batch(run: int) -> list[Transition]:
    """100 new tasks x 5 transitions: a flush of a busy worker."""
    now = time.time()
    path = [S.PENDING, S.RECEIVED, S.STARTED, S.RETRY_SCHEDULED, S.RECEIVED]
    return [Transition(f"rec-{run}-{i}", "shop.charge", f"k{run}-{i}", state, at=now + j * 1e-3)
            for i in range(100) for j, state in enumerate(path)]


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url, prefix=tag("stq"))
    assert isinstance(store, SQLStore), "this benchmark seeds SQL stores"
    states = SQLStateStore(store, retention=7 * 86400.0)
    store.migrate()
    try:
        start = time.perf_counter()
        n_tasks = Seeder(store).load(args.rows, args.hours, args.batch)
        seeded = time.perf_counter() - start
        sample = f"bench-{n_tasks // 2:08d}"
        queries: list[tuple[str, Callable[[], Any], bool]] = [
            ("stuck(300)", lambda: states.stuck(300), True),
            ("stuck(300, [STARTED])", lambda: states.stuck(300, {S.STARTED}), True),
            ("stuck(60, limit=1000)", lambda: states.stuck(60, limit=1000), True),
            ("stats(3600)", lambda: states.stats(3600), True),
            ("stats(86400)", lambda: states.stats(86400), True),
            ("timeline(id)", lambda: states.timeline(sample), False),
            ("timeline_by_key(key)",
             lambda: states.timeline_by_key(f"{NAMES[(n_tasks // 2) % 5]}:{n_tasks // 2}"), False),
        ]
        results = []
        for label, call, targeted in queries:
            times, answer = timed(call, args.repeat)
            size = len(answer.counts) if hasattr(answer, "counts") else len(answer)
            results.append({"query": label, "ms": [t * 1e3 for t in times], "returned": size,
                            "target": targeted})
        record_times = []
        for run in range(args.repeat):
            batch = fresh_batch(run)
            start = time.perf_counter()
            outcome = states.record(batch)
            record_times.append((time.perf_counter() - start) * 1e3)
            assert outcome.written == len(batch), outcome
        results.append({"query": "record(500 transitions)", "ms": record_times, "returned": 500,
                        "target": False})
    finally:
        store.schema.metadata.drop_all(store.engine)
        store.close()
    return {"store": store.safe_url, "rows": args.rows, "tasks": n_tasks,
            "seed_seconds": seeded, "results": results}


def report(res: dict[str, Any]) -> str:
    out = [f"machine: {res['machine']['cpus']} CPUs; package {res['machine']['package']}",
           f"command: {res['machine']['command']}"]
    for r in res["stores"]:
        out.append(f"\n{r['store']}: {r['rows']:,} history rows, {r['tasks']:,} tasks, "
                   f"seeded in {r['seed_seconds']:.0f} s")
        rows = [[q["query"], q["returned"], f"{statistics.median(q['ms']):.1f}",
                 f"{max(q['ms']):.1f}",
                 ("ok" if max(q["ms"]) < TARGET_MS else "MISSED") if q["target"] else ""]
                for q in r["results"]]
        out.append(table(["query", "returned", "median ms", "max ms", f"< {TARGET_MS:.0f} ms"],
                         rows))
    return "\n".join(out)


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--store", action="append",
                   help=f"SQL store URL, repeatable (default {POSTGRES})")
    p.add_argument("--rows", type=int, default=1_000_000, help="history rows (default 1000000)")
    p.add_argument("--hours", type=float, default=24.0, help="spread over the last N hours")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per query (default 7)")
    p.add_argument("--batch", type=int, default=50_000, help="rows per seeding batch")
    args = p.parse_args()
    res = {"machine": machine(),
           "stores": [measure(url, args) for url in (args.store or [POSTGRES])]}
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
