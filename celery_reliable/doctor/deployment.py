"""What every check reads: the app, its validated settings and its tasks, gathered once
so that each check stays a small function of the configuration it judges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from celery_reliable.identity import is_reliable
from celery_reliable.runtime import runtime
from celery_reliable.settings import Settings


@dataclass(frozen=True)
class Deployment:
    """``concurrency``: the ``-c`` the workers are started with, when the configuration
    does not say (``worker_concurrency``); ``None``: Celery's default, this machine's
    CPU count."""

    app: Celery
    settings: Settings
    tasks: tuple[Any, ...]
    concurrency: int | None = None

    @classmethod
    def of(cls, app: Celery, concurrency: int | None = None) -> Deployment:
        app.loader.import_default_modules()
        tasks = tuple(t for name, t in sorted(app.tasks.items()))
        return cls(app, runtime(app).settings, tasks, concurrency)

    @property
    def reliable(self) -> tuple[Any, ...]:
        return tuple(t for t in self.tasks if is_reliable(t))

    @property
    def conf(self) -> Any:
        return self.app.conf

    @property
    def broker_url(self) -> str:
        return str(self.app.conf.broker_url or "")

    @property
    def safe_broker_url(self) -> str:
        """The broker URL with its password masked, as Celery prints it."""
        return str(maybe_sanitize_url(self.broker_url))
