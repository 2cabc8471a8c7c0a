"""The verdict of the compatibility job: which tests pass plain but not with ReliableTask.

Pure functions over the outcome files the plugin writes (``{test id: {"outcome",
"message"}}``) and the allowed list (``allowed.txt``), so the rule the job fails on is
unit-tested without running Celery's suite.
"""

from __future__ import annotations

import collections
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Outcomes = Mapping[str, Mapping[str, Any]]

#: the columns of the table, in order
COLUMNS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@dataclass(frozen=True)
class Allowed:
    """One entry of the allowed list: a test id (``fnmatch`` pattern) and why."""

    pattern: str
    reason: str
    line: int

    def matches(self, test: str) -> bool:
        return fnmatch.fnmatchcase(test, self.pattern)


@dataclass(frozen=True)
class Difference:
    test: str
    plain: str
    reliable: str
    message: str
    allowed: Allowed | None


def parse_allowed(text: str, source: str = "allowed.txt") -> list[Allowed]:
    """``<test id or fnmatch pattern> | <reason>`` per line; ``#`` starts a comment.

    An entry without a reason is refused: the list is the documentation of every
    way ReliableTask is allowed to differ from Celery.
    """
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = (part.strip() for part in line.partition("|"))
        if not sep or not pattern or not reason:
            raise ValueError(
                f"{source}:{number}: {line!r} is not '<test id> | <reason>'; every allowed "
                "difference names the test and says why it may differ"
            )
        entries.append(Allowed(pattern, reason, number))
    return entries


def load_allowed(path: Path) -> list[Allowed]:
    return parse_allowed(path.read_text(), str(path))


def counts(outcomes: Outcomes) -> dict[str, int]:
    tally = collections.Counter(entry["outcome"] for entry in outcomes.values())
    return {column: tally.get(column, 0) for column in COLUMNS}


def differences(
    plain: Outcomes, reliable: Outcomes, allowed: Iterable[Allowed]
) -> list[Difference]:
    """Tests that passed in the plain run and did not with ReliableTask (a test missing
    from the ReliableTask run counts: it did not pass).  Tests that fail plain too are
    Celery's or this machine's, not ours, and are not differences."""
    rules = list(allowed)
    found = []
    for test in sorted(plain):
        if plain[test]["outcome"] != "passed":
            continue
        entry = reliable.get(test, {"outcome": "missing", "message": "not run"})
        if entry["outcome"] == "passed":
            continue
        rule = next((rule for rule in rules if rule.matches(test)), None)
        found.append(Difference(test, "passed", entry["outcome"], entry["message"], rule))
    return found


def unused(
    allowed: Iterable[Allowed], found: Iterable[Difference], ran: Iterable[str]
) -> list[Allowed]:
    """Entries that matched a test of this run that did not differ: candidates to drop
    (entries for tests outside the selection say nothing and are not listed)."""
    used = {diff.allowed for diff in found if diff.allowed is not None}
    tests = list(ran)
    return [
        rule for rule in allowed
        if rule not in used and any(rule.matches(test) for test in tests)
    ]
