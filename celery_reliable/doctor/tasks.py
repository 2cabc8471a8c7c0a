"""Tasks the operator declared critical (``reliable_critical_tasks``) that are not
ReliableTasks: they get none of the guarantees (no claim, no rescue, no DLQ), and a
pattern that matches nothing may be a typo that hides exactly such a task."""

from __future__ import annotations

from fnmatch import fnmatchcase

from celery_reliable.doctor.deployment import Deployment
from celery_reliable.findings import Finding
from celery_reliable.runtime import runtime


def critical(d: Deployment) -> list[Finding]:
    patterns = d.settings.critical_tasks
    if not patterns:
        return []
    name = runtime(d.app).spelling("critical_tasks")
    reliable = {t.name for t in d.reliable}
    names = [t.name for t in d.tasks]
    found = []
    plain = [n for n in names if n not in reliable and any(fnmatchcase(n, p) for p in patterns)]
    if plain:
        found.append(Finding(
            "tasks.critical", "error",
            f"{', '.join(plain)} {_not_reliable(len(plain), name)}: "
            "a crash, a lost message or a redelivery loses or repeats them, and a final "
            "failure is not dead-lettered",
            "Declare them with base=ReliableTask (or a ReliableTask subclass as the app's "
            "task_cls), or take them out of " + name,
            "operating.md#critical-tasks",
        ))
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            found.append(Finding(
                "tasks.critical_unmatched", "warning",
                f"{name} pattern {pattern!r} matches no registered task: a typo there "
                "hides a critical task from this check",
                "Correct the pattern (names as `celery -A app inspect registered` lists "
                "them), or make sure the module defining the tasks is imported "
                "(imports, include or autodiscover_tasks)",
                "operating.md#critical-tasks",
            ))
    return found


def _not_reliable(count: int, setting: str) -> str:
    if count == 1:
        return f"matches {setting} but is not a ReliableTask"
    return f"match {setting} but are not ReliableTasks"
