"""How fast the state stores forget expired tasks: prune() in batches, per backend.

Why: the sweeping worker prunes task states every ``PRUNE_EVERY`` seconds for at
most ``PRUNE_BUDGET`` seconds (``celery_reliable/worker/rescue.py``).  If that
forgets fewer tasks than the app finishes, a SQL state store grows without
bound.  The rescuer keeps up with ``rate x PRUNE_BUDGET / PRUNE_EVERY`` tasks/s.

How: ``--tasks`` finished tasks (PENDING, RECEIVED, STARTED, SUCCEEDED) are
recorded two hours in the past in a state store of their own (a random prefix,
retention 60 s), then ``prune(now - 60, PRUNE_BATCH)`` is called until a batch
comes back short; tasks per second and milliseconds per batch are printed.  On
Redis finished tasks expire by TTL and are in no index, so prune has nothing to
do with them: Redis is left out.  Tables are created by the store's migration
and dropped at the end (SQLite: a file in a temporary directory).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import command_line, emit, machine, table
from celery_reliable.states import State, Transition
from celery_reliable.states.stores import open_state_store
from celery_reliable.worker.rescue import PRUNE_BATCH, PRUNE_BUDGET, PRUNE_EVERY

STORES = ("postgresql+psycopg://postgres@127.0.0.1:5432/test",
          "mysql+pymysql://root@127.0.0.1:3306/test")
PATH = (State.PENDING, State.RECEIVED, State.STARTED, State.SUCCEEDED)


def measure(url: str, n: int) -> dict[str, Any]:
    prefix = f"bp{uuid.uuid4().hex[:6]}"
    states = open_state_store(url, prefix=prefix, retention=60)
    states.migrate()
    try:
        old = time.time() - 7200
        for start in range(0, n, 500):
            batch = []
            for _ in range(min(500, n - start)):
                task = str(uuid.uuid4())
                batch += [Transition(task, "shop.receipt", f"r:{task[:8]}", state, 1,
                                     "celery@w", old + i / 1000) for i, state in enumerate(PATH)]
            states.record(batch)
        batches, pruned, t0 = 0, 0, time.perf_counter()
        while True:
            got = states.prune(time.time() - 60, PRUNE_BATCH)
            pruned, batches = pruned + got, batches + 1
            if got < PRUNE_BATCH:
                break
        seconds = time.perf_counter() - t0
    finally:
        _drop(states)
        states.close()
    return {"store": url.split("://")[0], "pruned": pruned, "seconds": seconds,
            "tasks_per_s": pruned / seconds, "ms_per_batch": seconds / batches * 1000}


def _drop(states: Any) -> None:
    """The run's tables (named after its prefix), as the tests drop theirs."""
    from celery_reliable.stores.sql import SQLStore

    store = states.store
    if isinstance(store, SQLStore):
        store.schema.metadata.drop_all(store.engine)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        urls = [*(args.store or STORES), f"sqlite:///{tmp}/states.db"]
        results = [measure(url, args.tasks) for url in urls]
    return {"machine": machine(), "tasks": args.tasks, "results": results}


def report(res: dict[str, Any]) -> str:
    rows = [[r["store"], f"{r['pruned']:,}", f"{r['seconds']:.2f}", f"{r['tasks_per_s']:,.0f}",
             f"{r['ms_per_batch']:.0f}", f"{r['tasks_per_s'] * PRUNE_BUDGET / PRUNE_EVERY:,.0f}"]
            for r in res["results"]]
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs; package {res['machine']['package']}",
        f"{res['tasks']:,} expired finished tasks per store, batches of {PRUNE_BATCH}\n",
        table(["store", "pruned", "s", "tasks/s", f"ms per batch of {PRUNE_BATCH}",
               f"rescuer keeps up with (tasks/s, {PRUNE_BUDGET:g} s every {PRUNE_EVERY:g} s)"],
              rows),
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--store", action="append",
                   help="a SQL store URL (repeatable; default PostgreSQL and MariaDB; "
                        "SQLite is always measured)")
    p.add_argument("--tasks", type=int, default=20_000, help="tasks per store (default 20000)")
    args = p.parse_args()
    emit(run(args), args.json, report)


if __name__ == "__main__":
    main()
