"""Which snapshots a retention policy keeps: restic's `forget` rules, as pure functions.

This follows restic's `ApplyPolicy` (internal/data/snapshot_policy.go, v0.16 and later):

* snapshots are sorted newest first; each `--keep-<unit> N` rule keeps the newest snapshot of
  each of the N most recent calendar buckets that hold a snapshot (`--keep-last` treats every
  snapshot as its own bucket); N = -1 keeps one per bucket without limit;
* a rule that still has count left when it reaches the oldest snapshot of the group keeps that
  one too, so the kept history is as long as possible ("oldest daily snapshot" when it shares a
  bucket with a snapshot already kept, as restic ≥ 0.18 words it);
* `--keep-within D` keeps everything newer than the newest snapshot minus D;
  `--keep-within-<unit> D` keeps one snapshot per bucket inside that window;
* `--keep-tag a,b` keeps every snapshot carrying all of a and b; the rules are OR-ed.

restic 0.14 (the binary our tests run) differs in two ways, both deliberate here: it does not
keep the oldest snapshot for an unfilled rule, and it treats -1 as "keep nothing" for that
rule instead of "unlimited". Where every rule fills its count, 0.14 and this module agree.

Calendar buckets use the wall clock of the offset written in the snapshot's time (restic parses
the RFC 3339 text into a Go time with that offset and reads Year/Month/Day/Hour from it), so a
snapshot written as `…T23:30:00Z` is on that UTC day whatever the machine's time zone is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from lockstep.errors import UsageError
from lockstep.repository.gojson import parse_time_ns
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tag_lists import has_tags, parse_tag_list

UNLIMITED = -1
NANOSECONDS_PER_SECOND = 1_000_000_000
NANOSECONDS_PER_HOUR = 3600 * NANOSECONDS_PER_SECOND
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION_PART = re.compile(r"(-?\d+)([ymdh])")


# --- durations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    """restic's calendar duration (`1y5m7d2h`): years, months, days and hours, not seconds."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse `6y5m234d37h` (any subset, any order; a repeated unit keeps the last value)."""
        remaining = text.strip()
        values = {"y": 0, "m": 0, "d": 0, "h": 0}
        position = 0
        while position < len(remaining):
            match = _DURATION_PART.match(remaining, position)
            if match is None:
                raise UsageError(
                    f"invalid duration {text!r}", "write it as numbers with units y, m, d, h, e.g. 1y5m7d2h"
                )
            number = int(match.group(1))
            if number < 0:
                raise UsageError(f"invalid duration {text!r}: negative values are not allowed")
            values[match.group(2)] = number
            position = match.end()
        return cls(values["y"], values["m"], values["d"], values["h"])

    @property
    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        """As restic prints it: `1y5m7d2h`, zero parts left out."""
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{value}{unit}" for value, unit in parts if value)


# --- the policy -----------------------------------------------------------------------------


def format_tag_list(tags: Sequence[str]) -> str:
    """A tag list as restic's reasons print it: `[a, b]`."""
    return "[" + ", ".join(tags) + "]"


@dataclass(frozen=True)
class RetentionPolicy:
    """The `--keep-*` options. Counts: 0 = rule off, N > 0 = N buckets, -1 = every bucket."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration = Duration()
    within_hourly: Duration = Duration()
    within_daily: Duration = Duration()
    within_weekly: Duration = Duration()
    within_monthly: Duration = Duration()
    within_yearly: Duration = Duration()
    keep_tags: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < UNLIMITED:
                raise UsageError(
                    f"--keep-{name} {getattr(self, name)} is not allowed",
                    "give a count of 0 or more, or -1 (or 'unlimited') to keep one per period without limit",
                )

    @property
    def is_empty(self) -> bool:
        """No rule at all: restic refuses to forget anything with such a policy."""
        return self == RetentionPolicy()

    def describe(self) -> str:
        """restic's one-line summary, e.g. `keep 7 daily, 4 weekly snapshots`."""
        counts = []
        for count, label in (
            (self.last, "latest"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ):
            if count > 0:
                counts.append(f"{count} {label}")
            elif count == UNLIMITED:
                counts.append(f"all {label}")
        windows = [
            f"{label} snapshots within {duration}"
            for duration, label in (
                (self.within_hourly, "hourly"),
                (self.within_daily, "daily"),
                (self.within_weekly, "weekly"),
                (self.within_monthly, "monthly"),
                (self.within_yearly, "yearly"),
            )
            if not duration.is_zero
        ]
        text = f"{', '.join(counts)} snapshots" if counts else ""
        if windows:
            text = f"{text}, " if text else ""
            text += ", ".join(windows)
        if self.keep_tags:
            text = f"{text} and " if text else ""
            text += "all snapshots with tags [" + " ".join(format_tag_list(tags) for tags in self.keep_tags) + "]"
        if not self.within.is_zero:
            text = f"{text} and " if text else ""
            text += f"all snapshots within {self.within} of the newest"
        return "keep " + text


# --- snapshot times -------------------------------------------------------------------------


@dataclass(frozen=True)
class WallClock:
    """A snapshot's instant plus the calendar fields restic buckets by (in its written offset)."""

    instant_ns: int
    offset_seconds: int
    year: int
    month: int
    day: int
    hour: int
    iso_year: int
    iso_week: int

    @classmethod
    def of(cls, time_text: str) -> WallClock:
        instant_ns = parse_time_ns(time_text)
        offset_seconds = utc_offset_seconds(time_text)
        wall = _EPOCH + timedelta(seconds=(instant_ns // NANOSECONDS_PER_SECOND) + offset_seconds)
        iso_year, iso_week, _ = wall.isocalendar()
        return cls(instant_ns, offset_seconds, wall.year, wall.month, wall.day, wall.hour, iso_year, iso_week)


def utc_offset_seconds(time_text: str) -> int:
    """The zone offset written at the end of an RFC 3339 time (`Z` = 0, `+05:30` = 19800)."""
    text = time_text.strip()
    if text.endswith(("Z", "z")):
        return 0
    sign_position = max(text.rfind("+"), text.rfind("-"))
    if sign_position <= 10:
        raise ValueError(f"time without a zone: {time_text!r}")
    zone = text[sign_position:]
    hours, minutes = zone[1:].split(":")
    seconds = int(hours) * 3600 + int(minutes) * 60
    return seconds if zone[0] == "+" else -seconds


def window_start_ns(latest: WallClock | None, duration: Duration) -> int | None:
    """`latest.AddDate(-y, -m, -d).Add(-h hours)` as Go computes it (day overflow normalised,
    so 31 March minus one month is 3 March); None means "since the beginning of time"."""
    if latest is None:
        return None
    seconds, fraction_ns = divmod(latest.instant_ns, NANOSECONDS_PER_SECOND)
    wall = _EPOCH + timedelta(seconds=seconds + latest.offset_seconds)
    month_index = wall.month - 1 - duration.months
    year = wall.year - duration.years + month_index // 12
    month = month_index % 12 + 1
    try:
        shifted_date = date(year, month, 1) + timedelta(days=wall.day - 1 - duration.days)
    except (ValueError, OverflowError):
        return None  # before year 1: every snapshot is inside the window
    shifted_wall = datetime(
        shifted_date.year, shifted_date.month, shifted_date.day, wall.hour, wall.minute, wall.second, tzinfo=UTC
    )
    start_seconds = int((shifted_wall - _EPOCH).total_seconds()) - latest.offset_seconds
    return start_seconds * NANOSECONDS_PER_SECOND + fraction_ns - duration.hours * NANOSECONDS_PER_HOUR


def _is_inside(clock: WallClock, start_ns: int | None) -> bool:
    """Go's `cur.Time.After(start)`: strictly later."""
    return start_ns is None or clock.instant_ns > start_ns


# --- applying the policy --------------------------------------------------------------------

Bucketer = Callable[[WallClock, int], int]


def _hour_bucket(clock: WallClock, _: int) -> int:
    return clock.year * 1_000_000 + clock.month * 10_000 + clock.day * 100 + clock.hour


def _day_bucket(clock: WallClock, _: int) -> int:
    return clock.year * 10_000 + clock.month * 100 + clock.day


def _week_bucket(clock: WallClock, _: int) -> int:
    return clock.iso_year * 100 + clock.iso_week


def _month_bucket(clock: WallClock, _: int) -> int:
    return clock.year * 100 + clock.month


def _year_bucket(clock: WallClock, _: int) -> int:
    return clock.year


def _every_snapshot(_: WallClock, position: int) -> int:
    return position


# The calendar period of each bucketed count rule, by its name (`last` has none: every snapshot
# is its own bucket).
_CALENDAR_BUCKETERS: dict[str, Bucketer] = {
    "hourly": _hour_bucket,
    "daily": _day_bucket,
    "weekly": _week_bucket,
    "monthly": _month_bucket,
    "yearly": _year_bucket,
}


def calendar_bucket(rule: str, clock: WallClock) -> int:
    """The calendar period (hour, day, ISO week, month, year) a snapshot at `clock` is in for the
    count rule `rule` ("hourly" … "yearly"), as apply_policy buckets it: equal numbers, same period."""
    return _CALENDAR_BUCKETERS[rule](clock, 0)


@dataclass
class _CountRule:
    name: str
    count: int
    bucketer: Bucketer
    reason: str
    last_bucket: int = -1


@dataclass
class _WindowRule:
    duration: Duration
    bucketer: Bucketer
    reason: str
    last_bucket: int = -1


@dataclass(frozen=True)
class KeepReason:
    """Why one snapshot is kept, and each count rule's remaining count after it (restic's counters)."""

    snapshot: Snapshot
    matches: tuple[str, ...]
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyResult:
    """keep and remove, newest first; reasons are in the order of keep."""

    keep: list[Snapshot]
    remove: list[Snapshot]
    reasons: list[KeepReason]


def newest_first(snapshots: Iterable[Snapshot]) -> list[Snapshot]:
    """Newest first; equal times in ID order (restic keeps its listing order, which is arbitrary)."""
    by_id = sorted(snapshots, key=lambda snapshot: snapshot.id)
    return sorted(by_id, key=lambda snapshot: -snapshot.time_ns)


def latest_before(clocks: Iterable[WallClock], now_ns: int) -> WallClock | None:
    """The newest snapshot time that is not in the future (restic's findLatestTimestamp)."""
    latest: WallClock | None = None
    for clock in clocks:
        if clock.instant_ns < now_ns and (latest is None or clock.instant_ns > latest.instant_ns):
            latest = clock
    return latest


def apply_policy(
    snapshots: Iterable[Snapshot], policy: RetentionPolicy, now_ns: int, keep_oldest: bool = True
) -> PolicyResult:
    """Split one group's snapshots into keep and remove. An empty policy keeps everything
    (callers refuse to run without one). `now_ns` only matters for snapshots in the future.

    `keep_oldest=False` reproduces restic before 0.16, which did not keep the oldest snapshot
    for a rule with count left; the tests use it to compare with the restic 0.14 binary."""
    ordered = newest_first(snapshots)
    if policy.is_empty:
        return PolicyResult(ordered, [], [KeepReason(snapshot, ("policy is empty",)) for snapshot in ordered])
    if not ordered:
        return PolicyResult([], [], [])
    clocks = [WallClock.of(snapshot.time) for snapshot in ordered]
    count_rules = [
        _CountRule("last", policy.last, _every_snapshot, "last snapshot"),
        _CountRule("hourly", policy.hourly, _hour_bucket, "hourly snapshot"),
        _CountRule("daily", policy.daily, _day_bucket, "daily snapshot"),
        _CountRule("weekly", policy.weekly, _week_bucket, "weekly snapshot"),
        _CountRule("monthly", policy.monthly, _month_bucket, "monthly snapshot"),
        _CountRule("yearly", policy.yearly, _year_bucket, "yearly snapshot"),
    ]
    window_rules = [
        _WindowRule(policy.within_hourly, _hour_bucket, "hourly within"),
        _WindowRule(policy.within_daily, _day_bucket, "daily within"),
        _WindowRule(policy.within_weekly, _week_bucket, "weekly within"),
        _WindowRule(policy.within_monthly, _month_bucket, "monthly within"),
        _WindowRule(policy.within_yearly, _year_bucket, "yearly within"),
    ]
    latest = latest_before(clocks, now_ns)
    within_start = None if policy.within.is_zero else window_start_ns(latest, policy.within)
    window_starts = [None if rule.duration.is_zero else window_start_ns(latest, rule.duration) for rule in window_rules]
    oldest_position = len(ordered) - 1 if keep_oldest else -1

    keep: list[Snapshot] = []
    remove: list[Snapshot] = []
    reasons: list[KeepReason] = []
    for position, (snapshot, clock) in enumerate(zip(ordered, clocks, strict=True)):
        matches: list[str] = []
        for tags in policy.keep_tags:
            if has_tags(snapshot, tags):
                matches.append(f"has tags {format_tag_list(tags)}")
        if not policy.within.is_zero and _is_inside(clock, within_start):
            matches.append(f"within {policy.within}")
        for count_rule in count_rules:
            if count_rule.count > 0 or count_rule.count == UNLIMITED:
                bucket = count_rule.bucketer(clock, position)
                if bucket != count_rule.last_bucket or position == oldest_position:
                    reason = count_rule.reason
                    if bucket == count_rule.last_bucket:
                        reason = f"oldest {reason}"
                    count_rule.last_bucket = bucket
                    if count_rule.count > 0:
                        count_rule.count -= 1
                    matches.append(reason)
        for window_rule, start in zip(window_rules, window_starts, strict=True):
            if window_rule.duration.is_zero or not _is_inside(clock, start):
                continue
            bucket = window_rule.bucketer(clock, position)
            if bucket != window_rule.last_bucket or position == oldest_position:
                reason = window_rule.reason
                if bucket == window_rule.last_bucket:
                    reason = f"oldest {reason}"
                window_rule.last_bucket = bucket
                matches.append(f"{reason} {window_rule.duration}")
        if matches:
            keep.append(snapshot)
            counters = {rule.name: rule.count for rule in count_rules if rule.count}
            reasons.append(KeepReason(snapshot, tuple(matches), counters))
        else:
            remove.append(snapshot)
    return PolicyResult(keep, remove, reasons)


# --- filtering and grouping -----------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotFilter:
    """`--host`, `--tag`, `--path`: which snapshots forget considers at all."""

    hosts: tuple[str, ...] = ()
    tag_lists: tuple[tuple[str, ...], ...] = ()
    paths: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.hosts or self.tag_lists or self.paths)

    def matches(self, snapshot: Snapshot) -> bool:
        """Any of the hosts; any of the tag lists (all tags of it); all of the paths."""
        if self.hosts and snapshot.hostname not in self.hosts:
            return False
        if self.tag_lists and not any(has_tags(snapshot, tags) for tags in self.tag_lists):
            return False
        return all(path in snapshot.paths for path in self.paths)


@dataclass(frozen=True)
class GroupBy:
    """Which snapshot fields separate groups; the policy applies to each group on its own."""

    host: bool = True
    paths: bool = True
    tags: bool = False

    @classmethod
    def parse(cls, text: str) -> GroupBy:
        """`host,paths` (restic's default), `host,tags`, `` (one group), …"""
        chosen = {"host": False, "paths": False, "tags": False}
        for option in text.split(","):
            option = option.strip()
            if option in ("host", "hosts"):
                chosen["host"] = True
            elif option in ("path", "paths"):
                chosen["paths"] = True
            elif option in ("tag", "tags"):
                chosen["tags"] = True
            elif option:
                raise UsageError(f"unknown grouping option {option!r}", "use host, paths and/or tags, or '' for none")
        return cls(chosen["host"], chosen["paths"], chosen["tags"])


@dataclass(frozen=True, order=True)
class GroupKey:
    """One group's identity; a field is None when snapshots are not grouped by it."""

    hostname: str | None
    paths: tuple[str, ...] | None
    tags: tuple[str, ...] | None

    def describe(self) -> str:
        parts = []
        if self.hostname is not None:
            parts.append(f"host [{self.hostname}]")
        if self.paths is not None:
            parts.append(f"paths [{', '.join(self.paths)}]")
        if self.tags is not None:
            parts.append(f"tags [{', '.join(self.tags)}]")
        return ", ".join(parts) if parts else "all snapshots"


def group_snapshots(snapshots: Iterable[Snapshot], group_by: GroupBy) -> dict[GroupKey, list[Snapshot]]:
    """Snapshots by group key, groups in key order (paths and tags compared sorted)."""
    groups: dict[GroupKey, list[Snapshot]] = {}
    for snapshot in snapshots:
        key = GroupKey(
            hostname=snapshot.hostname if group_by.host else None,
            paths=tuple(sorted(snapshot.paths)) if group_by.paths else None,
            tags=tuple(sorted(snapshot.tags)) if group_by.tags else None,
        )
        groups.setdefault(key, []).append(snapshot)
    return dict(sorted(groups.items(), key=lambda item: _sortable(item[0])))


def _sortable(key: GroupKey) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    return (key.hostname or "", key.paths or (), key.tags or ())


__all__ = [
    "UNLIMITED",
    "Duration",
    "GroupBy",
    "GroupKey",
    "KeepReason",
    "PolicyResult",
    "RetentionPolicy",
    "SnapshotFilter",
    "WallClock",
    "apply_policy",
    "calendar_bucket",
    "group_snapshots",
    "has_tags",
    "newest_first",
    "parse_tag_list",
    "window_start_ns",
]
