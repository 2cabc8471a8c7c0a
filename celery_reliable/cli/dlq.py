"""``celery -A app reliable-dlq list|show|replay|purge|reconcile|check``: the dead letters.

Thin over :class:`celery_reliable.dlq.api.DeadLetters`.  Tables by default,
``--json`` for scripts.  Exit codes:

* 0: done (``list`` and ``reconcile`` always, when they could read);
* 1: ``check`` found unresolved entries older than the threshold; ``replay`` or
  ``purge`` selected nothing, or some entries were refused or failed; ``purge``
  was declined at the prompt;
* 2: a usage error, an unknown task id, or a store/broker that cannot be used
  (the message on stderr says which).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn

import click

from celery_reliable.cli.context import app_of
from celery_reliable.cli.output import ask, echo_json, one_line, plural, table
from celery_reliable.dlq.api import DeadLetters, Entry
from celery_reliable.stores.model import DeadLetterQuery

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _letters(ctx: click.Context) -> DeadLetters:
    return DeadLetters(app_of(ctx))


def _no_such(task_ids: Sequence[str]) -> NoReturn:
    """End the command: these ids have no entry (exit 2), in the words ``show`` uses."""
    named = ", ".join(repr(t) for t in task_ids)
    click.echo(f"error: no dead letter with task id {named} (see `reliable-dlq list`)",
               err=True)
    sys.exit(2)


def _when(value: str | None, option: str) -> float | None:
    """An epoch time from '2026-11-23T08:00:00', epoch seconds, or a duration ago ('2h')."""
    if value is None:
        return None
    ago = _AGO.match(value)
    if ago:
        return time.time() - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use an ISO time (2026-11-23T08:00:00, UTC unless it says), epoch "
            "seconds, or a duration ago (30m, 2h, 7d)", param_hint=option) from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def _rate(value: str | None) -> float | None:
    if value is None:
        return None
    number = value[:-2] if value.endswith("/s") else value
    try:
        rate = float(number)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give entries per second, e.g. 50/s",
                                 param_hint="--rate") from None
    if rate <= 0:
        raise click.BadParameter("must be more than 0/s", param_hint="--rate")
    return rate


def _json(value: str | None, kind: type, option: str, shape: str) -> Any:
    """A JSON option (``--args``, ``--kwargs``) of the expected ``kind``."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON ({exc}): give {shape}", param_hint=option) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{value!r}: give {shape}", param_hint=option)
    return parsed


def _time(at: float | None) -> str:
    if not at:
        return ""
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _entries_table(entries: Sequence[Entry]) -> str:
    return table(
        ["task id", "task", "reason", "error", "attempts", "queue", "dead at (UTC)", "replays"],
        [[e.task_id, e.name, e.reason, one_line(e.error, 60), e.attempts, e.queue, _time(e.dead_at),
          f"{e.replays}{' (replayed)' if e.replayed else ''}"] for e in entries],
    )


def filters(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filter options shared by list, replay and purge."""
    options = [
        click.option("--task", "name", help="Task name."),
        click.option("--exception", "exc_type", help="Exception type, e.g. ConnectionError."),
        click.option("--reason", help="attempts_exhausted, permanent_error, expired, "
                                      "worker_lost, undecodable, foreign, ..."),
        click.option("--queue", help="The queue the task was published to."),
        click.option("--since", help="Dead-lettered at or after: ISO time, epoch, or 2h (ago)."),
        click.option("--until", help="Dead-lettered at or before (same forms)."),
        click.option("--text", help="Text in the error message (case-insensitive)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _query(since: str | None, until: str | None, **given: Any) -> DeadLetterQuery | None:
    query = DeadLetterQuery(
        since=_when(since, "--since"), until=_when(until, "--until"),
        **{k: v for k, v in given.items() if v is not None},
    )
    return None if query == DeadLetterQuery() else query


def _selection(
    task_ids: tuple[str, ...], everything: bool, query: DeadLetterQuery | None,
) -> tuple[list[str] | None, DeadLetterQuery | None]:
    """IDs, or filters, or --all: exactly one way of choosing."""
    ways = sum([bool(task_ids), everything, query is not None])
    if ways != 1:
        raise click.UsageError("choose entries with task IDs, with filters, or with --all "
                               "(exactly one of them)")
    if task_ids:
        return list(task_ids), None
    return None, query or DeadLetterQuery()


@click.group(name="reliable-dlq")
def reliable_dlq() -> None:
    """Dead letters: list, show, replay, purge, reconcile, check."""


@reliable_dlq.command(name="list")
@filters
@click.option("--replayed/--unresolved", "replayed", default=None,
              help="Only entries replayed since they failed, or only those not.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--cursor", help="The cursor printed by the previous page.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, /, since: str | None, until: str | None, replayed: bool | None,
          limit: int, cursor: str | None, as_json: bool, **given: Any) -> None:
    """Dead letters, newest first (read from the index: the queue is not drained)."""
    query = _query(since, until, replayed=replayed, **given)
    page = ask(lambda: _letters(ctx).list(query, limit, cursor))
    if as_json:
        echo_json({"entries": [e.to_dict() for e in page.entries], "cursor": page.cursor})
        return
    if not page.entries:
        click.echo("no dead letters match")
        return
    click.echo(_entries_table(page.entries))
    if page.cursor:
        click.echo(f"\nmore: --cursor '{page.cursor}'")


@reliable_dlq.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """One dead letter: its arguments, error, traceback and timeline."""
    detail = ask(lambda: _letters(ctx).show(task_id))
    if detail is None:
        _no_such([task_id])
    e = detail.entry
    timeline: list[dict[str, Any]] = [
        {"at": t.at, "state": t.state.value, "attempt": t.attempt, "worker": t.worker,
         "error": f"{t.error_type}: {t.error_message}" if t.error_type else None}
        for t in detail.timeline
    ]
    if as_json:
        echo_json({**e.to_dict(traceback=True), "args": detail.args, "kwargs": detail.kwargs,
               "options": detail.options, "body_note": detail.body_note,
               "raw_body": detail.raw_body, "timeline": timeline,
               "timeline_note": detail.timeline_note})
        return
    click.echo(f"{e.name}[{e.task_id}]  key {e.key!r}")
    click.echo(f"reason:    {e.reason} ({plural(e.attempts, 'attempt')}, worker {e.worker or '-'})")
    click.echo(f"dead at:   {_time(e.dead_at)} UTC, from queue {e.queue or '-'}")
    click.echo(f"replays:   {e.replays}{' (replayed since it failed)' if e.replayed else ''}")
    click.echo(f"error:     {e.error or '-'}")
    if detail.body_note is None:
        click.echo(f"args:      {json.dumps(detail.args, default=repr)}")
        click.echo(f"kwargs:    {json.dumps(detail.kwargs, default=repr)}")
    else:
        click.echo(f"arguments: not decoded: {detail.body_note}")
        click.echo(f"raw body ({e.content_type or 'no content type'}): {detail.raw_body}")
    if e.traceback:
        click.echo("\n" + e.traceback.rstrip())
    click.echo("")
    if detail.timeline_note:
        click.echo(detail.timeline_note)
    elif timeline:
        click.echo(table(["time (UTC)", "state", "attempt", "worker", "error"],
                          [[_time(t["at"]), t["state"], t["attempt"], t["worker"], t["error"]]
                           for t in timeline]))
    else:
        click.echo("no timeline recorded")


@reliable_dlq.command()
@click.argument("task_ids", nargs=-1)
@filters
@click.option("--all", "everything", is_flag=True, help="Every unresolved entry.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; publish nothing.")
@click.option("--to-queue", help="Publish to this queue instead of the original one.")
@click.option("--rate", help="At most N entries per second, e.g. 50/s.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@click.option("--force", is_flag=True, help="Replay entries already replayed, too.")
@click.option("--args", "new_args", metavar="JSON",
              help="One entry only: its corrected positional arguments, a JSON list.")
@click.option("--kwargs", "new_kwargs", metavar="JSON",
              help="One entry only: corrected arguments by name, a JSON object.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def replay(ctx: click.Context, /, task_ids: tuple[str, ...], since: str | None,
           until: str | None, everything: bool, dry_run: bool, to_queue: str | None,
           rate: str | None, limit: int | None, force: bool, new_args: str | None,
           new_kwargs: str | None, as_json: bool, **given: Any) -> None:
    """Publish dead letters again: same task id and key, attempts from 1 (one entry
    with corrected arguments: --args/--kwargs)."""
    ids, query = _selection(task_ids, everything, _query(since, until, **given))
    per_second = _rate(rate)
    args = _json(new_args, list, "--args", "a JSON list, e.g. '[42, \"a@b.c\"]'")
    kwargs = _json(new_kwargs, dict, "--kwargs", "a JSON object, e.g. '{\"email\": \"a@b.c\"}'")
    result = ask(lambda: _letters(ctx).replay(
        ids, query, to_queue=to_queue, rate=per_second, limit=limit, force=force,
        dry_run=dry_run, args=args, kwargs=kwargs))
    found = (result.replayed or result.would_replay or result.skipped or result.refused
             or result.failed)
    if result.missing and not found:
        _no_such(result.missing)  # nothing else to say: one message, as `show` gives
    if as_json:
        echo_json({"replayed": result.replayed, "would_replay": result.would_replay,
               "skipped": result.skipped, "refused": result.refused, "failed": result.failed,
               "missing": result.missing, "removed_from_queue": result.removed_from_queue,
               "seconds": round(result.seconds, 3)})
    else:
        if dry_run:
            click.echo(f"would replay {len(result.would_replay)}: "
                       f"{' '.join(result.would_replay) or '-'}")
        else:
            click.echo(f"replayed {len(result.replayed)} in {result.seconds:.2f} s "
                       f"({result.removed_from_queue} removed from the DLQ queue)")
        if result.skipped:
            click.echo(f"skipped {len(result.skipped)} already replayed (--force to replay "
                       f"again): {' '.join(result.skipped)}")
        for task_id, why in {**result.refused, **result.failed}.items():
            click.echo(f"not replayed {task_id}: {why}", err=True)
    if result.missing:
        _no_such(result.missing)
    if result.refused or result.failed or not (result.replayed or result.would_replay):
        sys.exit(1)


@reliable_dlq.command()
@click.argument("task_ids", nargs=-1)
@filters
@click.option("--replayed/--unresolved", "replayed", default=None,
              help="Only entries replayed since they failed, or only those not.")
@click.option("--all", "everything", is_flag=True, help="Every entry.")
@click.option("--dry-run", is_flag=True, help="Say what would be discarded; discard nothing.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def purge(ctx: click.Context, /, task_ids: tuple[str, ...], since: str | None,
          until: str | None, replayed: bool | None, everything: bool, dry_run: bool,
          limit: int | None, yes: bool, as_json: bool, **given: Any) -> None:
    """Discard dead letters from the index and the DLQ queue (each one is logged)."""
    ids, query = _selection(task_ids, everything,
                            _query(since, until, replayed=replayed, **given))
    letters = _letters(ctx)
    preview = ask(lambda: letters.purge(ids, query, limit=limit, dry_run=True))
    if preview.missing:
        _no_such(preview.missing)
    if not preview.purged:
        click.echo("no dead letters match", err=True)
        sys.exit(1)
    if dry_run:
        result = preview
    else:
        n = len(preview.purged)
        if not yes and not click.confirm(
                f"Discard {plural(n, 'dead letter')}? "
                f"{'It' if n == 1 else 'They'} cannot be replayed afterwards.", err=True):
            click.echo("nothing discarded", err=True)
            sys.exit(1)
        chosen = [e.task_id for e in preview.purged]
        result = ask(lambda: letters.purge(chosen))
    if as_json:
        echo_json({"purged": [e.to_dict() for e in result.purged], "dry_run": dry_run,
               "removed_from_queue": result.removed_from_queue})
        return
    verb = "would discard" if dry_run else "discarded"
    click.echo(f"{verb} {plural(len(result.purged), 'dead letter')}"
               + ("" if dry_run else f" ({result.removed_from_queue} removed from the DLQ queue)"))
    click.echo(_entries_table(result.purged))


@reliable_dlq.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def reconcile(ctx: click.Context, as_json: bool) -> None:
    """Make the DLQ queue and the index agree; say what was fixed."""
    result = ask(lambda: _letters(ctx).reconcile())
    report = {"indexed": result.indexed, "republished": result.republished,
              "duplicates_removed": result.duplicates_removed,
              "stale_removed": result.stale_removed, "unreadable": result.unreadable}
    if as_json:
        echo_json(report)
        return
    if not result.changed and not result.unreadable:
        click.echo("the DLQ queue and the index agree")
        return
    click.echo(f"indexed {plural(len(result.indexed), 'message')} that had no entry, "
               f"republished {plural(len(result.republished), 'entry', 'entries')} whose "
               f"message was gone, removed {plural(result.duplicates_removed, 'duplicate')} "
               f"and {plural(result.stale_removed, 'message')} of replayed entries")
    for identity, problem in result.unreadable.items():
        click.echo(f"unreadable message {identity}: {problem} (listed with reason "
                   f"{problem.split(':')[0]}; purge it by that id)")


@reliable_dlq.command()
@click.option("--older-than", type=click.FloatRange(min=0), required=True,
              help="Seconds an entry has been dead without being replayed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, older_than: float, as_json: bool) -> None:
    """Exit 1 when unresolved dead letters are older than --older-than seconds (cron)."""
    result = ask(lambda: _letters(ctx).check(older_than))
    if as_json:
        echo_json({"ok": result.ok, "older_than": older_than, "count": result.count,
               "oldest": result.oldest.to_dict() if result.oldest else None})
    elif result.ok:
        click.echo(f"ok: no unresolved dead letter older than {older_than:g} s")
    else:
        oldest = result.oldest
        click.echo(f"{plural(result.count, 'unresolved dead letter')} older than {older_than:g} s"
                   + (f"; oldest {oldest.task_id} ({oldest.name}, {oldest.reason}) since "
                      f"{_time(oldest.dead_at)} UTC" if oldest else ""))
    if not result.ok:
        sys.exit(1)
