"""Replaying one dead letter with corrected arguments.

A task dead-lettered on bad input (a mistyped e-mail address, an amount out of
range) is replayed with the arguments it should have had.  The replay keeps the
task id and the idempotency key, so it stands for the same outcome; the
arguments and their fingerprint are new.  The store takes the new fingerprint
for the same task id (the key was released when the task was dead-lettered),
and a stale copy still carrying the old arguments is absorbed by its claim
(``superseded``), so only the corrected call runs.

Two things are refused, with what to do instead:

* arguments that would change the key the task derives (a template naming the
  corrected argument, an ``ARGUMENTS`` key): that is another outcome, a new call;
* a task this app does not define as a ReliableTask: its fingerprint of the new
  arguments (and its ``fingerprint_exclude``) cannot be computed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from celery_reliable import keys, records
from celery_reliable.errors import ConfigurationError, IdempotencyKeyError
from celery_reliable.identity import is_reliable
from celery_reliable.stores.model import DeadLetter

_MISSING = object()


@dataclass(frozen=True)
class Correction:
    """The call a corrected replay publishes."""

    args: list[Any]
    kwargs: dict[str, Any]
    fingerprint: str
    changed: tuple[str, ...]
    """The names of the arguments whose values changed (what the timeline says)."""


def correct(
    app: Celery, letter: DeadLetter, args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
) -> Correction:
    """The corrected call of ``letter``: ``args`` replace its positional arguments,
    ``kwargs`` set the named ones (where the original passed them, by position or by
    name); raises :class:`ConfigurationError` naming what is wrong."""
    from celery_reliable.dlq.replay import call_of

    r = letter.record
    task = app.tasks.get(r.name)
    if not is_reliable(task):
        raise ConfigurationError(
            f"{r.name or 'this entry'} is not a ReliableTask of this app, so the fingerprint "
            "of corrected arguments cannot be computed: run the command with the app that "
            "defines it (-A), or replay the entry without --args/--kwargs"
        )
    try:
        old_args, old_kwargs, _ = call_of(app, letter)
    except records.UndecodableRecord as exc:
        raise ConfigurationError(f"{r.task_id} cannot be replayed: {exc}") from None
    new_args = list(old_args) if args is None else list(args)
    new_kwargs = dict(old_kwargs)
    positional = _positional_names(task.run)
    _check_names(task.run, r.name, kwargs or {})
    for name, value in (kwargs or {}).items():
        index = positional.index(name) if name in positional else len(new_args)
        if index < len(new_args):
            new_args[index] = value
        else:
            new_kwargs[name] = value
    try:
        new = keys.bind_arguments(task.run, new_args, new_kwargs)
        key, fingerprint = task.key_for(new_args, new_kwargs, task_id=r.task_id)
    except IdempotencyKeyError as exc:
        raise ConfigurationError(f"the corrected arguments do not fit {r.name}: {exc}") from None
    try:
        old = keys.bind_arguments(task.run, old_args, old_kwargs)
        derived = task.key_for(old_args, old_kwargs, task_id=r.task_id)[0]
    except IdempotencyKeyError:  # the old call did not fit the task as it is now
        old, derived = {}, None
    if derived == r.key and key != r.key:
        raise ConfigurationError(
            f"the corrected arguments change the key of {r.name} from {r.key!r} to {key!r}: "
            "a replay keeps the task id and key, so it would run another outcome under this "
            f"one's key. Call the task with those arguments instead, and purge {r.task_id}"
        )
    changed = tuple(sorted(
        name for name in {**old, **new}
        if old.get(name, _MISSING) != new.get(name, _MISSING)
    ))
    return Correction(new_args, new_kwargs, fingerprint, changed)


def _check_names(fun: Any, name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a corrected argument the task does not take (a typo would fail the replay)."""
    try:
        params = inspect.signature(fun).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [n for n in kwargs if n not in params]
    if unknown:
        raise ConfigurationError(
            f"the corrected arguments do not fit {name}: it takes ({', '.join(params)}), not "
            f"{', '.join(repr(n) for n in unknown)}"
        )


def _positional_names(fun: Any) -> list[str]:
    """The parameters of ``fun`` that a call may pass by position, in order."""
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]
