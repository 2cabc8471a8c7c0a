"""Schedule slots: the same in every process, whatever the send time."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import crontab, schedule

from celery_reliable import ReliableTask
from celery_reliable.beat import slots
from celery_reliable.beat.scheduler import SlotKeys
from celery_reliable.headers import HEADER_SLOT


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_an_interval_slot_is_aligned_to_multiples_of_the_interval() -> None:
    every = schedule(timedelta(seconds=30))
    for sent in ("2026-12-07T10:00:00.001", "2026-12-07T10:00:17", "2026-12-07T10:00:29.999"):
        assert slots.slot_of(every, at(sent), None) == at("2026-12-07T10:00:00")
    assert slots.slot_of(every, at("2026-12-07T10:00:30"), None) == at("2026-12-07T10:00:30")
    assert slots.key("refresh", at("2026-12-07T10:00:30")) == "beat:refresh:2026-12-07T10:00:30Z"


def test_a_crontab_slot_is_its_latest_minute_and_agrees_with_celery() -> None:
    app = Celery(set_as_current=False)
    app.conf.timezone = "Europe/Paris"
    rng = random.Random(7)
    specs: list[dict[str, Any]] = [
        {"minute": "*"}, {"minute": "*/7", "hour": "3-5"},
        {"minute": 0, "hour": 4, "day_of_week": "mon"},
        {"minute": 30, "hour": 12, "day_of_month": "1,15"},
        {"minute": 5, "hour": "*/3", "month_of_year": "2", "day_of_month": "29"},
    ]
    for spec in specs:
        cron = crontab(app=app, **spec)
        for _ in range(100):
            now = at("2026-01-01T00:00:00") + timedelta(seconds=rng.randrange(3 * 365 * 86400))
            slot = slots.latest_crontab_time(cron, now)
            assert slot <= now < slot + timedelta(days=8 * 366)
            # Celery's own next run after a minute before the slot is the slot, and its
            # next run after the slot is later than now: no fire time in between.
            before = (slot - timedelta(minutes=1)).astimezone(cron.tz)
            assert before + cron.remaining_delta(before)[1] == slot, (spec, now)
            after = slot.astimezone(cron.tz) + cron.remaining_delta(slot)[1]
            assert after > now, (spec, now, slot, after)


def test_aligned_intervals_are_due_once_per_boundary_whenever_beat_started() -> None:
    clock = [at("2026-12-07T10:00:05")]
    aligned = slots.Aligned(schedule(timedelta(seconds=10), nowfun=lambda: clock[0]))
    last = at("2026-12-07T10:00:03")  # this process started at :03
    due, wait = aligned.is_due(last)
    assert not due and wait == pytest.approx(5)  # next boundary :10, not :13
    clock[0] = at("2026-12-07T10:00:10.02")
    due, wait = aligned.is_due(last)
    assert due and wait == pytest.approx(9.98)
    assert not aligned.is_due(clock[0])[0]  # sent at :10.02: not again before :20




class _Recording:
    """A scheduler base that records the options it would send with instead of sending."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.sent: list[Any] = []

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True,
                    **_: Any) -> Any:
        self.sent.append(entry.options)
        return entry

    def reserve(self, entry: Any) -> Any:
        return entry


class _Keyed(SlotKeys, _Recording):
    pass


def _entry(app: Celery, task: str, run_every: float, last: datetime, now: datetime) -> Any:
    return ScheduleEntry(name="refresh", task=task, app=app, last_run_at=last,
                         schedule=schedule(timedelta(seconds=run_every), nowfun=lambda: now),
                         options={"headers": {"x": 1}})


def test_a_reliable_entry_is_sent_with_its_slot_key_and_a_plain_one_unchanged(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.refresh")
    def refresh() -> None: ...

    @app.task(shared=False, name="shop.plain")
    def plain() -> None: ...

    now = at("2026-12-07T10:00:31")
    scheduler = _Keyed(app)
    reliable = _entry(app, "shop.refresh", 30, at("2026-12-07T10:00:01"), now)
    scheduler.apply_async(reliable, advance=False)
    sent = scheduler.sent[-1]
    assert sent["headers"] == {"x": 1, HEADER_SLOT: "beat:refresh:2026-12-07T10:00:30Z"}
    assert reliable.options["headers"] == {"x": 1}  # the entry itself is not changed
    scheduler.apply_async(_entry(app, "shop.plain", 30, now, now), advance=False)
    assert HEADER_SLOT not in scheduler.sent[-1]["headers"]


class _RowEntry(ScheduleEntry):  # type: ignore[misc]
    """Shaped like django-celery-beat's ModelEntry: built from its database row, so
    ``copy.copy`` (which calls it with ScheduleEntry's arguments) cannot rebuild it."""

    def __init__(self, row: dict[str, Any], app: Celery | None = None) -> None:
        super().__init__(app=app, **row)


def test_an_entry_built_from_a_row_is_sent_with_its_slot_key(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.refresh")
    def refresh() -> None: ...

    now = at("2026-12-07T10:00:31")
    row = {"name": "refresh", "task": "shop.refresh", "last_run_at": at("2026-12-07T10:00:01"),
           "schedule": schedule(timedelta(seconds=30), nowfun=lambda: now),
           "options": {"headers": {"periodic_task_name": "refresh"}}}
    entry = _RowEntry(row, app=app)
    scheduler = _Keyed(app)
    scheduler.apply_async(entry, advance=False)
    assert scheduler.sent[-1]["headers"][HEADER_SLOT] == "beat:refresh:2026-12-07T10:00:30Z"
    assert entry.options == {"headers": {"periodic_task_name": "refresh"}}


def test_skip_leaves_out_a_slot_reached_late(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.digest")
    def digest() -> None: ...

    app.conf.reliable_beat_missed_slots = "skip"
    app.conf.reliable_beat_slot_grace = 60
    scheduler = _Keyed(app)
    hourly = _entry(app, "shop.digest", 3600, at("2026-12-07T07:00:00"),
                    at("2026-12-07T09:20:00"))  # the 09:00 slot, 20 minutes late
    assert scheduler.apply_async(hourly, advance=False) is None and not scheduler.sent
    on_time = _entry(app, "shop.digest", 3600, at("2026-12-07T08:00:00"),
                     at("2026-12-07T09:00:30"))
    assert scheduler.apply_async(on_time, advance=False) is not None


def test_the_slot_header_is_the_key_of_the_call(app: Celery) -> None:
    @app.task(base=ReliableTask, shared=False, name="shop.tick")
    def tick() -> None: ...

    first = tick.apply_async(headers={HEADER_SLOT: "beat:tick:2026-12-07T10:00:30Z",
                                      "celery_beat_task": True})
    second = tick.apply_async(headers={HEADER_SLOT: "beat:tick:2026-12-07T10:00:30Z",
                                       "celery_beat_task": True})
    assert second.id == first.id  # a second beat's send: answered with the first publish


def test_the_real_schedulers_use_the_mixin() -> None:
    from celery_reliable.beat import PersistentScheduler

    assert issubclass(PersistentScheduler, SlotKeys) and issubclass(PersistentScheduler, Scheduler)
