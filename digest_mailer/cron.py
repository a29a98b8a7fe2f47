"""Cron expressions as cron means them, and which scheduled time was missed: pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekdays(field: str) -> str:
    """A cron weekday field (0 or 7 = Sunday) as APScheduler 3's names (it counts 0 = Monday)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            lo, hi = 0, 6
        else:
            ends = [_CRON_DAYS.index(x[:3]) if x[:3] in _CRON_DAYS else int(x)
                    for x in base.split("-")]
            lo, hi = ends[0], ends[-1]
            if len(ends) > 2 or not (0 <= lo <= 7 and 0 <= hi <= 7) or lo > hi:
                raise ValueError(f"weekday {item!r} is out of range (0-7, or sun-sat)")
            if step_text and len(ends) == 1:
                hi = 6
        if step < 1:
            raise ValueError(f"weekday step {step_text!r} must be 1 or more")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_CRON_DAYS[d] for d in sorted(days))


def parse_cron(expr: str, timezone: str) -> CronTrigger:
    """5 fields (minute hour day month weekday) as cron means them, or 6 with seconds first."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"{expr!r} is not a cron expression (5 fields: minute hour day "
                         "month weekday)")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=ZoneInfo(timezone))
    except ValueError as e:
        raise ValueError(f"{expr!r} is not a cron expression ({e})") from e


def next_fire(trigger: CronTrigger, after: datetime) -> datetime | None:
    fire: datetime | None = trigger.get_next_fire_time(None, after)
    return fire


def missed_fire(trigger: CronTrigger, now: datetime, grace: float,
                last_run: datetime | None) -> datetime | None:
    """The latest scheduled time in the grace window before `now` that no run started at or
    after, or None. Several missed times coalesce into one: only the latest counts."""
    latest: datetime | None = None
    t: datetime | None = trigger.get_next_fire_time(None, now - timedelta(seconds=grace))
    while t is not None and t <= now:
        latest = t
        t = trigger.get_next_fire_time(t, t + timedelta(seconds=1))
    if latest is None or (last_run is not None and last_run >= latest):
        return None
    return latest
