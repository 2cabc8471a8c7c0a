"""Does a busy worker survive its broker Redis restarting?  Ours against plain Celery.

Why: with kombu's Redis transport, a worker whose broker connection is lost while
it holds unacknowledged messages and waits on a BRPOP exits with
``Unrecoverable error: AttributeError("'NoneType' object has no attribute
'hostname'")`` (kombu 5.7.0; ``celery_reliable/worker/kombu_compat.py`` says
how, and works around it).  This counts how often, per kind of worker, under
the same load and transport options.

How: for each variant, ``--runs`` times: a redis-server of its own on a free port
(no persistence) as the broker, a prefork worker (``-c 3``, prefetch 1), a
producer publishing ``shop.send_receipt`` at ``--rate`` a second, and
``--restarts`` restarts of the broker, each once the worker has run a task
published ``--settle`` publishes after the previous one; after each restart a
task published to the new broker must run (``tests/harness.py``
``restart_under_load``).  A run ends at the first restart the worker does not
survive: "died" (its process exited) or "stalled" (alive, not consuming within
30 s).  Variants: ``ours`` (``tests/apps/shop.py``, ReliableTask, the
workaround installed by its worker step), ``plain`` (``bench/_restart_app.py``,
early acks), ``plain-late`` (late acks, as ReliableTask), ``plain-late-fixed``
(late acks with our workaround installed).
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from celery import Celery

from bench._common import REDIS, command_line, delete_matching, emit, machine, table
from celery_reliable.runtime import reset, runtime
from tests.apps.shop import build
from tests.harness import Producer, RedisServer, Worker, restart_under_load

VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "ours": ("tests.apps.shop", {}),
    "plain": ("bench._restart_app", {}),
    "plain-late": ("bench._restart_app", {"BENCH_ACKS_LATE": "1"}),
    "plain-late-fixed": ("bench._restart_app", {"BENCH_ACKS_LATE": "1", "BENCH_WORKAROUND": "1"}),
}


def one_run(variant: str, args: Any, tmp: Path) -> dict[str, Any]:
    module, extra = VARIANTS[variant]
    prefix = "br" + uuid.uuid4().hex[:8]
    server = RedisServer(tmp).start()
    env = {"TEST_PREFIX": prefix, "TEST_QUEUE": f"q-{prefix}", "TEST_DLQ_QUEUE": f"dlq-{prefix}",
           "TEST_BROKER_URL": server.url, "TEST_BACKEND_URL": f"{REDIS}/{args.db}",
           "TEST_COUNTER_URL": f"{REDIS}/{args.db}", "TEST_STORE_URL": f"{REDIS}/{args.db}",
           **extra}
    counter = redis.Redis.from_url(env["TEST_COUNTER_URL"])
    app: Celery = build(env)  # ours publishes through it; the plain ones by name
    if variant == "ours":
        runtime(app).store.migrate()
    task = app.tasks["shop.send_receipt"]
    worker = Worker(env, tmp, pool="prefork", concurrency=3, app=module)
    outcome, survived = "survived", 0
    try:
        worker.start()

        def ran(order: int) -> bool:
            worker.check_alive()
            return counter.get(f"{prefix}:effect:{order}") is not None

        def publish(order: int) -> str:
            if variant == "ours":
                return str(task.delay(order, args.hold).id)
            return str(app.send_task("shop.send_receipt", (order, args.hold)).id)

        def counted(order: int) -> bool:
            nonlocal survived
            done = ran(order)
            if done and order >= 1_000_000:  # a task published right after a restart
                survived = max(survived, order - 1_000_000 + 1)
            return done

        try:
            restart_under_load(server, Producer(publish, args.rate), counted, publish,
                               args.restarts, args.settle)
        except RuntimeError:  # check_alive: the worker exited
            outcome = "died"
        except AssertionError:  # wait_for timed out with the worker alive
            outcome = "died" if not worker.alive() else "stalled"
    finally:
        worker.kill()
        server.stop()
        delete_matching(counter, f"{prefix}:*")
        delete_matching(counter, f"{{{prefix}*")
        reset(app)
    return {"variant": variant, "outcome": outcome, "restarts_survived": survived,
            "crash_line": "'hostname'" in worker.output()}


def report(res: dict[str, Any]) -> str:
    rows = []
    for variant in res["variants"]:
        runs = [r for r in res["runs"] if r["variant"] == variant]
        died = sum(r["outcome"] == "died" for r in runs)
        stalled = sum(r["outcome"] == "stalled" for r in runs)
        losses = sum(r["restarts_survived"] + (r["outcome"] != "survived") for r in runs)
        fatal = died + stalled
        rows.append([variant, str(len(runs)), str(died), str(stalled),
                     str(sum(r["crash_line"] for r in runs)),
                     f"{fatal}/{losses}"])
    return "\n".join([
        f"machine: {res['machine']['cpus']} CPUs; package {res['machine']['package']}; "
        f"kombu {res['kombu']}",
        f"{res['restarts']} broker restarts per run, {res['rate']:g} publishes/s, body "
        f"{res['hold']:g} s, prefork -c 3, prefetch 1; a run ends at the first restart the "
        "worker does not survive",
        table(["variant", "runs", "died", "stalled", "'hostname' AttributeError",
               "fatal / connection losses"], rows),
    ])


def main() -> None:
    import kombu

    p = command_line(__doc__)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of {', '.join(VARIANTS)} (default all)")
    p.add_argument("--runs", type=int, default=5, help="runs per variant (5)")
    p.add_argument("--restarts", type=int, default=5, help="broker restarts per run (5)")
    p.add_argument("--rate", type=float, default=150.0, help="publishes per second (150)")
    p.add_argument("--hold", type=float, default=0.005, help="seconds a body runs (0.005)")
    p.add_argument("--settle", type=int, default=100,
                   help="tasks the worker runs between two restarts (100)")
    p.add_argument("--db", type=int, default=6,
                   help="Redis DB (shared server) of the store, results and counter (6)")
    args = p.parse_args()
    variants = args.variants.split(",")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.runs):
            for variant in variants:
                directory = Path(tmp) / f"{variant}-{n}"
                directory.mkdir()
                runs.append(one_run(variant, args, directory))
    res = {"machine": machine(), "kombu": kombu.__version__, "variants": variants,
           "restarts": args.restarts, "rate": args.rate, "hold": args.hold, "runs": runs}
    emit(res, args.json, report)


if __name__ == "__main__":
    main()
