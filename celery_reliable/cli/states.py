"""``celery -A app reliable-tasks timeline|stuck|stats|prune``: the recorded task states.

Thin over :mod:`celery_reliable.states.queries`.  Human tables by default,
``--json`` for scripts.  Exit codes: 0 done, 1 no such task, 2 a bad argument
or a store that cannot be read (unreachable, not migrated, not configured).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import click

from celery_reliable.cli.context import app_of
from celery_reliable.cli.output import ask, echo_json, table
from celery_reliable.states import State, Stats, TaskState, Transition, prune_expired, queries


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _transition_dict(t: Transition) -> dict[str, Any]:
    return {**asdict(t), "state": t.state.value, "detail": dict(t.detail or {})}


def _state_dict(c: TaskState, now: float) -> dict[str, Any]:
    return {**asdict(c), "state": c.state.value, "age": round(c.age(now), 3)}


@click.group(name="reliable-tasks")
def reliable_tasks() -> None:
    """Where a task is, which tasks are stuck, how many fail (recorded task states)."""


@reliable_tasks.command()
@click.argument("task_id", required=False)
@click.option("--key", help="Every task of this idempotency key instead of one task id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def timeline(ctx: click.Context, task_id: str | None, key: str | None, as_json: bool) -> None:
    """Every recorded transition of task TASK_ID (or of --key KEY), oldest first."""
    if (task_id is None) == (key is None):
        raise click.UsageError("give a TASK_ID or --key KEY (one of them)")
    app = app_of(ctx)
    found = ask(lambda: queries.timeline(app, task_id=task_id, key=key))
    if not found:
        what = f"task {task_id}" if task_id is not None else f"key {key!r}"
        click.echo(f"no such task: nothing recorded for {what}", err=True)
        sys.exit(1)
    if as_json:
        echo_json([_transition_dict(t) for t in found])
        return
    start = found[0].at
    rows = [
        [_time(t.at), f"+{t.at - start:.3f}s", t.task_id, t.state.value, t.attempt, t.worker,
         f"{t.error_type}: {t.error_message}" if t.error_type else None,
         json.dumps(dict(t.detail), sort_keys=True) if t.detail else None]
        for t in found
    ]
    headers = ["time (UTC)", "elapsed", "task", "state", "attempt", "worker", "error", "detail"]
    if task_id is not None:  # one task: its id is in the heading, not on every row
        click.echo(f"{found[0].name}[{task_id}] key {found[0].key!r}")
        headers.pop(2)
        rows = [r[:2] + r[3:] for r in rows]
    click.echo(table(headers, rows))


@reliable_tasks.command()
@click.option("--older-than", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Seconds a task has been in its state.")
@click.option("--state", "states", multiple=True,
              type=click.Choice([s.value for s in State], case_sensitive=False),
              help="Only this state (repeatable); default: every non-terminal state.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stuck(
    ctx: click.Context, older_than: float, states: tuple[str, ...], limit: int, as_json: bool
) -> None:
    """Tasks in a non-terminal state for longer than --older-than seconds, oldest first.

    Exits 1 when it finds any, so a cron job or a monitoring check can alert on it."""
    app = app_of(ctx)
    found = ask(lambda: queries.stuck(app, older_than, states or None, limit))
    now = datetime.now(timezone.utc).timestamp()
    if as_json:
        echo_json([_state_dict(c, now) for c in found])
    elif not found:
        click.echo(f"no task has been in a non-terminal state for more than {older_than:g} s")
    else:
        click.echo(table(
            ["task", "name", "state", "since (UTC)", "for", "attempt", "worker", "key"],
            [[c.task_id, c.name, c.state.value, _time(c.since), f"{c.age(now):.0f}s",
              c.attempt, c.worker, c.key] for c in found],
        ))
    if found:
        ctx.exit(1)


@reliable_tasks.command()
@click.option("--window", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds back from now (rounded out to whole minutes).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stats(ctx: click.Context, window: float, as_json: bool) -> None:
    """Transitions per task name and state over the window, and the failure rate."""
    app = app_of(ctx)
    found = ask(lambda: queries.stats(app, window))
    if as_json:
        echo_json(_stats_dict(found))
        return
    click.echo(_stats_table(found))


def _stats_dict(s: Stats) -> dict[str, Any]:
    return {
        "window": s.window,
        "since": s.since,
        "counts": {name: {st.value: n for st, n in per.items()} for name, per in s.counts.items()},
        "totals": {st.value: n for st, n in s.totals().items()},
        "failure_rate": s.failure_rate(),
        "failure_rate_by_name": {name: s.failure_rate(name) for name in s.counts},
    }


def _stats_table(s: Stats) -> str:
    heading = f"since {_time(s.since)} UTC (window {s.window:g} s)"
    if not s.counts:
        return f"{heading}: no transitions recorded"
    columns = [st for st in State if st in s.totals()]  # lifecycle order

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    rows = [[name, *(s.counts[name].get(st, 0) for st in columns), rate(s.failure_rate(name))]
            for name in sorted(s.counts)]
    rows.append(["(all)", *(s.totals()[st] for st in columns), rate(s.failure_rate())])
    return heading + "\n" + table(["task", *(st.value for st in columns), "failure rate"], rows)


@reliable_tasks.command()
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Tasks forgotten per store call (short transactions).")
@click.pass_context
def prune(ctx: click.Context, limit: int) -> None:
    """Forget tasks whose last transition is older than reliable_state_retention."""
    app = app_of(ctx)
    total = 0
    while True:
        n = ask(lambda: prune_expired(app, limit))
        total += n
        if n < limit:
            break
    click.echo(f"forgot {total} tasks")
