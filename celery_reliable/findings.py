"""What a check of the deployment found: one problem, how bad, the fix and where the
docs explain it.

Stores judge their own server (:meth:`~celery_reliable.stores.Store.risks`), the
deployment doctor (:mod:`celery_reliable.doctor`) judges everything else; both
answer in findings, so the worker's start-up warnings, ``celery -A app
reliable-check`` and its ``--json`` say the same thing in the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]

#: Where a finding's page is: the project's ``docs/`` folder (the docs are not published
#: on a site yet; ``mkdocs build`` renders them).
DOCS_URL = "docs/"


@dataclass(frozen=True)
class Finding:
    """One problem of a deployment.

    ``severity``: ``"error"`` when the configuration loses or runs twice work on an
    event that ordinary operation brings (a restart, a deploy, a long task);
    ``"warning"`` when it does so only on a rarer failure, or costs wasted work that
    the claim absorbs.  ``docs``: a page and section, ``"operating.md#broker-persistence"``.
    """

    check: str
    severity: Severity
    problem: str
    fix: str
    docs: str

    def __str__(self) -> str:
        return f"{self.problem}. {self.fix}"

    @property
    def docs_url(self) -> str:
        return f"{DOCS_URL}{self.docs}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs": self.docs_url}
