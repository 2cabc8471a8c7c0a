"""Worker bootsteps: start-up checks, transport defaults and the kombu workaround, the
rescuer, poison messages.

Installed on the app by ``ReliableTask.on_bound``: defining a reliable task is
all it takes, nothing extra to deploy.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps

from celery_reliable.dlq.poison import PoisonStep
from celery_reliable.errors import (
    ConfigurationError,
    ReliableError,
    StoreError,
    StoreUnavailable,
)
from celery_reliable.findings import Finding
from celery_reliable.identity import is_reliable
from celery_reliable.runtime import Runtime, runtime
from celery_reliable.states import signals as observe
from celery_reliable.states.runtime import states_of
from celery_reliable.task import definition
from celery_reliable.worker import kombu_compat, signals, transport
from celery_reliable.worker.limits import apply_default_limits
from celery_reliable.worker.rescue import Rescuer

logger = logging.getLogger("celery_reliable")


class ReliableWorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Validates the settings and the store at start, runs the rescuer while the worker runs."""

    label = "celery_reliable"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.rescuer: Rescuer | None = None
        self.hostname = getattr(worker, "hostname", None)
        try:
            self._set_up(worker)
        except ReliableError as exc:
            raise refuse_to_start(exc) from None

    def _set_up(self, worker: Any) -> None:
        app = worker.app
        errors = definition.kept(app)  # met when the worker finalized the app
        if errors:
            raise errors[0] if len(errors) == 1 else ConfigurationError(
                "; ".join(str(error) for error in errors))
        rt = runtime(app)  # raises ConfigurationError on a bad reliable_* setting
        states_of(app)
        reliable = [t for t in app.tasks.values() if is_reliable(t)]
        apply_default_limits(app, rt.settings, reliable)
        for line in transport.apply_defaults(app, rt.settings, reliable):
            logger.info("celery_reliable: %s", line)
        kombu_compat.apply(app)  # before the consumer connects
        if rt.settings.record_all_tasks:  # the setting as the worker runs with it
            observe.connect()
        rt.claim_ahead.enabled = rt.settings.claim_ahead and _runs_inline(worker)
        if rt.claim_ahead.enabled:
            logger.info("celery_reliable: solo pool: claims are sent as messages arrive")
        # Children read it to decide whether to send our custom task events (-E).
        app.conf.worker_send_task_events = bool(getattr(worker, "task_events", False))

    def start(self, worker: Any) -> None:
        rt = runtime(worker.app)
        try:
            rt.store.ping()
        except StoreUnavailable as exc:
            logger.error(
                "celery_reliable: the store is unreachable at start-up (%s); reliable tasks "
                "are deferred until it answers", exc,
            )
        else:
            for risk in _risks(rt):
                logger.warning("celery_reliable: %s", risk)
        logger.info("celery_reliable: store %s", rt.settings.store_url)
        if rt.settings.rescue_enabled:
            self.rescuer = Rescuer(rt, self.hostname)
            self.rescuer.start()

    def stop(self, worker: Any) -> None:
        if self.rescuer is not None:
            self.rescuer.stop()
            self.rescuer = None


def refuse_to_start(exc: ReliableError) -> SystemExit:
    """The worker's end on a configuration error: one line naming the problem and the
    fix (the traceback, which only shows Celery's start-up, at debug level)."""
    logger.debug("celery_reliable: the worker cannot start", exc_info=exc)
    return SystemExit(f"celery_reliable: the worker cannot start: {exc}")


def _risks(rt: Runtime) -> list[Finding]:
    try:
        return rt.store.risks()
    except StoreError as exc:  # the start goes on: the tasks are guarded by the claim
        logger.warning("celery_reliable: could not read the store's settings: %s", exc)
        return []


def _runs_inline(worker: Any) -> bool:
    """Whether the pool runs a task in the thread that received it (the solo pool)."""
    from celery.concurrency.solo import TaskPool as SoloPool

    pool = getattr(worker, "pool_cls", None)
    return isinstance(pool, type) and issubclass(pool, SoloPool)


def install(app: Celery) -> None:
    """Add the worker bootstep to ``app`` and connect the signal handlers (idempotent).

    Defining a ReliableTask does this; call it yourself for an app that has none
    but records its plain tasks (``reliable_record_all_tasks``).
    """
    app.steps["worker"].add(ReliableWorkerStep)
    app.steps["consumer"].add(PoisonStep)
    signals.connect()
    observe.install(app)
