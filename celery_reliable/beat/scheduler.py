"""Beat schedulers whose sends are keyed by schedule slot, so each slot runs once.

:class:`SlotKeys` is a mixin for any Celery beat scheduler class: it uses only the
scheduler's documented hooks (``is_due`` and ``apply_async``, the ones Celery's own
``Scheduler`` and django-celery-beat's ``DatabaseScheduler`` define), never beat's
internals.  For every entry whose task is a ReliableTask (or is not known to the beat
process, so may be one: the header is harmless to a plain task) it adds the header
``reliable_slot = beat:<entry name>:<slot>``; the task uses it as its idempotency key
(unless the call declares one of its own), so a second beat process, or a beat
restarted inside the slot, publishes a duplicate that the store absorbs: the
producer's dedupe answers it with the first publish, the worker's claim backs that.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery_reliable.beat import slots
from celery_reliable.headers import HEADER_SLOT
from celery_reliable.identity import is_reliable
from celery_reliable.runtime import runtime

logger = logging.getLogger("celery_reliable")


class SlotKeys:
    """Mix into a beat scheduler class, before it: ``class S(SlotKeys, RedBeatScheduler)``."""

    app: Any

    def is_due(self, entry: Any) -> Any:
        """The entry's own answer, with interval schedules due at their slot boundaries."""
        inner = entry.schedule
        if not slots.is_interval(inner):
            return super().is_due(entry)  # type: ignore[misc]
        entry.schedule = slots.Aligned(inner)
        try:
            return super().is_due(entry)  # type: ignore[misc]
        finally:
            entry.schedule = inner

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        if advance:
            entry = self.reserve(entry)  # type: ignore[attr-defined]
        task = self.app.tasks.get(entry.task)
        if task is not None and not is_reliable(task):
            return super().apply_async(  # type: ignore[misc]
                entry, producer=producer, advance=False, **kwargs)
        now: datetime = entry.schedule.now()
        slot = slots.slot_of(entry.schedule, now, entry.last_run_at)
        settings = runtime(self.app).settings
        late = (slots._aware(entry.schedule, now) - slot).total_seconds()
        if settings.beat_missed_slots == "skip" and late > settings.beat_slot_grace:
            logger.warning(
                "beat: not sending %s for its slot %s: %.0f s late (no beat ran then), and "
                "reliable_beat_missed_slots is 'skip'", entry.name, slot.isoformat(), late,
            )
            return None
        # The slot header goes on the entry's options for this send only.  Not on a copy
        # of the entry: an entry class may not copy (django-celery-beat's ModelEntry is
        # built from its database row, and copy.copy calls it with ScheduleEntry's
        # arguments), and the scheduler may keep the entry it passed in.
        own = entry.options
        headers = dict(own.get("headers") or {})
        headers[HEADER_SLOT] = slots.key(entry.name, slot)
        entry.options = {**own, "headers": headers}
        try:
            return super().apply_async(  # type: ignore[misc]
                entry, producer=producer, advance=False, **kwargs)
        finally:
            entry.options = own
