"""What a persisted publish cannot get below: the store call taken apart, in one process.

Why: issue 11 asks for a publish with persist-on-publish at 0.8 x plain Celery's,
which DESIGN.md section 8 reads as about one extra store round trip.  The store's
round trip is already overlapped with Celery building the message
(``bench/publish_stages.py``), so what is left is the cost of talking to the store
at all plus our Python.  This measures those two apart by replacing pieces of
ours, in this process only:

* ``plain``: ``@app.task(acks_late=True)``;
* ``ours``: ``ReliableTask`` with the defaults (persist and dedupe on publish);
* ``ours, no states``: the same with state recording off;
* ``ours, no states, trivial script``: our store call as it is, but the script it
  calls only returns ``{'new', id}``: what the real script's Redis time adds;
* ``ours, no states, trivial store call``: the record
  is encoded as usual, then an ``EVALSHA`` of a script that only returns ``{'new',
  id}`` is written on a plain socket before Celery builds the message and its
  reply read at the producer gate: the least any store call can cost here;
* ``ours, no states, no store call``: the record is encoded, nothing is sent;
* ``ours, no states, persist and dedupe off``: no record, no store call.

Every variant publishes 100 tasks in turn, for ``--rounds`` rounds; medians of
the per-round microseconds per publish.  "RTs" divides the extra time by a
redis-py ``PING`` measured in the same run, the unit of DESIGN.md section 8.
Writes only under its own prefix and queue, and deletes them.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._common import (
    REDIS,
    cleanup_broker,
    command_line,
    delete_matching,
    emit,
    machine,
    redis_rtt,
    table,
    tag,
)
from bench._tput_app import build, task
from celery_reliable.records import encode
from celery_reliable.runtime import reset
from celery_reliable.stores.model import PublishOutcome, PublishStatus
from celery_reliable.stores.redis_calls import pack

CHUNK = 100
TRIVIAL = "return {'new', ARGV[1]}"
VARIANTS: dict[str, dict[str, str]] = {
    "plain": {"BENCH_VARIANT": "plain"},
    "ours": {"BENCH_VARIANT": "ours"},
    "ours, no states": {"BENCH_VARIANT": "ours-nostates"},
    "ours, no states, trivial script": {"BENCH_VARIANT": "ours-nostates"},
    "ours, no states, trivial store call": {"BENCH_VARIANT": "ours-nostates"},
    "ours, no states, no store call": {"BENCH_VARIANT": "ours-nostates"},
    "ours, no states, persist and dedupe off": {
        "BENCH_VARIANT": "ours-nostates", "BENCH_PERSIST": "0", "BENCH_DEDUPE": "0"},
}


def _instead_of_the_store(t: Any, call: Callable[[str], Callable[[], None]] | None) -> None:
    """Make ``t`` encode its record as usual, then run ``call(task_id)`` (which returns
    what to do at the gate) instead of the store call; None: nothing at all."""
    new = PublishOutcome(PublishStatus.NEW, None)

    def before(settings: Any, task_id: str, key: str, fingerprint: str, args: Any,
               kwargs: Any, options: Callable[[], Mapping[str, Any]], dedupe: bool) -> Any:
        encode(t._get_app(), name=t.name, task_id=task_id, key=key, fingerprint=fingerprint,
               args=args, kwargs=kwargs, options=options(), serializer=t.serializer)
        at_gate = call(task_id) if call is not None else None

        def answer() -> PublishOutcome:
            if at_gate is not None:
                at_gate()
            return new
        return answer

    t._before_publish = before


def _raw_trivial_call(store_url: str) -> Callable[[str], Callable[[], None]]:
    client = redis.Redis.from_url(store_url)
    sha = client.script_load(TRIVIAL)
    sock = socket.create_connection((client.connection_pool.connection_kwargs["host"],
                                     client.connection_pool.connection_kwargs["port"]))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(task_id: str) -> Callable[[], None]:
        sock.sendall(pack(("EVALSHA", sha, 0, task_id)))
        return lambda: _read_reply(sock)
    return call


def _read_reply(sock: socket.socket) -> None:
    """The reply ``*2 $3 new $<n> <id>``: read until its last line ends."""
    data = b""
    while data.count(b"\r\n") < 5:
        data += sock.recv(4096)


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_tag = tag("pf")
    store_url = f"{REDIS}/{args.store_db}"
    env = {"BENCH_BROKER_URL": f"{REDIS}/{args.broker_db}", "BENCH_QUEUE": run_tag,
           "BENCH_STORE_URL": store_url, "BENCH_PREFIX": run_tag}
    apps = {name: build({**env, **extra}) for name, extra in VARIANTS.items()}
    tasks = {name: task(app) for name, app in apps.items()}
    _instead_of_the_store(tasks["ours, no states, trivial store call"],
                          _raw_trivial_call(store_url))
    _instead_of_the_store(tasks["ours, no states, no store call"], None)
    store = tasks["ours, no states, trivial script"].reliable.store
    store._scripts["publish"] = store.client.register_script(TRIVIAL)
    broker = redis.Redis.from_url(env["BENCH_BROKER_URL"])
    us: dict[str, list[float]] = {name: [] for name in tasks}
    n = 0
    try:
        for rnd in range(args.rounds + 1):  # the first round warms up
            for name, t in tasks.items():
                t0 = time.perf_counter()
                for i in range(n, n + CHUNK):
                    t.delay(i)
                if rnd:
                    us[name].append((time.perf_counter() - t0) / CHUNK * 1e6)
                n += CHUNK
            broker.delete(run_tag)  # nobody consumes: keep the queue short
        rtt = redis_rtt(store_url) * 1e6
    finally:
        for app in apps.values():
            reset(app)
        delete_matching(redis.Redis.from_url(store_url), f"{{{run_tag}*")
        cleanup_broker(broker, run_tag)
    return {"machine": machine(), "rounds": args.rounds, "chunk": CHUNK, "rtt_us": rtt,
            "us_per_publish": us}


def report(res: dict[str, Any]) -> str:
    medians = {name: statistics.median(v) for name, v in res["us_per_publish"].items()}
    plain, rtt = medians["plain"], res["rtt_us"]
    rows = [[name, f"{m:.0f}", f"{plain / m:.2f}", f"{m - plain:+.0f}", f"{(m - plain) / rtt:+.2f}"]
            for name, m in medians.items()]
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs, Redis {res['machine']['redis']}; "
        f"package {res['machine']['package']}",
        f"{res['rounds']} rounds of {res['chunk']} publishes per variant, in turn; "
        f"redis-py PING {rtt:.0f} us\n",
        table(["variant", "us/publish", "x plain", "extra us", "extra RTs"], rows),
    ])


def main() -> None:
    p = command_line(__doc__)
    p.add_argument("--rounds", type=int, default=40, help="rounds (default 40)")
    p.add_argument("--broker-db", type=int, default=8, help="broker Redis DB (default 8)")
    p.add_argument("--store-db", type=int, default=9, help="store Redis DB (default 9)")
    args = p.parse_args()
    emit(run(args), args.json, report)


if __name__ == "__main__":
    main()
