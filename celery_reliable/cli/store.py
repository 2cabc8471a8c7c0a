"""``celery -A app reliable-store migrate|check``: the store's schema and health."""

from __future__ import annotations

import json
import sys

import click

from celery_reliable.cli.context import app_of
from celery_reliable.cli.output import ask, plural
from celery_reliable.identity import is_reliable
from celery_reliable.runtime import runtime
from celery_reliable.settings import rows
from celery_reliable.states import state_store
from celery_reliable.stores.model import Migration
from celery_reliable.worker.transport import apply_defaults


@click.group(name="reliable-store")
def reliable_store() -> None:
    """Create, upgrade and check the celery_reliable store."""


@reliable_store.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the store's schema (SQL stores; a no-op on Redis), and the state
    store's when reliable_state_store_url names another one."""
    app = app_of(ctx)
    rt = runtime(app)
    done = ask(rt.store.migrate)
    ask(rt.store.ping)
    click.echo(_migrated(f"store {rt.settings.store_url}", done))
    separate = rt.settings.state_store_url
    if separate and separate != rt.settings.store_url:
        click.echo(_migrated(f"state store {separate}", ask(state_store(app).migrate)))


def _migrated(what: str, done: Migration) -> str:
    """What a migration did, in one or two lines."""
    if not done.has_schema:
        return f"{what}: nothing to migrate (this kind of store has no schema)"
    if not done.changed:
        return f"{what}: schema version {done.to_version}, already up to date"
    found = f"version {done.from_version}" if done.from_version else "no schema"
    lines = [f"{what}: migrated from {found} to version {done.to_version} "
             f"(applied {'; '.join(done.applied)})"]
    if done.tables_created:
        lines.append(f"created {plural(len(done.tables_created), 'table')}: "
                     f"{', '.join(done.tables_created)}")
    return "\n".join(lines)


@reliable_store.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the settings, reach the store, print the crash-recovery bound and what in
    the store server's settings puts the guarantees at risk.

    Exits 2 when a setting is invalid or the store is unreachable or not migrated, 1 when
    the store's server is at risk (no persistence, an eviction policy), else 0.
    """
    app = app_of(ctx)
    rt = runtime(app)
    ask(rt.store.ping)
    pending = ask(rt.store.pending_count)
    risks = ask(rt.store.risks)

    reliable = sorted(name for name, t in app.tasks.items() if is_reliable(t))
    recovery = ask(lambda: apply_defaults(app, rt.settings, [app.tasks[n] for n in reliable]))
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
