"""Five-field cron expressions (Vixie cron's dialect) and when they fire next, in local wall-clock time.

Small on purpose: the agent needs `*`, lists, ranges, steps, month and weekday names and the
`@daily`-style shorthands, nothing else. As in Vixie cron, when both day-of-month and day-of-week
are restricted (neither starts with `*`) a day matches when EITHER does; otherwise both must.
Times are matched on the wall clock of the datetime given (naive = local time); DST is the
caller's business (the scheduler turns occurrences into instants with `datetime.timestamp()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Longest gap between two matching days: Feb 29 on a given weekday-less rule skips 2100 (8 years).
_SEARCH_DAYS = 366 * 9
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    names_start: int = 0  # the number the first name stands for


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, MONTH_NAMES, 1),
    _Field("day-of-week", 0, 7, WEEKDAY_NAMES, 0),  # 7 is Sunday too
)


def _number(field: _Field, text: str) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.names.index(lowered) + field.names_start
    if not text.isdigit():
        named = f" or a name ({', '.join(field.names)})" if field.names else ""
        raise ValueError(f"{text!r} is not a number{named}")
    value = int(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"{value} is outside {field.low}-{field.high}")
    return value


def _parse_item(field: _Field, item: str) -> set[int]:
    """One list item: `*`, `N`, `A-B`, each optionally `/STEP` (`N/STEP` runs from N to the end)."""
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"step {step_text!r} in {item!r} is not a positive number")
        step = int(step_text)
    if base == "*":
        start, end = field.low, field.high
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _number(field, first), _number(field, last)
        if start > end:
            raise ValueError(f"range {base!r} runs backwards")
    elif base:
        start = _number(field, base)
        end = field.high if slash else start
    else:
        raise ValueError(f"empty value in {item!r}")
    return set(range(start, end + 1, step))


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    try:
        for item in text.split(","):
            values |= _parse_item(field, item)
    except ValueError as error:
        raise ValueError(f"cron field {field.name} ({text!r}): {error}") from None
    if field.name == "day-of-week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    """A parsed expression; build it with `CronExpression.parse`."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday
    day_of_month_restricted: bool
    day_of_week_restricted: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse `minute hour day-of-month month day-of-week` or a shorthand like `@daily`.

        Raises ValueError naming the field that is wrong (and why), or saying what the whole
        expression lacks; an expression that can never fire (`0 0 31 2 *`) is an error too.
        """
        stripped = text.strip()
        expanded = SHORTHANDS.get(stripped.lower(), stripped)
        if expanded.startswith("@"):
            raise ValueError(f"unknown cron shorthand {stripped!r}: use one of {', '.join(SHORTHANDS)}")
        parts = expanded.split()
        if len(parts) != len(_FIELDS):
            raise ValueError(
                f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
                f"{len(parts)} given in {stripped!r}"
            )
        values = [_parse_field(field, part) for field, part in zip(_FIELDS, parts, strict=True)]
        expression = cls(
            text=stripped,
            minutes=values[0],
            hours=values[1],
            days_of_month=values[2],
            months=values[3],
            days_of_week=values[4],
            day_of_month_restricted=not parts[2].startswith("*"),
            day_of_week_restricted=not parts[4].startswith("*"),
        )
        if not expression.day_of_week_restricted and not any(
            day <= _LONGEST_MONTH[month - 1] for day in expression.days_of_month for month in expression.months
        ):
            raise ValueError(f"cron field day-of-month ({parts[2]!r}) never occurs in the months given ({parts[3]!r})")
        return expression

    def matches_day(self, day: date) -> bool:
        """Whether the job fires on `day` at all (month, then Vixie's day-of-month/day-of-week rule)."""
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days_of_month
        by_weekday = (day.isoweekday() % 7) in self.days_of_week
        if self.day_of_month_restricted and self.day_of_week_restricted:
            return by_month_day or by_weekday
        return by_month_day and by_weekday

    def matches(self, moment: datetime) -> bool:
        """Whether the job fires in the minute of `moment`."""
        return moment.minute in self.minutes and moment.hour in self.hours and self.matches_day(moment.date())

    def next_after(self, moment: datetime) -> datetime:
        """The first firing strictly after `moment` (seconds zero, `moment`'s tzinfo kept)."""
        candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = candidate.date()
        for _ in range(_SEARCH_DAYS):
            if self.matches_day(day):
                earliest = (candidate.hour, candidate.minute) if day == candidate.date() else (0, 0)
                found = self._first_time_from(earliest)
                if found is not None:
                    return datetime.combine(day, found, tzinfo=moment.tzinfo)
            day += timedelta(days=1)
        raise ValueError(f"cron expression {self.text!r} does not fire within {_SEARCH_DAYS} days")  # pragma: no cover

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last firing at or before `moment`: the occurrence a run started now would be for."""
        candidate = moment.replace(second=0, microsecond=0)
        day = candidate.date()
        for _ in range(_SEARCH_DAYS):
            if self.matches_day(day):
                latest = (candidate.hour, candidate.minute) if day == candidate.date() else (23, 59)
                found = self._last_time_until(latest)
                if found is not None:
                    return datetime.combine(day, found, tzinfo=moment.tzinfo)
            day -= timedelta(days=1)
        raise ValueError(f"cron expression {self.text!r} did not fire within {_SEARCH_DAYS} days")  # pragma: no cover

    def _first_time_from(self, earliest: tuple[int, int]) -> time | None:
        for hour in sorted(hour for hour in self.hours if hour >= earliest[0]):
            start = earliest[1] if hour == earliest[0] else 0
            minutes = [minute for minute in self.minutes if minute >= start]
            if minutes:
                return time(hour, min(minutes))
        return None

    def _last_time_until(self, latest: tuple[int, int]) -> time | None:
        for hour in sorted((hour for hour in self.hours if hour <= latest[0]), reverse=True):
            end = latest[1] if hour == latest[0] else 59
            minutes = [minute for minute in self.minutes if minute <= end]
            if minutes:
                return time(hour, max(minutes))
        return None
