"""``celery -A app reliable-store migrate|check``: the store's schema and health."""

from __future__ import annotations

import click

from celery_reliable.cli.check import check_options, run
from celery_reliable.cli.context import app_of
from celery_reliable.cli.output import ask, plural
from celery_reliable.runtime import runtime
from celery_reliable.states import state_store
from celery_reliable.stores.model import Migration


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
@check_options
@click.pass_context
def check(ctx: click.Context, as_json: bool, strict: bool, concurrency: int | None) -> None:
    """The same as ``celery -A app reliable-check`` (kept under its old name): settings
    valid, store reachable, the crash-recovery bound, and everything in the deployment
    that will lose or duplicate work.  Exits 1 on an error (--strict: a warning too), 2
    on an invalid configuration or an unreachable store, else 0."""
    run(ctx, as_json, strict, concurrency)
