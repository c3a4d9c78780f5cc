"""Working days (工作日) for time limits (承诺时限), by the State Council's holiday calendar.

A time limit is counted in working days, and which days those are is not Monday to Friday: each
year the General Office of the State Council (国务院办公厅) publishes the public holidays and the
weekend days worked in exchange (调休补班). The calendar lives in the contract list
(``calendar.json``) so operators add next year's notice by publishing a revision, with no release.

Days are counted on the calendar of the calendar's time zone (China Standard Time by default),
never the gateway host's: a case received at 01:00 Beijing time on a Saturday is a weekend case
even on a host that runs in UTC.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class WorkCalendar(BaseModel):
    """Public holidays and make-up working days; on any other date, Monday to Friday is worked.

    An empty calendar is plain Monday to Friday, so a list published before the calendar existed
    still gives a deadline. Years the calendar does not cover are counted that way too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    holidays: list[date] = Field(
        default_factory=list,
        description="days off by a holiday notice (放假): every day of each holiday period",
    )
    workdays: list[date] = Field(
        default_factory=list, description="Saturdays and Sundays worked by a notice (调休上班)"
    )
    timezone: str = Field(
        "Asia/Shanghai", max_length=64, description="IANA zone whose days are counted"
    )
    notices: list[str] = Field(
        default_factory=list, description="the notices the dates come from, for the reader"
    )

    # Derived once per calendar: deadlines are computed on every submission.
    _off: frozenset[date] = PrivateAttr(default_factory=frozenset)
    _on: frozenset[date] = PrivateAttr(default_factory=frozenset)
    _zone: ZoneInfo = PrivateAttr(default_factory=lambda: ZoneInfo("Asia/Shanghai"))

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @field_validator("workdays")
    @classmethod
    def _weekend_only(cls, v: list[date]) -> list[date]:
        # A weekday "worked" changes nothing: it is almost certainly a typo for another date.
        weekdays = [d.isoformat() for d in v if d.weekday() < 5]
        if weekdays:
            raise ValueError(f"not a Saturday or Sunday: {', '.join(weekdays)}")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> WorkCalendar:
        both = sorted(set(self.holidays) & set(self.workdays))
        if both:
            raise ValueError(f"both holiday and workday: {', '.join(map(str, both))}")
        return self

    def model_post_init(self, context: object, /) -> None:
        self._off = frozenset(self.holidays)
        self._on = frozenset(self.workdays)
        self._zone = ZoneInfo(self.timezone)

    def is_working_day(self, day: date) -> bool:
        """Worked: a make-up day, or a weekday that is not a holiday."""
        if day in self._on:
            return True
        return day.weekday() < 5 and day not in self._off

    def working_day_after(self, day: date, n: int) -> date:
        """The ``n``-th working day after ``day`` (``day`` itself not counted)."""
        return _working_day_after(self._on, self._off, day, n)

    @property
    def zone(self) -> ZoneInfo:
        """The time zone whose days are counted."""
        return self._zone

    def local_date(self, at: float) -> date:
        """The day it is at epoch second ``at`` in the calendar's time zone."""
        return datetime.fromtimestamp(at, self._zone).date()

    def years(self) -> list[int]:
        """The years the calendar names a date in, oldest first."""
        return sorted({d.year for d in (*self.holidays, *self.workdays)})


@lru_cache(maxsize=1024)
def _working_day_after(on: frozenset[date], off: frozenset[date], day: date, n: int) -> date:
    """Counted once per calendar, day and limit: every case received that day asks the same
    (the calendar's sets are immutable, and hash once)."""
    left = n
    while left > 0:
        day += timedelta(days=1)
        if day in on or (day.weekday() < 5 and day not in off):
            left -= 1
    return day


def deadline_after(start: float, working_days: int, calendar: WorkCalendar) -> float:
    """``working_days`` working days after ``start`` (epoch seconds), at the same local time.

    The day of receipt is not counted, so zero days is ``start`` itself and a case received on a
    Saturday has its first working day on Monday (or on that Sunday if it is worked).
    """
    if working_days <= 0:
        return start
    zone = calendar.zone
    received = datetime.fromtimestamp(start, zone)
    day = calendar.working_day_after(received.date(), working_days)
    end = datetime.combine(day, received.time(), zone)
    # Whole days plus any change of UTC offset, added to ``start`` so no precision is lost.
    shift = (end.utcoffset() or timedelta()) - (received.utcoffset() or timedelta())
    return start + (day - received.date()).days * 86400 - shift.total_seconds()
