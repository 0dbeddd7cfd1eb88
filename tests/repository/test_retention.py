"""Retention policies: restic's forget rules, checked by hand and against the real restic binary."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lockstep.errors import UsageError
from lockstep.repository.gojson import parse_time_ns
from lockstep.repository.repository import Repository
from lockstep.repository.retention import (
    UNLIMITED,
    Duration,
    GroupBy,
    GroupKey,
    RetentionPolicy,
    SnapshotFilter,
    WallClock,
    apply_policy,
    group_snapshots,
    window_start_ns,
)
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Tree
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_restic

FAR_FUTURE_NS = parse_time_ns("2100-01-01T00:00:00Z")


def make_snapshots(times: list[str], hostname: str = "host", tags: list[list[str]] | None = None) -> list[Snapshot]:
    """Snapshots with chosen times; IDs are assigned in the order given."""
    return [
        Snapshot(
            time=time,
            tree=b"\x01" * 32,
            paths=["/data"],
            hostname=hostname,
            tags=list(tags[number]) if tags else [],
            id=f"{number:064x}",
        )
        for number, time in enumerate(times)
    ]


def kept_times(snapshots: list[Snapshot], policy: RetentionPolicy, now_ns: int = FAR_FUTURE_NS) -> list[str]:
    return [snapshot.time for snapshot in apply_policy(snapshots, policy, now_ns).keep]


def reasons_by_time(snapshots: list[Snapshot], policy: RetentionPolicy) -> dict[str, tuple[str, ...]]:
    result = apply_policy(snapshots, policy, FAR_FUTURE_NS)
    return {reason.snapshot.time: reason.matches for reason in result.reasons}


# --- count rules ----------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_n_whatever_their_order_in_the_input() -> None:
    """Input order does not matter: snapshots are sorted newest first."""
    snapshots = make_snapshots(
        ["2024-01-03T00:00:00Z", "2024-01-05T00:00:00Z", "2024-01-01T00:00:00Z", "2024-01-04T00:00:00Z"]
    )
    result = apply_policy(snapshots, RetentionPolicy(last=2), FAR_FUTURE_NS)
    assert [snapshot.time for snapshot in result.keep] == ["2024-01-05T00:00:00Z", "2024-01-04T00:00:00Z"]
    assert [snapshot.time for snapshot in result.remove] == ["2024-01-03T00:00:00Z", "2024-01-01T00:00:00Z"]
    assert [reason.matches for reason in result.reasons] == [("last snapshot",), ("last snapshot",)]
    assert [reason.counters for reason in result.reasons] == [{"last": 1}, {}]


def test_keep_daily_keeps_the_newest_snapshot_of_each_day() -> None:
    snapshots = make_snapshots(
        [
            "2024-03-10T08:00:00Z",
            "2024-03-10T20:00:00Z",
            "2024-03-09T23:59:59Z",
            "2024-03-09T00:00:00Z",
            "2024-03-07T12:00:00Z",
            "2024-03-06T12:00:00Z",
        ]
    )
    assert kept_times(snapshots, RetentionPolicy(daily=3)) == [
        "2024-03-10T20:00:00Z",
        "2024-03-09T23:59:59Z",
        "2024-03-07T12:00:00Z",
    ]


def test_an_unfilled_rule_also_keeps_the_oldest_snapshot_and_says_so() -> None:
    """restic ≥ 0.16: with count left at the end of the list, the oldest snapshot is kept too;
    it is "oldest daily snapshot" because its day already has a kept snapshot."""
    snapshots = make_snapshots(["2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z", "2024-01-02T10:00:00Z"])
    reasons = reasons_by_time(snapshots, RetentionPolicy(daily=5))
    assert reasons == {
        "2024-01-02T10:00:00Z": ("daily snapshot",),
        "2024-01-01T12:00:00Z": ("daily snapshot",),
        "2024-01-01T10:00:00Z": ("oldest daily snapshot",),
    }


def test_without_keep_oldest_the_restic_014_behaviour_drops_the_oldest_of_a_shared_day() -> None:
    snapshots = make_snapshots(["2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z", "2024-01-02T10:00:00Z"])
    result = apply_policy(snapshots, RetentionPolicy(daily=5), FAR_FUTURE_NS, keep_oldest=False)
    assert [snapshot.time for snapshot in result.remove] == ["2024-01-01T10:00:00Z"]


def test_a_filled_rule_does_not_keep_the_oldest() -> None:
    snapshots = make_snapshots(["2024-01-01T10:00:00Z", "2024-01-02T10:00:00Z", "2024-01-03T10:00:00Z"])
    assert kept_times(snapshots, RetentionPolicy(daily=2)) == ["2024-01-03T10:00:00Z", "2024-01-02T10:00:00Z"]


def test_the_oldest_in_a_bucket_of_its_own_gets_the_plain_reason() -> None:
    snapshots = make_snapshots(["2024-01-01T10:00:00Z", "2024-01-02T10:00:00Z"])
    assert reasons_by_time(snapshots, RetentionPolicy(daily=5))["2024-01-01T10:00:00Z"] == ("daily snapshot",)


def test_unlimited_keeps_one_per_bucket_without_limit() -> None:
    snapshots = make_snapshots([f"2020-{month:02d}-{day:02d}T10:00:00Z" for month in range(1, 13) for day in (1, 15)])
    kept = kept_times(snapshots, RetentionPolicy(monthly=UNLIMITED))
    assert kept == [f"2020-{month:02d}-15T10:00:00Z" for month in range(12, 0, -1)] + ["2020-01-01T10:00:00Z"]
    assert reasons_by_time(snapshots, RetentionPolicy(monthly=UNLIMITED))["2020-01-01T10:00:00Z"] == (
        "oldest monthly snapshot",
    )


def test_weekly_buckets_are_iso_weeks_monday_to_sunday_across_the_year_end() -> None:
    """2024-12-30 (Mon) and 2025-01-05 (Sun) are both ISO week 2025-W01; 2024-12-29 is Sunday of W52."""
    snapshots = make_snapshots(
        ["2025-01-05T10:00:00Z", "2024-12-30T10:00:00Z", "2024-12-29T10:00:00Z", "2024-12-23T10:00:00Z"]
    )
    assert kept_times(snapshots, RetentionPolicy(weekly=2)) == ["2025-01-05T10:00:00Z", "2024-12-29T10:00:00Z"]


def test_hourly_monthly_and_yearly_buckets() -> None:
    snapshots = make_snapshots(
        ["2023-12-31T23:10:00Z", "2023-12-31T23:50:00Z", "2024-01-01T00:05:00Z", "2024-02-01T00:05:00Z"]
    )
    assert kept_times(snapshots, RetentionPolicy(hourly=3)) == [
        "2024-02-01T00:05:00Z",
        "2024-01-01T00:05:00Z",
        "2023-12-31T23:50:00Z",
    ]
    assert kept_times(snapshots, RetentionPolicy(monthly=3)) == [
        "2024-02-01T00:05:00Z",
        "2024-01-01T00:05:00Z",
        "2023-12-31T23:50:00Z",
    ]
    assert kept_times(snapshots, RetentionPolicy(yearly=1)) == ["2024-02-01T00:05:00Z"]


def test_buckets_use_the_offset_written_in_the_snapshot_time() -> None:
    """restic reads the calendar fields in the snapshot's own offset, not in UTC or the machine's
    zone: 23:30 at -05:00 is on 1 January although it is 04:30 on 2 January in UTC."""
    snapshots = make_snapshots(["2024-01-01T23:30:00-05:00", "2024-01-02T01:00:00Z", "2023-12-30T00:00:00Z"])
    assert kept_times(snapshots, RetentionPolicy(daily=2)) == ["2024-01-01T23:30:00-05:00", "2024-01-02T01:00:00Z"]
    clock = WallClock.of("2024-01-01T23:30:00-05:00")
    assert (clock.year, clock.month, clock.day, clock.hour) == (2024, 1, 1, 23)


def test_rules_are_ored_and_every_reason_is_recorded() -> None:
    snapshots = make_snapshots(
        ["2024-01-31T10:00:00Z", "2024-02-29T10:00:00Z", "2024-03-01T10:00:00Z", "2024-03-02T10:00:00Z"],
        tags=[["keep"], [], [], []],
    )
    policy = RetentionPolicy(last=1, daily=2, monthly=2, keep_tags=(("keep",),))
    assert reasons_by_time(snapshots, policy) == {
        "2024-03-02T10:00:00Z": ("last snapshot", "daily snapshot", "monthly snapshot"),
        "2024-03-01T10:00:00Z": ("daily snapshot",),
        "2024-02-29T10:00:00Z": ("monthly snapshot",),
        "2024-01-31T10:00:00Z": ("has tags [keep]",),
    }


# --- durations and windows ------------------------------------------------------------------


def test_duration_parses_restic_syntax_and_prints_it_back() -> None:
    assert Duration.parse("1y5m7d2h") == Duration(1, 5, 7, 2)
    assert Duration.parse("36h") == Duration(hours=36)
    assert Duration.parse("") == Duration()
    assert str(Duration.parse("2d1y")) == "1y2d"
    for invalid in ("5", "1w", "y", "1y-2d", "abc"):
        with pytest.raises(UsageError):
            Duration.parse(invalid)


def test_keep_within_is_relative_to_the_newest_snapshot_not_to_now() -> None:
    snapshots = make_snapshots(["2020-06-10T12:00:00Z", "2020-06-05T12:00:01Z", "2020-06-05T12:00:00Z"])
    kept = kept_times(snapshots, RetentionPolicy(within=Duration(days=5)))
    assert kept == ["2020-06-10T12:00:00Z", "2020-06-05T12:00:01Z"]  # strictly newer than the boundary
    assert reasons_by_time(snapshots, RetentionPolicy(within=Duration(days=5)))["2020-06-10T12:00:00Z"] == (
        "within 5d",
    )


def test_keep_within_subtracts_months_the_way_go_adddate_does() -> None:
    """31 March minus one month is "31 February", which Go normalises to 3 March (in 2023)."""
    latest = WallClock.of("2023-03-31T10:00:00Z")
    assert window_start_ns(latest, Duration(months=1)) == parse_time_ns("2023-03-03T10:00:00Z")
    assert window_start_ns(latest, Duration(years=1, days=31, hours=10)) == parse_time_ns("2022-02-28T00:00:00Z")
    assert window_start_ns(latest, Duration(years=5000)) is None  # before year 1: everything is inside


def test_keep_within_ignores_snapshots_from_the_future_when_finding_the_newest() -> None:
    snapshots = make_snapshots(["2030-01-01T00:00:00Z", "2020-01-10T00:00:00Z", "2020-01-01T00:00:00Z"])
    now = parse_time_ns("2021-01-01T00:00:00Z")
    result = apply_policy(snapshots, RetentionPolicy(within=Duration(days=2)), now)
    assert [snapshot.time for snapshot in result.keep] == ["2030-01-01T00:00:00Z", "2020-01-10T00:00:00Z"]


def test_keep_within_daily_keeps_one_per_day_inside_the_window() -> None:
    snapshots = make_snapshots(
        ["2024-05-10T20:00:00Z", "2024-05-10T08:00:00Z", "2024-05-09T08:00:00Z", "2024-05-01T08:00:00Z"]
    )
    policy = RetentionPolicy(within_daily=Duration(days=3))
    assert reasons_by_time(snapshots, policy) == {
        "2024-05-10T20:00:00Z": ("daily within 3d",),
        "2024-05-09T08:00:00Z": ("daily within 3d",),
    }


# --- tags, filters, groups, policy text -----------------------------------------------------


def test_keep_tag_needs_every_tag_of_a_list_and_an_empty_tag_means_untagged() -> None:
    snapshots = make_snapshots(
        ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"],
        tags=[["a", "b"], ["a"], []],
    )
    assert kept_times(snapshots, RetentionPolicy(keep_tags=(("a", "b"),))) == ["2024-01-01T00:00:00Z"]
    assert kept_times(snapshots, RetentionPolicy(keep_tags=(("",),))) == ["2024-01-03T00:00:00Z"]


def test_an_empty_policy_keeps_everything_and_reports_itself_empty() -> None:
    snapshots = make_snapshots(["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"])
    assert RetentionPolicy().is_empty
    assert not RetentionPolicy(keep_tags=(("x",),)).is_empty
    result = apply_policy(snapshots, RetentionPolicy(), FAR_FUTURE_NS)
    assert len(result.keep) == 2 and not result.remove


def test_counts_below_minus_one_are_refused() -> None:
    with pytest.raises(UsageError):
        RetentionPolicy(daily=-2)


def test_filter_matches_any_host_any_tag_list_and_all_paths() -> None:
    snapshot = Snapshot(time="2024-01-01T00:00:00Z", tree=b"", paths=["/a", "/b"], hostname="web", tags=["x", "y"])
    assert SnapshotFilter().matches(snapshot)
    assert SnapshotFilter(hosts=("db", "web")).matches(snapshot)
    assert not SnapshotFilter(hosts=("db",)).matches(snapshot)
    assert SnapshotFilter(tag_lists=(("z",), ("x", "y"))).matches(snapshot)
    assert not SnapshotFilter(tag_lists=(("x", "z"),)).matches(snapshot)
    assert SnapshotFilter(paths=("/a", "/b")).matches(snapshot)
    assert not SnapshotFilter(paths=("/a", "/c")).matches(snapshot)


def test_grouping_by_host_paths_and_tags() -> None:
    snapshots = [
        Snapshot(time="2024-01-01T00:00:00Z", tree=b"", paths=["/b", "/a"], hostname="one", tags=["t"]),
        Snapshot(time="2024-01-02T00:00:00Z", tree=b"", paths=["/a", "/b"], hostname="one", tags=[]),
        Snapshot(time="2024-01-03T00:00:00Z", tree=b"", paths=["/a"], hostname="two", tags=["t"]),
    ]
    default = group_snapshots(snapshots, GroupBy.parse("host,paths"))
    assert list(default) == [GroupKey("one", ("/a", "/b"), None), GroupKey("two", ("/a",), None)]
    assert len(default[GroupKey("one", ("/a", "/b"), None)]) == 2
    by_tags = group_snapshots(snapshots, GroupBy.parse("tags"))
    assert {key.tags: len(members) for key, members in by_tags.items()} == {(): 1, ("t",): 2}
    assert list(group_snapshots(snapshots, GroupBy.parse(""))) == [GroupKey(None, None, None)]
    with pytest.raises(UsageError):
        GroupBy.parse("host,colour")


def test_policy_description_matches_restics_wording() -> None:
    policy = RetentionPolicy(
        last=2, daily=UNLIMITED, within_weekly=Duration(months=2), keep_tags=(("a", "b"), ("c",)), within=Duration(1)
    )
    assert policy.describe() == (
        "keep 2 latest, all daily snapshots, weekly snapshots within 2m and all snapshots with tags "
        "[[a, b] [c]] and all snapshots within 1y of the newest"
    )


# --- against the real restic ----------------------------------------------------------------


def write_repository(path: Path, snapshots: list[Snapshot]) -> list[Snapshot]:
    """A lockstep repository holding these snapshots (all on one empty tree); IDs filled in."""
    repository = Repository.init(LocalBackend(str(path)), TEST_PASSWORD)
    try:
        tree_id = repository.save_tree(Tree())
        repository.flush()
        for snapshot in snapshots:
            snapshot.tree = tree_id
            snapshot.id = ""
            repository.save_snapshot(snapshot)
    finally:
        repository.close()
    return snapshots


def restic_forget(repository: Path, flags: list[str], timezone: str = "UTC") -> list[dict[str, object]]:
    completed = run_restic(str(repository), ["forget", "--dry-run", "--json", *flags], env={"TZ": timezone})
    assert completed.returncode == 0, completed.err
    groups: list[dict[str, object]] = json.loads(completed.out)
    return groups


def restic_verdict(group: dict[str, object]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    keep = [str(snapshot["id"]) for snapshot in group["keep"] or []]  # type: ignore[attr-defined]
    remove = [str(snapshot["id"]) for snapshot in group["remove"] or []]  # type: ignore[attr-defined]
    reasons = {
        snapshot_id: list(reason["matches"])
        for snapshot_id, reason in zip(keep, group["reasons"] or [], strict=True)  # type: ignore[call-overload]
    }
    return keep, remove, reasons


def random_times(generator: random.Random, count: int) -> list[str]:
    """Times over three years in three offsets: half spread out, half in a few busy spells of
    three days, so hour, day and week buckets often hold several snapshots."""
    start = parse_time_ns("2021-01-01T00:00:00Z") // 1_000_000_000
    spells = [start + generator.randrange(0, 3 * 365 * 86400) for _ in range(5)]
    offsets = {"Z": 0, "+05:30": 5 * 3600 + 1800, "-08:00": -8 * 3600}
    times = set()
    while len(times) < count:
        if generator.random() < 0.5:
            moment = start + generator.randrange(0, 3 * 365 * 86400)
        else:
            moment = generator.choice(spells) + generator.randrange(0, 3 * 86400)
        offset = generator.choice(list(offsets))
        wall = datetime.fromtimestamp(moment + offsets[offset], UTC).strftime("%Y-%m-%dT%H:%M:%S")
        times.add(wall + offset)
    return sorted(times)


POLICIES: list[tuple[list[str], RetentionPolicy]] = [
    (["--keep-last", "3"], RetentionPolicy(last=3)),
    (["--keep-hourly", "4"], RetentionPolicy(hourly=4)),
    (["--keep-daily", "7"], RetentionPolicy(daily=7)),
    (["--keep-weekly", "5"], RetentionPolicy(weekly=5)),
    (["--keep-monthly", "6"], RetentionPolicy(monthly=6)),
    (["--keep-yearly", "2"], RetentionPolicy(yearly=2)),
    (["--keep-daily", "3", "--keep-weekly", "2", "--keep-monthly", "4"], RetentionPolicy(daily=3, weekly=2, monthly=4)),
    (["--keep-within", "1y2m3d4h"], RetentionPolicy(within=Duration(1, 2, 3, 4))),
    (["--keep-within", "36h"], RetentionPolicy(within=Duration(hours=36))),
    (["--keep-within-daily", "20d"], RetentionPolicy(within_daily=Duration(days=20))),
    (["--keep-within-weekly", "3m"], RetentionPolicy(within_weekly=Duration(months=3))),
    (["--keep-within-monthly", "1y"], RetentionPolicy(within_monthly=Duration(years=1))),
    (["--keep-within-hourly", "2d"], RetentionPolicy(within_hourly=Duration(days=2))),
    (["--keep-hourly", "60"], RetentionPolicy(hourly=60)),
    (["--keep-daily", "50", "--keep-weekly", "40"], RetentionPolicy(daily=50, weekly=40)),
    (["--keep-monthly", "48", "--keep-yearly", "9"], RetentionPolicy(monthly=48, yearly=9)),
    (
        ["--keep-within-daily", "3y", "--keep-within-hourly", "400d"],
        RetentionPolicy(within_daily=Duration(years=3), within_hourly=Duration(days=400)),
    ),
    (["--keep-tag", "a", "--keep-last", "1"], RetentionPolicy(last=1, keep_tags=(("a",),))),
    (["--keep-tag", "a,b", "--keep-yearly", "1"], RetentionPolicy(yearly=1, keep_tags=(("a", "b"),))),
]


@pytest.mark.parametrize("seed", [1, 2])
def test_keep_and_remove_sets_match_restic_014_on_random_histories(
    restic_binary: str, tmp_path: Path, seed: int
) -> None:
    """Random snapshot times in three offsets; every policy gives restic 0.14's keep and remove
    sets and reasons when lockstep runs in restic 0.14 mode (no extra oldest snapshot), and the
    default mode differs from it only by keeping the oldest snapshot."""
    generator = random.Random(seed)
    times = random_times(generator, 100)
    tag_choices = [[], ["a"], ["a", "b"], ["b"]]
    tags = [generator.choice(tag_choices) for _ in times]
    snapshots = write_repository(tmp_path / "repository", make_snapshots(times, tags=tags))
    for flags, policy in POLICIES:
        groups = restic_forget(tmp_path / "repository", flags, timezone="Asia/Tokyo")
        assert len(groups) == 1
        keep, remove, reasons = restic_verdict(groups[0])
        compatible = apply_policy(snapshots, policy, FAR_FUTURE_NS, keep_oldest=False)
        assert [snapshot.id for snapshot in compatible.keep] == keep, flags
        assert [snapshot.id for snapshot in compatible.remove] == remove, flags
        assert {reason.snapshot.id: list(reason.matches) for reason in compatible.reasons} == reasons, flags
        current = apply_policy(snapshots, policy, FAR_FUTURE_NS)
        extra = {snapshot.id for snapshot in current.keep} - set(keep)
        oldest = min(snapshots, key=lambda snapshot: snapshot.time_ns).id
        assert extra <= {oldest}, flags
        assert {snapshot.id for snapshot in current.remove} == set(remove) - extra, flags


def test_policy_text_matches_restic(restic_binary: str, tmp_path: Path) -> None:
    snapshots = write_repository(tmp_path / "repository", make_snapshots(["2024-01-01T00:00:00Z"]))
    assert snapshots[0].id
    completed = run_restic(
        str(tmp_path / "repository"),
        [
            "forget",
            "--dry-run",
            "--keep-last",
            "2",
            "--keep-daily",
            "3",
            "--keep-within-weekly",
            "2m",
            "--keep-tag",
            "a,b",
            "--keep-within",
            "1y",
        ],
    )
    assert completed.returncode == 0, completed.err
    policy = RetentionPolicy(
        last=2, daily=3, within_weekly=Duration(months=2), keep_tags=(("a", "b"),), within=Duration(years=1)
    )
    assert f"Applying Policy: {policy.describe()}\n" in completed.out


def test_groups_match_restic(restic_binary: str, tmp_path: Path) -> None:
    """--group-by host,tags: the same groups with the same verdicts."""
    snapshots = make_snapshots(
        ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z", "2024-01-04T00:00:00Z"],
        tags=[["x"], ["x"], ["y", "x"], ["x", "y"]],
    )
    snapshots[1].hostname = "other"
    write_repository(tmp_path / "repository", snapshots)
    groups = restic_forget(tmp_path / "repository", ["--keep-last", "1", "--group-by", "host,tags"])
    theirs = {
        (group["host"], tuple(group["tags"] or [])): restic_verdict(group)[:2]  # type: ignore[arg-type]
        for group in groups
    }
    ours = {
        (key.hostname, key.tags): (
            [snapshot.id for snapshot in result.keep],
            [snapshot.id for snapshot in result.remove],
        )
        for key, members in group_snapshots(snapshots, GroupBy.parse("host,tags")).items()
        for result in [apply_policy(members, RetentionPolicy(last=1), FAR_FUTURE_NS)]
    }
    assert ours == theirs
