"""Redis memory per completed idempotency key.

Why: a completed key is remembered for ``reliable_retention`` (a day by
default) so that late duplicates are skipped; at a million tasks a day the
store holds a million such keys, so their size decides the Redis bill.  Target:
at most 200 bytes per key.

Two kinds of key, measured in one run: a declared key (``receipt:<n>``, kept for
``reliable_retention``, a day) and the key of a publish (a task without a declared
key is keyed by its task id, a UUID, kept for ``reliable_publish_key_retention``,
2 h).

How: N keys of a kind go through the store's own claim and complete Lua
scripts (the exact scripts, key names and arguments ``RedisStore.claim`` and
``RedisStore.complete`` use, sent in pipelines for speed; ``--mode api`` calls
the public methods one by one instead), with result ``None`` (kept as
``"null"``) and the default retention.  Memory per key is the change of the
server's ``used_memory`` divided by N, measured when filling and again when
deleting (both are server-wide: load elsewhere on the server shows as a gap
between the two), repeated; ``MEMORY USAGE`` of sample keys is shown beside it
(it leaves out the expiry entry and the hash-table buckets).  Cycle 1 starts
from an empty DB, so it includes the growth of the DB's hash tables: the cost a
store holding this many keys pays.
Only keys under this run's prefix are written and deleted (never FLUSHDB).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._common import REDIS, command_line, delete_matching, emit, machine, table, tag
from celery_reliable import keys
from celery_reliable.stores import open_store
from celery_reliable.stores.redis import RedisStore

LEASE, MAX_LOST = 30.0, 3
#: the default retention of each kind of key (settings.py)
RETENTION = {"declared": 86400.0, "publish": 7200.0}
OWNER = "celery@worker-1:12345:"


def fill(
    store: RedisStore, first: int, n: int, batch: int, mode: str, kind: str
) -> list[str]:
    """Claim and complete keys receipt:<first>..receipt:<first+n-1> (``declared``), or
    as many keys of a publish (``publish``: the task id); the keys, in order."""
    result = keys.encode_result(None, 4096)  # "null"
    retention = RETENTION[kind]
    written = []
    for start in range(first, first + n, batch):
        calls = []
        for i in range(start, min(start + batch, first + n)):
            task_id = str(uuid.uuid4())
            key = f"receipt:{i}" if kind == "declared" else task_id
            fp = keys.fingerprint({"order_id": i})
            calls.append((key, fp, task_id, OWNER + task_id[:8]))
            written.append(key)
        if mode == "api":
            for key, fp, task_id, owner in calls:
                assert store.claim(key, fp, task_id, owner, LEASE, MAX_LOST).runs
                assert store.complete(key, fp, owner, task_id, result, retention)
            continue
        pipe = store.client.pipeline(transaction=False)
        for key, fp, task_id, owner in calls:
            claim_keys, claim_args = store._claim_call(key, fp, task_id, owner, LEASE, MAX_LOST)
            store._scripts["claim"](keys=claim_keys, client=pipe, args=claim_args)
            done_keys, done_args = store.complete_call(key, fp, owner, task_id, result, retention)
            store._scripts["complete"](keys=done_keys, client=pipe, args=done_args)
        replies = pipe.execute()
        if any(r != 1 for r in replies[1::2]) or any(r[0] != "claimed" for r in replies[0::2]):
            raise RuntimeError("a claim or complete did not succeed")
    return written


def value(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = tag("mk")  # 8 characters, as long as the default prefix "reliable"
    url = f"{REDIS}/{args.db}"
    store = open_store(url, prefix=prefix)
    assert isinstance(store, RedisStore)
    client = redis.Redis.from_url(url)
    kinds = ["declared", "publish"] if args.kind == "both" else [args.kind]
    cycles = []
    try:
        fill(store, -1, 1, 1, args.mode, "declared")  # loads the scripts; checked by the API
        state = store.get_key("receipt:-1")
        assert state is not None and state.state == "done" and state.result == "null", state
        for c in range(args.repeat):
            for kind in kinds:
                base = c * args.keys
                before = used(client)
                t0 = time.perf_counter()
                written = fill(store, base, args.keys, args.batch, args.mode, kind)
                seconds = time.perf_counter() - t0
                after = used(client)
                names = [f"{{{prefix}:0}}:k:{k}" for k in written]
                name = names[len(names) // 2]
                usage = [int(client.memory_usage(n, samples=0) or 0)
                         for n in names[:: max(1, args.keys // 100)]]
                cycles.append({
                    "kind": kind,
                    "fill_bytes_per_key": (after - before) / args.keys,
                    "memory_usage_median": statistics.median(usage),
                    "fill_seconds": seconds,
                    "value": value(client.get(name)), "key_name": name,
                    "ttl_s": client.pttl(name) / 1000,
                })
                deleted = delete_matching(client, f"{{{prefix}:0}}:k:*")
                cycles[-1]["delete_bytes_per_key"] = (after - used(client)) / deleted
    finally:
        delete_matching(client, f"{{{prefix}*")
        store.close()
    return {"machine": machine(), "keys": args.keys, "mode": args.mode, "db": args.db,
            "cycles": cycles,
            "redis_memory": {k: v for k, v in client.info("memory").items()
                             if k in ("mem_allocator", "used_memory_human")}}


def report(res: dict[str, Any]) -> str:
    rows = [[i + 1, c["kind"], f"{c['fill_bytes_per_key']:.1f}",
             f"{c['delete_bytes_per_key']:.1f}", c["memory_usage_median"],
             f"{c['fill_seconds']:.1f}"]
            for i, c in enumerate(res["cycles"])]
    samples = {c["kind"]: c for c in res["cycles"]}
    buckets = 2 * 8 * 2 ** math.ceil(math.log2(res["keys"])) / res["keys"]
    lines = [
        f"machine: {res['machine']['cpus']} CPUs, Redis {res['machine']['redis']} "
        f"({res['redis_memory']['mem_allocator']}); package {res['machine']['package']}",
        f"{res['keys']:,} keys claimed + completed per cycle and kind ({res['mode']}), "
        "result None",
    ]
    for kind, c in samples.items():
        lines.append(
            f"a completed {kind} key: {c['key_name']} = {c['value']} "
            f"({len(c['key_name'])} + {len(c['value'])} bytes, TTL {c['ttl_s']:.0f} s)")
    lines.append("")
    lines.append(table(["run", "kind", "used_memory delta / key (fill)", "(delete)",
                        "MEMORY USAGE median", "fill s"], rows))
    for kind in samples:
        fills = [c["fill_bytes_per_key"] for c in res["cycles"] if c["kind"] == kind]
        lines.append(f"{kind}: {min(fills):.1f} to {max(fills):.1f} bytes per completed key")
    lines.append(
        f"(the first run starts from an empty DB: the DB's main and expires hash tables "
        f"grow to the next power of two, {buckets:.0f} B/key at {res['keys']:,} keys); "
        "target <= 200")
    return "\n".join(lines)


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--keys", type=int, default=100_000, help="keys per cycle (default 100000)")
    p.add_argument("--repeat", type=int, default=3, help="fill/delete cycles (default 3)")
    p.add_argument("--db", type=int, default=11, help="dedicated Redis DB (default 11)")
    p.add_argument("--kind", choices=("declared", "publish", "both"), default="both",
                   help="declared keys (receipt:<n>), keys of a publish (task ids), or both")
    p.add_argument("--batch", type=int, default=1000, help="keys per pipeline (default 1000)")
    p.add_argument("--mode", choices=("pipeline", "api"), default="pipeline",
                   help="pipelined Lua scripts (default) or store.claim/complete one by one")
    args = p.parse_args()
    res = run(args)
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
