"""What the CLI sub-commands print (a plain table for people, JSON for scripts), and how
they end on an error (exit code 2, the message on stderr)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from celery_reliable.errors import ReliableError

T = TypeVar("T")


#: Widest cell of a table: longer text ends in "..." (the whole of it is in --json).
CELL_MAX = 80


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], cell_max: int = CELL_MAX
) -> str:
    """Columns padded to their widest cell; None prints as an empty cell.  Every cell is
    one line (an error message's newlines and indents become single spaces) of at most
    ``cell_max`` characters, so a multi-line traceback message cannot break the rows."""
    cells = [[str(c) for c in headers]] + [
        ["" if c is None else one_line(str(c), cell_max) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def one_line(text: str | None, width: int) -> str:
    """``text`` on one line (whitespace runs, newlines included, become one space),
    cut to ``width`` characters with "..." at the end."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``1 dead letter``, ``3 dead letters``, ``2 entries``: a count with its noun."""
    return f"{count} {singular if count == 1 else many or singular + 's'}"


def echo_json(value: Any) -> None:
    """Indented JSON on stdout (values JSON has no type for, such as times, as text)."""
    click.echo(json.dumps(value, indent=2, default=str))


def ask(question: Callable[[], T]) -> T:
    """Run an API call; a store, broker or argument error ends the command with exit code 2."""
    try:
        return question()
    except ReliableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # the broker is unreachable (kombu raises socket errors)
        click.echo(f"error: the broker cannot be reached: {exc}", err=True)
        sys.exit(2)
