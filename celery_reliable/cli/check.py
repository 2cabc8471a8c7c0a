"""``celery -A app reliable-check``: what in the deployment will lose or duplicate work.

Prints each finding of :func:`celery_reliable.doctor.examine` with its fix and docs
link (``--json`` for scripts).  Exit codes: 0 nothing wrong, or warnings only; 1 an
error found (``--strict``: a warning too); 2 the configuration is invalid, or the
store cannot be reached or is not migrated (as every other command) — the findings
are still printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from celery_reliable.cli.context import app_of
from celery_reliable.cli.output import echo_json, plural
from celery_reliable.doctor import Report, examine
from celery_reliable.runtime import runtime
from celery_reliable.settings import rows

F = TypeVar("F", bound=Callable[..., Any])


def check_options(function: F) -> F:
    """The options of ``reliable-check``, shared by its ``reliable-store check`` alias."""
    function = click.option("--concurrency", type=click.IntRange(min=1), default=None,
                            help="The -c the workers run with, when worker_concurrency "
                                 "is unset.")(function)
    function = click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")(function)
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output.")(function)


@click.command(name="reliable-check")
@check_options
@click.pass_context
def reliable_check(ctx: click.Context, as_json: bool, strict: bool,
                   concurrency: int | None) -> None:
    """Check the deployment for what will lose or duplicate work: the broker's and the
    stores' servers, the visibility timeout, RabbitMQ queues, worker settings, result
    expiry and critical tasks.  Exits 1 on an error (--strict: a warning too), 2 on an
    invalid configuration or an unreachable store, else 0."""
    run(ctx, as_json, strict, concurrency)


def run(ctx: click.Context, as_json: bool, strict: bool, concurrency: int | None) -> None:
    app = app_of(ctx)
    report = examine(app, concurrency)
    if as_json:
        settings = runtime(app).settings
        echo_json({
            "store": report.store,
            "pending_records": report.pending_records,
            "reliable_tasks": report.reliable_tasks,
            "recovery": report.recovery,
            "findings": [f.as_dict() for f in report.findings],
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "settings": {name: getattr(settings, name[len("reliable_"):])
                         for name, *_ in rows()},
        })
    else:
        _print(report)
    sys.exit(exit_code(report, strict))


def exit_code(report: Report, strict: bool) -> int:
    if not report.store_reachable:
        return 2
    if report.errors or (strict and report.warnings):
        return 1
    return 0


def _print(report: Report) -> None:
    if report.store_reachable:
        click.echo(f"store: {report.store} (reachable, "
                   f"{report.pending_records} task records in flight)")
    click.echo(f"reliable tasks: {', '.join(report.reliable_tasks) or 'none registered'}")
    for line in report.recovery:
        click.echo(line)
    for f in report.findings:
        click.echo(f"{f.severity}: [{f.check}] {f.problem}\n  fix: {f.fix}\n"
                   f"  docs: {f.docs_url}", err=True)
    if report.findings:
        click.echo(f"{plural(len(report.errors), 'error')}, "
                   f"{plural(len(report.warnings), 'warning')}", err=True)
    else:
        click.echo("no problems found")
