"""What a failed expectation prints: the timeline as it was, the DLQ as it is.

A test that says "ran once" and fails must show what did happen, in the words of
the lifecycle, without a debugger: every transition with its time, attempt, worker
and error, and every dead letter with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery_reliable.dlq.model import Entry
from celery_reliable.states import Transition

ARROW = " → "
#: Dead letters listed in a message at most (the rest are counted).
MAX_ENTRIES = 20


def states_line(timeline: Sequence[Transition]) -> str:
    return ARROW.join(t.state.value for t in timeline) or "(nothing recorded)"


def timeline_table(timeline: Sequence[Transition]) -> str:
    """One line per transition: seconds since the first, task, state, attempt, worker,
    error, detail.  The task id column appears when several tasks share the key."""
    if not timeline:
        return "  (no transition recorded)"
    start = timeline[0].at
    several = len({t.task_id for t in timeline}) > 1
    lines = []
    for t in timeline:
        cells = [f"+{t.at - start:7.3f}s"]
        if several:
            cells.append(t.task_id[:8])
        cells += [f"{t.state.value:<15}", f"attempt {t.attempt}"]
        if t.worker:
            cells.append(f"on {t.worker}")
        if t.error_type:
            cells.append(f"{t.error_type}: {t.error_message or ''}".rstrip(": "))
        if t.detail:
            cells.append(", ".join(f"{k}={v}" for k, v in sorted(t.detail.items())))
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def entry_line(e: Entry) -> str:
    replayed = f", replayed {e.replays}x" if e.replays else ""
    return (f"  {e.name}[{e.task_id}] key {e.key!r}: reason {e.reason!r}, "
            f"{e.attempts} attempt(s), {e.error or 'no error'}{replayed}")


def entries_block(entries: Sequence[Entry], total_known: bool = True) -> str:
    if not entries:
        return "the DLQ is empty"
    shown = "\n".join(entry_line(e) for e in entries[:MAX_ENTRIES])
    more = len(entries) - MAX_ENTRIES
    tail = f"\n  ... and {more} more" if more > 0 else ""
    count = f"{len(entries)}" if total_known else f"at least {len(entries)}"
    return f"the DLQ holds {count} entr{'y' if len(entries) == 1 else 'ies'}:\n{shown}{tail}"
