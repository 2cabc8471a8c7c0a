"""The deployment doctor: everything in a deployment that will lose or duplicate work.

Each concern is one module of small checks, each ``check(deployment) -> [Finding]``
(:mod:`celery_reliable.findings`): ``broker`` (the broker's Redis, the
``visibility_timeout``), ``rabbitmq`` (queue durability and type), ``store`` (the
stores reachable and kept by their servers), ``worker`` (prefetch, shutdown,
connection loss), ``results`` (result expiry), ``tasks`` (critical tasks not
reliable).  :func:`examine` runs them all; ``celery -A app reliable-check`` only
prints what it returns.
"""

from celery_reliable.doctor.report import CHECKS, Report, examine

__all__ = ["CHECKS", "Report", "examine"]
