"""The cron parser and its next/previous-run arithmetic (Vixie cron's dialect, local wall-clock time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lockstep.agent.cron import CronExpression


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", "2026-03-10 12:34:56", "2026-03-10 12:35"),
        ("* * * * *", "2026-03-10 12:34:00", "2026-03-10 12:35"),  # strictly after
        ("0 2 * * *", "2026-03-10 01:59", "2026-03-10 02:00"),
        ("0 2 * * *", "2026-03-10 02:00", "2026-03-11 02:00"),
        ("0 2 * * *", "2026-12-31 23:00", "2027-01-01 02:00"),
        ("*/15 * * * *", "2026-03-10 12:31", "2026-03-10 12:45"),
        ("*/15 * * * *", "2026-03-10 12:45", "2026-03-10 13:00"),
        ("1-30/5 * * * *", "2026-03-10 12:26", "2026-03-10 13:01"),
        ("1-30/5 * * * *", "2026-03-10 12:07", "2026-03-10 12:11"),
        ("10/20 * * * *", "2026-03-10 12:31", "2026-03-10 12:50"),  # N/STEP runs from N to the end
        ("5,35 9,17 * * *", "2026-03-10 09:36", "2026-03-10 17:05"),
        ("0 0 1 * *", "2026-01-15 00:00", "2026-02-01 00:00"),
        ("0 0 31 * *", "2026-04-01 00:00", "2026-05-31 00:00"),  # April has no 31st
        ("0 0 29 2 *", "2026-01-01 00:00", "2028-02-29 00:00"),  # Feb 29: the next leap year
        ("0 0 29 2 *", "2097-03-01 00:00", "2104-02-29 00:00"),  # 2100 is not a leap year
        ("0 0 29 feb *", "2024-02-28 12:00", "2024-02-29 00:00"),
        ("30 4 * * 0", "2026-11-22 04:30", "2026-11-29 04:30"),  # 2026-11-22 is a Sunday
        ("30 4 * * 7", "2026-11-21 00:00", "2026-11-22 04:30"),  # 7 is Sunday too
        ("0 9 * * mon-fri", "2026-11-20 09:00", "2026-11-23 09:00"),  # Friday → Monday
        ("0 9 * * SAT,sun", "2026-11-19 10:00", "2026-11-21 09:00"),
        ("0 0 * jan-mar,dec *", "2026-04-01 00:00", "2026-12-01 00:00"),
        ("0 0 * */3 *", "2026-02-01 00:00", "2026-04-01 00:00"),  # months 1,4,7,10
        # Vixie: both day fields restricted → either matches (the 13th OR any Friday).
        ("0 0 13 * 5", "2026-11-01 00:00", "2026-11-06 00:00"),
        ("0 0 13 * 5", "2026-11-07 00:00", "2026-11-13 00:00"),
        # One of them starting with * → both must match (every day of month AND a Friday).
        ("0 0 * * 5", "2026-11-07 00:00", "2026-11-13 00:00"),
        ("0 0 */1 * 5", "2026-11-07 00:00", "2026-11-13 00:00"),
        ("0 0 13 * *", "2026-11-07 00:00", "2026-11-13 00:00"),
        ("@daily", "2026-03-10 12:00", "2026-03-11 00:00"),
        ("@hourly", "2026-03-10 12:00", "2026-03-10 13:00"),
        ("@weekly", "2026-11-18 12:00", "2026-11-22 00:00"),
        ("@monthly", "2026-11-18 12:00", "2026-12-01 00:00"),
        ("@yearly", "2026-11-18 12:00", "2027-01-01 00:00"),
        ("  0   2  *  *  *  ", "2026-03-10 01:00", "2026-03-10 02:00"),
    ],
)
def test_next_after(expression: str, after: str, expected: str) -> None:
    """The first firing strictly after a moment, across hours, days, months, years and leap days."""
    assert CronExpression.parse(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "moment", "expected"),
    [
        ("0 2 * * *", "2026-03-10 02:00", "2026-03-10 02:00"),  # at counts
        ("0 2 * * *", "2026-03-10 01:59", "2026-03-09 02:00"),
        ("*/15 * * * *", "2026-03-10 12:44:59", "2026-03-10 12:30"),
        ("0 0 29 2 *", "2026-06-01 00:00", "2024-02-29 00:00"),
        ("0 9 * * mon-fri", "2026-11-22 12:00", "2026-11-20 09:00"),  # Sunday → Friday
        ("0 0 1 1 *", "2026-01-01 00:00", "2026-01-01 00:00"),
        ("59 23 31 12 *", "2026-06-01 00:00", "2025-12-31 23:59"),
    ],
)
def test_latest_at_or_before(expression: str, moment: str, expected: str) -> None:
    """The occurrence a run started now belongs to: the last firing at or before the moment."""
    assert CronExpression.parse(expression).latest_at_or_before(at(moment)) == at(expected)


def test_every_minute_of_a_day_round_trips() -> None:
    """next_after and latest_at_or_before agree: stepping forward from each firing lands on the next."""
    expression = CronExpression.parse("7,37 */5 * * *")
    moment = at("2026-05-01 00:00")
    seen = []
    while moment < at("2026-05-02 00:00"):
        moment = expression.next_after(moment)
        assert expression.matches(moment)
        assert expression.latest_at_or_before(moment + timedelta(seconds=59)) == moment
        seen.append(moment)
    assert len(seen) == 2 * 5 + 1  # hours 0,5,10,15,20 × 2, plus 00:07 the next day
    assert seen[0] == at("2026-05-01 00:07") and seen[-1] == at("2026-05-02 00:07")


def test_the_timezone_of_the_moment_is_kept() -> None:
    """An aware moment is matched on its own wall clock and the result keeps its tzinfo."""
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 10, 1, 30, tzinfo=plus_two)
    result = CronExpression.parse("0 2 * * *").next_after(moment)
    assert result == datetime(2026, 3, 10, 2, 0, tzinfo=plus_two)
    assert result.tzinfo is plus_two
    assert result.astimezone(UTC).hour == 0


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "cron field minute ('61'): 61 is outside 0-59"),
        ("* 24 * * *", "cron field hour ('24'): 24 is outside 0-23"),
        ("* * 0 * *", "cron field day-of-month ('0'): 0 is outside 1-31"),
        ("* * * 13 *", "cron field month ('13'): 13 is outside 1-12"),
        ("* * * * 8", "cron field day-of-week ('8'): 8 is outside 0-7"),
        ("* * * foo *", "cron field month ('foo'): 'foo' is not a number or a name (jan,"),
        ("* * * * monday", "cron field day-of-week ('monday'): 'monday' is not a number"),
        ("x * * * *", "cron field minute ('x'): 'x' is not a number"),
        ("30-10 * * * *", "cron field minute ('30-10'): range '30-10' runs backwards"),
        ("*/0 * * * *", "cron field minute ('*/0'): step '0' in '*/0' is not a positive number"),
        ("*/x * * * *", "step 'x'"),
        ("1,,2 * * * *", "cron field minute ('1,,2'): empty value"),
        ("* * * *", "a cron expression has 5 fields (minute hour day-of-month month day-of-week), 4 given"),
        ("* * * * * *", "6 given"),
        ("", "0 given"),
        ("@reboot", "unknown cron shorthand '@reboot'"),
        ("0 0 30 2 *", "cron field day-of-month ('30') never occurs in the months given ('2')"),
        ("0 0 31 apr,jun *", "never occurs"),
        ("-5 * * * *", "cron field minute ('-5')"),
    ],
)
def test_invalid_expressions_name_the_field(expression: str, message: str) -> None:
    """A wrong expression is a ValueError that says which field is wrong and why."""
    with pytest.raises(ValueError) as raised:
        CronExpression.parse(expression)
    assert message in str(raised.value)


def test_feb_30_with_a_weekday_is_allowed() -> None:
    """With both day fields restricted the weekday alone can fire it, so `30 2 ... mon` is valid (Vixie)."""
    expression = CronExpression.parse("0 0 30 2 mon")
    assert expression.next_after(at("2026-02-01 00:00")) == at("2026-02-02 00:00")


def test_parsed_sets_normalise_sunday_and_names() -> None:
    """7 and `sun` are both Sunday (0); names are case-insensitive; the text is kept for messages."""
    expression = CronExpression.parse("0 0 * Jan,JUL sun,7,Mon")
    assert expression.days_of_week == frozenset({0, 1})
    assert expression.months == frozenset({1, 7})
    assert expression.text == "0 0 * Jan,JUL sun,7,Mon"
