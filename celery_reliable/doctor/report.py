"""Running every check of the doctor, and what the run found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery

from celery_reliable.doctor import broker, rabbitmq, results, store, tasks, worker
from celery_reliable.doctor.deployment import Deployment
from celery_reliable.errors import StoreError
from celery_reliable.findings import Finding
from celery_reliable.runtime import runtime
from celery_reliable.worker.transport import recovery_lines

Check = Callable[[Deployment], list[Finding]]

#: Every check, in the order the report lists what they find.
CHECKS: tuple[Check, ...] = (
    store.reachable, store.server, store.state_store,
    broker.redis_server, broker.visibility_timeout, rabbitmq.queues,
    worker.prefetch, worker.soft_shutdown, worker.connection_loss,
    results.expiry, tasks.critical,
)


@dataclass
class Report:
    """What :func:`examine` found, and what it read on the way."""

    store: str | None
    reliable_tasks: list[str]
    recovery: list[str]
    pending_records: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def store_reachable(self) -> bool:
        return not any(f.check == "store.unreachable" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


def examine(app: Celery, concurrency: int | None = None) -> Report:
    """Run every check on ``app`` (its configuration validated by the caller).  Reads
    the servers it names (store, state store, broker) and changes nothing, neither
    the app's configuration nor the servers."""
    d = Deployment.of(app, concurrency)
    report = Report(
        store=d.settings.store_url,
        reliable_tasks=[t.name for t in d.reliable],
        recovery=recovery_lines(app, d.settings, d.reliable),
    )
    for check in CHECKS:
        report.findings.extend(check(d))
    if report.store_reachable:
        try:
            report.pending_records = runtime(app).store.pending_count()
        except StoreError as exc:  # it answered the ping a moment ago
            report.findings.append(Finding(
                "store.unreachable", "error", str(exc), "Start the store",
                "operating.md#store-unreachable"))
    return report
