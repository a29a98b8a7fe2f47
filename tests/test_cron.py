"""The schedule's rules with an injected clock: cron as cron means it, DST, misfire, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import base_config, toml_text
from digest_mailer.config import load_config
from digest_mailer.cron import _weekdays, missed_fire, next_fire, parse_cron
from digest_mailer.errors import ConfigError
from digest_mailer.scheduler import retry_delays

BERLIN = ZoneInfo("Europe/Berlin")


def test_weekdays_count_from_sunday_as_cron_does() -> None:
    assert _weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert _weekdays("0") == _weekdays("7") == "sun"
    assert _weekdays("*/2") == "sun,tue,thu,sat"
    assert _weekdays("sat,sun") == "sun,sat"
    with pytest.raises(ValueError, match="out of range"):
        _weekdays("8")


def test_weekday_cron_fires_monday_to_friday() -> None:
    trigger = parse_cron("0 7 * * 1-5", "UTC")
    t = datetime(2025, 6, 6, 8, tzinfo=UTC)  # a Friday, after 07:00
    fires = []
    for _ in range(3):
        t = next_fire(trigger, t + timedelta(seconds=1))
        fires.append(t)
    assert [f.strftime("%a %H:%M") for f in fires] == ["Mon 07:00", "Tue 07:00", "Wed 07:00"]


def test_cron_in_a_timezone_across_the_dst_change() -> None:
    trigger = parse_cron("0 7 * * *", "Europe/Berlin")
    t = datetime(2025, 3, 29, 0, tzinfo=UTC)
    fires = []
    for _ in range(3):
        t = next_fire(trigger, t + timedelta(seconds=1))
        fires.append(t)
    assert [f.astimezone(BERLIN).strftime("%d %H:%M") for f in fires] == \
           ["29 07:00", "30 07:00", "31 07:00"]
    assert [f.astimezone(UTC).hour for f in fires] == [6, 5, 5]  # CET, then CEST


def test_six_fields_put_seconds_first() -> None:
    trigger = parse_cron("*/10 * * * * *", "UTC")
    start = datetime(2025, 6, 2, 7, 0, 1, tzinfo=UTC)
    assert next_fire(trigger, start) == datetime(2025, 6, 2, 7, 0, 10, tzinfo=UTC)


def test_missed_fire_within_and_past_the_grace() -> None:
    trigger = parse_cron("0 7 * * *", "UTC")
    now = datetime(2025, 6, 2, 7, 40, tzinfo=UTC)
    fire = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)
    assert missed_fire(trigger, now, grace=3600, last_run=None) == fire
    assert missed_fire(trigger, now, grace=1800, last_run=None) is None  # 40 min late > 30
    yesterday = datetime(2025, 6, 1, 7, 0, 5, tzinfo=UTC)
    assert missed_fire(trigger, now, grace=3600, last_run=yesterday) == fire
    assert missed_fire(trigger, now, grace=3600, last_run=fire + timedelta(seconds=3)) is None


def test_several_missed_fires_coalesce_into_the_latest() -> None:
    trigger = parse_cron("*/10 * * * *", "UTC")
    now = datetime(2025, 6, 2, 7, 35, tzinfo=UTC)
    assert missed_fire(trigger, now, grace=3600, last_run=None) == \
        datetime(2025, 6, 2, 7, 30, tzinfo=UTC)


def test_retry_delays_double() -> None:
    assert retry_delays(4, 60) == [60, 120, 240]
    assert retry_delays(1, 60) == []


@pytest.mark.parametrize(("cron", "message"), [
    ("0 7 * *", "schedule.cron: '0 7 * *' is not a cron expression (5 fields"),
    ("0 25 * * *", "schedule.cron: '0 25 * * *' is not a cron expression ("),
])
def test_bad_cron_in_the_config(tmp_path: Path, cron: str, message: str) -> None:
    doc = base_config(tmp_path)
    doc["schedule"] = {"cron": cron}
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: {message}")


def test_durations(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["schedule"] = {"misfire_grace": "90m", "source_retry_delay": 30}
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    schedule = load_config(path).schedule
    assert (schedule.misfire_grace, schedule.source_retry_delay) == (5400.0, 30.0)
    doc["schedule"] = {"misfire_grace": "an hour"}
    path.write_text(toml_text(doc))
    with pytest.raises(ConfigError, match="'an hour' is not a duration like"):
        load_config(path)
