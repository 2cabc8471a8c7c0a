"""Schedule slots: the scheduled time a beat send stands for, the same in every process.

Two beat processes started by mistake, a beat restarted mid-slot, or a beat on each of
three web dynos each publish "the same" run of an entry.  What they share is not the
send time (each process sends when it wakes) but the *slot*: the time the schedule
named.  The slot, with the entry's name, is the run's idempotency key, so each slot
runs once.  For the slot to agree across processes it must not depend on when a
process started or last ran:

* a crontab's slot is its latest scheduled minute at or before now, in the crontab's
  time zone;
* an interval schedule (``timedelta(seconds=30)``) is aligned to multiples of its
  interval since the epoch, and beat is made to fire at those boundaries
  (:class:`Aligned`), or its sends would drift across them and skip a slot;
* any other schedule (``solar``, a custom class): the due time that followed the
  entry's last run (``last_run_at + remaining_estimate(last_run_at)``), which agrees
  between processes that ran the previous slot.

Times come from the schedule's own clock (``schedule.now()``, a ``nowfun`` if it has
one), so a test can compress time.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any

from celery.schedules import crontab, schedstate, schedule

#: How far back a crontab's previous slot is looked for: 8 years covers a rule that
#: only matches on 29 February of a leap year that is also a Monday.
_MAX_DAYS_BACK = 8 * 366


def is_interval(sched: Any) -> bool:
    """An interval schedule (``timedelta``, ``schedule(30)``), not a crontab or solar
    (those derive from ``BaseSchedule``, not from ``schedule``)."""
    return isinstance(sched, schedule)


def step_seconds(sched: schedule) -> float:
    return float(sched.run_every.total_seconds())


def slot_of(sched: Any, now: datetime, last_run_at: datetime | None) -> datetime:
    """The slot (an aware datetime, seconds precision at most) a send at ``now`` is for."""
    now = _aware(sched, now)
    if is_interval(sched):
        step = step_seconds(sched)
        start = math.floor(now.timestamp() / step) * step
        return datetime.fromtimestamp(start, tz=timezone.utc)
    if isinstance(sched, crontab):
        return latest_crontab_time(sched, now)
    if last_run_at is None:
        return now.replace(microsecond=0)
    last = _aware(sched, last_run_at)
    due: datetime = last + sched.remaining_estimate(last)
    return due.replace(microsecond=0)


def key(entry_name: str, slot: datetime) -> str:
    """``beat:<entry name>:<slot in UTC>``, e.g. ``beat:nightly-report:2026-12-07T00:00:00Z``."""
    stamp = slot.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"beat:{entry_name}:{stamp}Z"


def latest_crontab_time(cron: crontab, now: datetime) -> datetime:
    """The latest minute at or before ``now`` that ``cron`` fires at.

    Celery's crontab fires when the month, the day of the month *and* the day of the
    week all match (not cron's "day of month or day of week"), at each listed hour and
    minute, in the crontab's time zone."""
    zone = cron.tz
    local = now.astimezone(zone)
    hours, minutes = sorted(cron.hour, reverse=True), sorted(cron.minute, reverse=True)
    for back in range(_MAX_DAYS_BACK):
        day = local.date() - timedelta(days=back)
        if not _day_matches(cron, day):
            continue
        for hour in hours:
            if back == 0 and hour > local.hour:
                continue
            for minute in minutes:
                if back == 0 and hour == local.hour and minute > local.minute:
                    continue
                return _localize(zone, datetime.combine(day, time(hour, minute)))
    raise ValueError(f"{cron!r} has not fired in the {_MAX_DAYS_BACK} days before {now}")


def _day_matches(cron: crontab, day: date) -> bool:
    return (
        day.month in cron.month_of_year
        and day.day in cron.day_of_month
        and day.isoweekday() % 7 in cron.day_of_week  # Sunday is 0
    )


def _localize(zone: tzinfo, naive: datetime) -> datetime:
    localize = getattr(zone, "localize", None)  # pytz zones
    return localize(naive) if localize is not None else naive.replace(tzinfo=zone)


def _aware(sched: Any, moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else sched.maybe_make_aware(moment)


class Aligned(schedule):  # type: ignore[misc]
    """An interval schedule due once per multiple of its interval since the epoch.

    Celery's interval schedule is due ``run_every`` after the last send, so a beat's
    sends drift later each period and, crossing a boundary, would leave one slot
    without a send.  Due at each boundary instead, every process fires once per slot,
    whenever it started.  Used only while beat asks whether an entry is due: the entry
    keeps its own schedule (and the scheduler's file never holds this class)."""

    def __init__(self, inner: schedule) -> None:
        super().__init__(inner.run_every, nowfun=inner.nowfun, app=inner._app)
        self.inner = inner

    def is_due(self, last_run_at: datetime) -> schedstate:
        step = step_seconds(self.inner)
        now = _aware(self.inner, self.inner.now()).timestamp()
        last = _aware(self.inner, last_run_at).timestamp()
        current = math.floor(now / step)
        until_next = (current + 1) * step - now
        return schedstate(current > math.floor(last / step), until_next)
