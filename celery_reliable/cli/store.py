"""``celery -A app reliable-store migrate|check``: the store's schema and health."""

from __future__ import annotations

import json
import sys

import click
from celery import Celery

from celery_reliable.errors import ReliableError
from celery_reliable.runtime import runtime
from celery_reliable.settings import rows
from celery_reliable.states import state_store
from celery_reliable.worker.transport import apply_defaults


def _app(ctx: click.Context) -> Celery:
    app: Celery = ctx.obj.app
    return app


@click.group(name="reliable-store")
def reliable_store() -> None:
    """Create, upgrade and check the celery_reliable store."""


@reliable_store.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the store's schema (SQL stores; a no-op on Redis), and the state
    store's when reliable_state_store_url names another one."""
    app = _app(ctx)
    try:
        rt = runtime(app)
        rt.store.migrate()
        rt.store.ping()
        separate = rt.settings.state_store_url
        if separate and separate != rt.settings.store_url:
            state_store(app).migrate()
    except ReliableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"store {rt.settings.store_url} is up to date")


@reliable_store.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the settings, reach the store, print the crash-recovery bound and what in
    the store server's settings puts the guarantees at risk.

    Exits 2 when a setting is invalid or the store is unreachable or not migrated, 1 when
    the store's server is at risk (no persistence, an eviction policy), else 0.
    """
    app = _app(ctx)
    try:
        rt = runtime(app)
        rt.store.ping()
        pending = rt.store.pending_count()
        risks = rt.store.risks()
    except ReliableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    app.loader.import_default_modules()
    from celery_reliable.task import ReliableTask

    reliable = sorted(name for name, t in app.tasks.items() if isinstance(t, ReliableTask))
    recovery = apply_defaults(app, rt.settings, [app.tasks[n] for n in reliable])
    report = {
        "store": rt.settings.store_url,
        "pending_records": pending,
        "reliable_tasks": reliable,
        "recovery": recovery,
        "risks": risks,
        "settings": {name: getattr(rt.settings, name[len("reliable_"):]) for name, *_ in rows()},
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(f"store: {report['store']} (reachable, {pending} task records in flight)")
        click.echo(f"reliable tasks: {', '.join(reliable) or 'none registered'}")
        for line in recovery:
            click.echo(line)
        for risk in risks:
            click.echo(f"warning: {risk}", err=True)
    if risks:
        sys.exit(1)
