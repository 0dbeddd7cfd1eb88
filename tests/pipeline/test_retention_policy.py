"""`plan_forget` on synthetic snapshots: restic's rules over the manual and scheduled snapshots
(keep_tags over every snapshot), a calendar period without one filled by its newest pre-deploy or
pre-restore snapshot,
pre-deploy snapshots of the last N deploys and pre-restore snapshots of the last N restores kept
by their own rules, groups per environment and project path, and snapshots of other tools never
considered."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from lockstep.config.model import RetentionConfig
from lockstep.pipeline.retention_policy import REMOVE_REASON, ForgetPlan, describe, is_empty, plan_forget
from lockstep.repository.retention import Duration, RetentionPolicy, apply_policy
from lockstep.repository.snapshot import Snapshot

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def snapshot(
    when: datetime, kind: str = "scheduled", environment: str = "production", extra: tuple[str, ...] = ()
) -> Snapshot:
    """A lockstep snapshot as pipeline/snapshot.py tags it, at a chosen time."""
    number = next(_ids)
    return Snapshot(
        time=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        tree=b"\0" * 32,
        paths=["/lockstep/shop"],
        tags=["lockstep", f"kind:{kind}", f"env:{environment}", *extra],
        id=f"{number:064x}",
    )


def ids(snapshots: list[Snapshot]) -> set[str]:
    return {item.id for item in snapshots}


def only_daily(days: int, pre_deploy: int = 0, pre_restore: int = 0) -> RetentionConfig:
    return RetentionConfig(
        keep_daily=days, keep_weekly=0, keep_monthly=0, keep_pre_deploy=pre_deploy, keep_pre_restore=pre_restore
    )


def test_keep_daily_keeps_the_newest_snapshot_of_each_of_the_last_days() -> None:
    """Three snapshots a day for ten days, keep_daily 7: the last of each of the 7 newest days."""
    days = [[snapshot(datetime(2025, 6, day, hour, tzinfo=UTC)) for hour in (1, 9, 17)] for day in range(20, 30)]
    plan = plan_forget([item for day in days for item in day], only_daily(7), NOW, project="shop")
    assert len(plan.groups) == 1
    expected = {day[-1].id for day in days[-7:]}
    assert ids(plan.keep) == expected
    assert len(plan.remove) == 30 - 7
    reasons = {verdict.snapshot.id: verdict.reasons for verdict in plan.groups[0].verdicts}
    assert reasons[days[-1][-1].id] == ("daily snapshot",)
    assert reasons[days[0][0].id] == (REMOVE_REASON,)


def test_defaults_keep_weekly_and_every_monthly_with_restic_reasons() -> None:
    """The defaults (7 daily, 4 weekly, all monthly) over 100 daily snapshots."""
    start = datetime(2025, 3, 23, 3, 0, tzinfo=UTC)
    snapshots = [snapshot(start + timedelta(days=offset)) for offset in range(100)]  # up to 2025-06-30
    plan = plan_forget(snapshots, RetentionConfig(), NOW, project="shop")
    kept = {verdict.snapshot.time[:10]: verdict.reasons for verdict in plan.groups[0].verdicts if verdict.keep}
    # Seven newest days.
    for day in range(24, 31):
        assert "daily snapshot" in kept[f"2025-06-{day:02d}"]
    # 2025-06-30 is a Monday, alone in its ISO week; then the Sundays that end the three weeks before.
    weekly = sorted(day for day, reasons in kept.items() if "weekly snapshot" in reasons)
    assert weekly == ["2025-06-15", "2025-06-22", "2025-06-29", "2025-06-30"]
    # Last day of every month, and the oldest snapshot for the unlimited monthly rule.
    monthly = sorted(day for day, reasons in kept.items() if "monthly snapshot" in reasons)
    assert monthly == ["2025-03-31", "2025-04-30", "2025-05-31", "2025-06-30"]
    assert "oldest monthly snapshot" in kept["2025-03-23"]
    assert len(plan.remove) == 100 - len(kept)


def test_pre_deploy_snapshots_of_the_last_deploys_are_kept_in_addition() -> None:
    """Twelve deploys on one day: the daily rule keeps one snapshot, the pre-deploy rule the last 10."""
    deploys = [snapshot(datetime(2025, 6, 29, hour, tzinfo=UTC), kind="pre-deploy") for hour in range(1, 13)]
    nightly = snapshot(datetime(2025, 6, 29, 23, tzinfo=UTC))
    plan = plan_forget([*deploys, nightly], only_daily(1, pre_deploy=10), NOW, project="shop")
    assert ids(plan.keep) == {nightly.id} | ids(deploys[2:])
    assert ids(plan.remove) == ids(deploys[:2])
    reasons = {verdict.snapshot.id: verdict.reasons for verdict in plan.groups[0].verdicts}
    assert reasons[deploys[-1].id] == ("pre-deploy snapshot",)
    assert reasons[nightly.id] == ("daily snapshot",)
    assert reasons[deploys[0].id] == ("not of the last 10 deploys",)


def reasons_by_id(plan: ForgetPlan) -> dict[str, tuple[str, ...]]:
    return {verdict.snapshot.id: verdict.reasons for group in plan.groups for verdict in group.verdicts}


def test_a_pre_restore_snapshot_after_the_days_backup_does_not_take_its_daily_slot() -> None:
    """The default retention, a scheduled backup, then a restore the same day: restic keeps the
    newest snapshot of a day, and the pre-restore snapshot (one database, before a restore) used
    to be the day's daily, weekly and monthly while the whole-app backup was forgotten. The
    calendar rules count regular snapshots only; the pre-restore one has its own rule."""
    yesterday = snapshot(datetime(2025, 6, 28, 2, tzinfo=UTC))
    nightly = snapshot(datetime(2025, 6, 29, 2, tzinfo=UTC))
    before_restore = snapshot(datetime(2025, 6, 29, 15, tzinfo=UTC), kind="pre-restore")
    plan = plan_forget([yesterday, nightly, before_restore], RetentionConfig(), NOW, project="shop")
    assert plan.remove == []
    reasons = reasons_by_id(plan)
    assert reasons[nightly.id] == ("daily snapshot", "weekly snapshot", "monthly snapshot")
    assert reasons[before_restore.id] == ("pre-restore snapshot",)
    assert reasons[yesterday.id] == ("daily snapshot", "oldest weekly snapshot", "oldest monthly snapshot")


def test_a_pre_deploy_snapshot_after_the_days_backup_does_not_take_its_daily_slot() -> None:
    """keep_daily 1: the day's manual snapshot stays the daily, the later deploy's snapshot is
    kept by the pre-deploy rule; with keep_pre_deploy 0 it goes, and says why."""
    manual = snapshot(datetime(2025, 6, 29, 9, tzinfo=UTC), kind="manual")
    deploy = snapshot(datetime(2025, 6, 29, 14, tzinfo=UTC), kind="pre-deploy", extra=("deploy:d1",))
    plan = plan_forget([manual, deploy], only_daily(1, pre_deploy=10), NOW, project="shop")
    assert plan.remove == []
    assert reasons_by_id(plan) == {manual.id: ("daily snapshot",), deploy.id: ("pre-deploy snapshot",)}
    without = plan_forget([manual, deploy], only_daily(1, pre_deploy=0), NOW, project="shop")
    assert ids(without.remove) == {deploy.id}
    assert reasons_by_id(without)[deploy.id] == ("keep_pre_deploy is 0",)


def test_a_day_with_only_a_pre_restore_snapshot_fills_the_daily_slot() -> None:
    """keep_daily 2 over a backup, a day with only a restore, and another backup: the restore's
    day has no regular snapshot, so its pre-restore snapshot is that day's daily (keep_pre_restore
    0: nothing else keeps it) and, counted as one of the 2 days, pushes the older backup out."""
    first = snapshot(datetime(2025, 6, 27, 2, tzinfo=UTC))
    restore = snapshot(datetime(2025, 6, 28, 13, tzinfo=UTC), kind="pre-restore")
    last = snapshot(datetime(2025, 6, 29, 2, tzinfo=UTC))
    plan = plan_forget([first, restore, last], only_daily(2), NOW, project="shop")
    reasons = reasons_by_id(plan)
    assert reasons[last.id] == ("daily snapshot",)
    assert reasons[restore.id] == ("daily snapshot (no regular snapshot that day)",)
    assert reasons[first.id] == (REMOVE_REASON,)


def test_a_day_without_a_backup_is_filled_by_its_newest_special_snapshot() -> None:
    """A day of a deploy then a restore: the newer (the pre-restore snapshot) is the day's daily,
    the pre-deploy one is past its own rule."""
    deploy = snapshot(datetime(2025, 6, 28, 12, tzinfo=UTC), kind="pre-deploy")
    restore = snapshot(datetime(2025, 6, 28, 13, tzinfo=UTC), kind="pre-restore")
    last = snapshot(datetime(2025, 6, 29, 2, tzinfo=UTC))
    reasons = reasons_by_id(plan_forget([deploy, restore, last], only_daily(2), NOW, project="shop"))
    assert reasons[last.id] == ("daily snapshot",)
    assert reasons[restore.id] == ("daily snapshot (no regular snapshot that day)",)
    assert reasons[deploy.id] == ("keep_pre_deploy is 0",)


def only_monthly(months: int, pre_deploy: int = 0) -> RetentionConfig:
    return RetentionConfig(keep_daily=0, keep_weekly=0, keep_monthly=months, keep_pre_deploy=pre_deploy)


def test_a_project_that_only_deploys_keeps_a_pre_deploy_snapshot_per_month() -> None:
    """No backup at all, deploys every few days from January to June: keep_monthly keeps the
    newest pre-deploy snapshot of each month (the last 10 deploys alone would be three weeks),
    each saying it fills a month without a regular snapshot; keep_pre_deploy still adds its own."""
    deploys = [
        snapshot(datetime(2025, month, day, 10, tzinfo=UTC), kind="pre-deploy", extra=(f"deploy:{month}-{day}",))
        for month in range(1, 7)
        for day in (3, 11, 19, 27)
    ]
    newest_of_month = {item.time[:7]: item for item in deploys}  # the last one of each month wins
    assert len(newest_of_month) == 6
    plan = plan_forget(deploys, only_monthly(-1, pre_deploy=2), NOW, project="shop")
    reasons = reasons_by_id(plan)
    assert ids(plan.keep) == ids(list(newest_of_month.values())) | ids(deploys[-2:])
    for month, kept in newest_of_month.items():
        expected = ["monthly snapshot (no regular snapshot that month)"]
        if month == "2025-06":
            expected.append("pre-deploy snapshot")
        assert list(reasons[kept.id]) == expected, month
    assert reasons[deploys[-2].id] == ("pre-deploy snapshot",)
    assert reasons[deploys[0].id] == ("not of the last 2 deploys",)

    # A filled month counts as one of keep_monthly's months: 3 keeps April, May and June.
    three = plan_forget(deploys, only_monthly(3, pre_deploy=0), NOW, project="shop")
    assert ids(three.keep) == ids([newest_of_month[f"2025-0{month}"] for month in (4, 5, 6)])


def test_a_month_with_a_backup_keeps_the_backup_not_a_later_pre_deploy_snapshot() -> None:
    """June has a backup and, after it, deploys; May has deploys only. June's monthly is the
    backup (a later pre-deploy snapshot never pushes it out), May's its newest pre-deploy
    snapshot; June's deploys are kept only by keep_pre_deploy."""
    may = [snapshot(datetime(2025, 5, day, tzinfo=UTC), kind="pre-deploy") for day in (10, 20)]
    backup = snapshot(datetime(2025, 6, 5, 2, tzinfo=UTC))
    june = [snapshot(datetime(2025, 6, day, tzinfo=UTC), kind="pre-deploy") for day in (12, 25)]
    everything = [*may, backup, *june]
    without = plan_forget(everything, only_monthly(-1, pre_deploy=0), NOW, project="shop")
    reasons = reasons_by_id(without)
    assert ids(without.keep) == {backup.id, may[1].id}
    assert reasons[backup.id] == ("monthly snapshot",)
    assert reasons[may[1].id] == ("monthly snapshot (no regular snapshot that month)",)
    assert reasons[june[1].id] == ("keep_pre_deploy is 0",)

    with_deploys = plan_forget(everything, only_monthly(-1, pre_deploy=1), NOW, project="shop")
    reasons = reasons_by_id(with_deploys)
    assert ids(with_deploys.keep) == {backup.id, may[1].id, june[1].id}
    assert reasons[june[1].id] == ("pre-deploy snapshot",)
    assert reasons[june[0].id] == ("not of the last deploy",)


def test_pre_deploy_snapshots_sharing_a_deploy_tag_count_as_one_deploy() -> None:
    first = snapshot(datetime(2025, 6, 1, tzinfo=UTC), kind="pre-deploy", extra=("deploy:d1",))
    second = [snapshot(datetime(2025, 6, 2, h, tzinfo=UTC), kind="pre-deploy", extra=("deploy:d2",)) for h in (1, 2)]
    daily = snapshot(datetime(2025, 6, 29, tzinfo=UTC))
    plan = plan_forget([first, *second, daily], only_daily(1, pre_deploy=1), NOW, project="shop")
    assert ids(plan.keep) == {daily.id} | ids(second)
    assert ids(plan.remove) == {first.id}


def test_pre_restore_snapshots_of_the_last_restores_are_kept_in_addition() -> None:
    """A restore, then the nightly backup the same day: the daily rule keeps only the backup, the
    pre-restore rule keeps the pre-restore snapshots of the last 3 restores (the undo of each)."""
    restores = [snapshot(datetime(2025, 6, 29, hour, tzinfo=UTC), kind="pre-restore") for hour in range(1, 6)]
    nightly = snapshot(datetime(2025, 6, 29, 23, tzinfo=UTC))
    plan = plan_forget([*restores, nightly], only_daily(1, pre_restore=3), NOW, project="shop")
    assert ids(plan.keep) == ids([nightly, *restores[-3:]])
    reasons = {verdict.snapshot.id: verdict.reasons for group in plan.groups for verdict in group.verdicts}
    assert reasons[restores[-1].id] == ("pre-restore snapshot",)
    assert reasons[restores[0].id] == ("not of the last 3 restores",)
    assert ids(plan_forget([*restores, nightly], only_daily(1, pre_restore=0), NOW, project="shop").keep) == {
        nightly.id
    }
    assert ids(plan_forget([*restores, nightly], only_daily(1, pre_restore=-1), NOW, project="shop").keep) == ids(
        [nightly, *restores]
    )


def test_unlimited_pre_deploy_keeps_every_pre_deploy_snapshot() -> None:
    deploys = [snapshot(datetime(2025, 5, day, tzinfo=UTC), kind="pre-deploy") for day in range(1, 25)]
    plan = plan_forget(deploys, only_daily(1, pre_deploy=-1), NOW, project="shop")
    assert plan.remove == []


def test_other_tools_snapshots_are_never_in_the_plan() -> None:
    """A restic snapshot in the same repository is neither kept nor removed: it is not considered."""
    ours = [snapshot(datetime(2025, 6, day, tzinfo=UTC)) for day in (1, 2, 3)]
    theirs = Snapshot(time="2025-01-01T00:00:00Z", tree=b"\0" * 32, paths=["/home"], tags=["nightly"], id="f" * 64)
    untagged = Snapshot(time="2025-01-02T00:00:00Z", tree=b"\0" * 32, paths=["/lockstep/shop"], id="e" * 64)
    plan = plan_forget([*ours, theirs, untagged], only_daily(1), NOW, project="shop")
    assert theirs.id not in ids(plan.keep) | ids(plan.remove)
    assert untagged.id not in ids(plan.keep) | ids(plan.remove)
    assert ids(plan.keep) == {ours[-1].id}


def test_environments_and_project_paths_are_separate_groups() -> None:
    """Groups are per environment and path (as restic groups by paths); the schema-only path of
    the project is a group of its own, and another project's snapshots are in no group at all:
    a project sharing the repository never forgets them by this project's retention."""
    production = [snapshot(datetime(2025, 6, day, tzinfo=UTC)) for day in (1, 2)]
    staging = [snapshot(datetime(2025, 6, day, 5, tzinfo=UTC), environment="staging") for day in (1, 2)]
    structure = snapshot(datetime(2025, 6, 1, 6, tzinfo=UTC), extra=("schema-only",))
    structure.paths = ["/lockstep/shop/schema-only"]
    other_project = [snapshot(datetime(2025, 6, day, tzinfo=UTC)) for day in (1, 2, 3)]
    for item in other_project:
        item.paths = ["/lockstep/blog"]
    plan = plan_forget([*production, *staging, structure, *other_project], only_daily(1), NOW, project="shop")
    groups = {(group.environment, group.paths): group for group in plan.groups}
    assert set(groups) == {
        ("production", ("/lockstep/shop",)),
        ("production", ("/lockstep/shop/schema-only",)),
        ("staging", ("/lockstep/shop",)),
    }
    assert ids(groups["production", ("/lockstep/shop",)].keep) == {production[-1].id}
    assert ids(groups["production", ("/lockstep/shop/schema-only",)].keep) == {structure.id}
    assert ids(groups["staging", ("/lockstep/shop",)].keep) == {staging[-1].id}
    assert not ids(other_project) & (ids(plan.keep) | ids(plan.remove))

    only_staging = plan_forget([*production, *staging], only_daily(1), NOW, environments=("staging",), project="shop")
    assert [group.environment for group in only_staging.groups] == ["staging"]
    assert ids(only_staging.remove) == {staging[0].id}


def test_an_environment_can_have_its_own_retention() -> None:
    production = [snapshot(datetime(2025, 6, day, tzinfo=UTC)) for day in range(1, 6)]
    staging = [snapshot(datetime(2025, 6, day, tzinfo=UTC), environment="staging") for day in range(1, 6)]
    plan = plan_forget(
        [*production, *staging],
        only_daily(1),
        NOW,
        retention_by_environment={"production": only_daily(3)},
        project="shop",
    )
    groups = {group.environment: group for group in plan.groups}
    assert len(groups["production"].keep) == 3
    assert len(groups["staging"].keep) == 1
    assert "3 daily" in groups["production"].policy


def test_rules_that_would_empty_a_group_keep_it_whole() -> None:
    """Only a pre-deploy rule and no pre-deploy snapshot: nothing is deleted rather than everything."""
    snapshots = [snapshot(datetime(2025, 6, day, tzinfo=UTC)) for day in (1, 2, 3)]
    plan = plan_forget(snapshots, only_daily(0, pre_deploy=5), NOW, project="shop")
    assert plan.remove == []
    assert all(verdict.reasons == ("the rules keep none of this group",) for verdict in plan.groups[0].verdicts)


def test_a_snapshot_in_the_future_does_not_shift_the_window() -> None:
    """Calendar buckets count snapshots, not days since `now`: a gap of weeks keeps older days."""
    old = [snapshot(datetime(2025, 5, day, tzinfo=UTC)) for day in (1, 2, 3)]
    plan = plan_forget(old, only_daily(2), NOW, project="shop")
    assert ids(plan.keep) == {old[1].id, old[2].id}


def test_describe_and_empty() -> None:
    assert describe(RetentionConfig()) == (
        "keep 7 daily, 4 weekly, all monthly snapshots (manual and scheduled), plus the pre-deploy snapshots"
        " of the last 10 deploys and the pre-restore snapshots of the last 10 restores"
    )
    assert describe(only_daily(0, pre_deploy=5)) == "keep only the pre-deploy snapshots of the last 5 deploys"
    assert is_empty(RetentionConfig(keep_daily=0, keep_weekly=0, keep_monthly=0, keep_pre_deploy=0, keep_pre_restore=0))
    assert not is_empty(only_daily(0, pre_restore=1))
    assert describe(only_daily(1, pre_restore=-1)).endswith(", plus every pre-restore snapshot")
    assert not is_empty(only_daily(0, pre_deploy=1))


def only(**rules: object) -> RetentionConfig:
    """Every rule off but `rules` (keep_daily=..., keep_tags=[...], ...)."""
    off: dict[str, object] = {
        "keep_daily": 0,
        "keep_weekly": 0,
        "keep_monthly": 0,
        "keep_pre_deploy": 0,
        "keep_pre_restore": 0,
    }
    return RetentionConfig.model_validate({**off, **rules})


def test_keep_last_keeps_the_newest_regular_snapshots_only() -> None:
    """restic's --keep-last 3 over five backups of one day and a later deploy: the three newest
    backups ("last snapshot"); the pre-deploy snapshot is not one of the 3 and, with
    keep_pre_deploy 0, goes."""
    backups = [snapshot(datetime(2025, 6, 29, hour, tzinfo=UTC)) for hour in (1, 5, 9, 13, 17)]
    deploy = snapshot(datetime(2025, 6, 29, 20, tzinfo=UTC), kind="pre-deploy")
    plan = plan_forget([*backups, deploy], only(keep_last=3), NOW, project="shop")
    reasons = reasons_by_id(plan)
    assert ids(plan.keep) == ids(backups[-3:])
    assert all(reasons[item.id] == ("last snapshot",) for item in backups[-3:])
    assert reasons[backups[0].id] == (REMOVE_REASON,)
    assert reasons[deploy.id] == ("keep_pre_deploy is 0",)
    every = plan_forget([*backups, deploy], only(keep_last=-1), NOW, project="shop")
    assert ids(every.keep) == ids(backups)


def test_keep_hourly_fills_an_hour_without_a_backup_with_its_newest_special_snapshot() -> None:
    """Backups at 10:00 and 12:00, a deploy then a restore at 11:xx, a deploy after the 12:00
    backup: keep_hourly 3 keeps both backups and the restore as 11:00's hourly; the 12:00 backup
    stays its hour's hourly whatever came after it."""
    ten = snapshot(datetime(2025, 6, 29, 10, 0, tzinfo=UTC))
    deploy = snapshot(datetime(2025, 6, 29, 11, 10, tzinfo=UTC), kind="pre-deploy")
    restore = snapshot(datetime(2025, 6, 29, 11, 40, tzinfo=UTC), kind="pre-restore")
    twelve = snapshot(datetime(2025, 6, 29, 12, 0, tzinfo=UTC))
    later = snapshot(datetime(2025, 6, 29, 12, 30, tzinfo=UTC), kind="pre-deploy")
    nine = snapshot(datetime(2025, 6, 29, 9, 0, tzinfo=UTC))
    plan = plan_forget([nine, ten, deploy, restore, twelve, later], only(keep_hourly=3), NOW, project="shop")
    reasons = reasons_by_id(plan)
    assert ids(plan.keep) == {ten.id, restore.id, twelve.id}
    assert reasons[twelve.id] == ("hourly snapshot",)
    assert reasons[restore.id] == ("hourly snapshot (no regular snapshot that hour)",)
    assert reasons[ten.id] == ("hourly snapshot",)
    assert reasons[nine.id] == (REMOVE_REASON,)
    assert reasons[later.id] == ("keep_pre_deploy is 0",)


def test_keep_yearly_keeps_a_snapshot_a_year_and_fills_a_year_of_deploys_only() -> None:
    """2022 and 2024 have backups, 2023 only deploys: keep_yearly -1 keeps the newest backup of
    2022 and 2024 (not 2024's later deploy) and 2023's newest pre-deploy snapshot."""
    y2022 = [snapshot(datetime(2022, month, 1, tzinfo=UTC)) for month in (3, 9)]
    y2023 = [snapshot(datetime(2023, month, 1, tzinfo=UTC), kind="pre-deploy") for month in (2, 8)]
    y2024 = snapshot(datetime(2024, 5, 1, tzinfo=UTC))
    deploy_2024 = snapshot(datetime(2024, 11, 1, tzinfo=UTC), kind="pre-deploy")
    everything = [*y2022, *y2023, y2024, deploy_2024]
    reasons = reasons_by_id(plan_forget(everything, only(keep_yearly=-1), NOW, project="shop"))
    assert reasons[y2024.id] == ("yearly snapshot",)
    assert reasons[y2023[1].id] == ("yearly snapshot (no regular snapshot that year)",)
    assert reasons[y2022[1].id] == ("yearly snapshot",)
    # The unlimited rule keeps the oldest snapshot too, as restic does.
    assert reasons[y2022[0].id] == ("oldest yearly snapshot",)
    assert reasons[y2023[0].id] == ("keep_pre_deploy is 0",)
    assert reasons[deploy_2024.id] == ("keep_pre_deploy is 0",)
    two = plan_forget(everything, only(keep_yearly=2), NOW, project="shop")
    assert ids(two.keep) == {y2024.id, y2023[1].id}


def test_keep_within_keeps_the_regular_snapshots_near_the_newest_regular_one() -> None:
    """Daily backups up to 10 June, then only a deploy on 20 June, planned on 30 June: keep_within
    3d counts back from the newest backup (not from now, nor from the deploy), so 8, 9 and 10
    June stay ("within 3d"); the deploy is not kept by it."""
    backups = [snapshot(datetime(2025, 6, day, 2, tzinfo=UTC)) for day in range(1, 11)]
    deploy = snapshot(datetime(2025, 6, 20, 2, tzinfo=UTC), kind="pre-deploy")
    plan = plan_forget([*backups, deploy], only(keep_within="3d"), NOW, project="shop")
    reasons = reasons_by_id(plan)
    assert ids(plan.keep) == ids(backups[-3:])
    assert all(reasons[item.id] == ("within 3d",) for item in backups[-3:])
    assert reasons[backups[-4].id] == (REMOVE_REASON,)
    assert reasons[deploy.id] == ("keep_pre_deploy is 0",)
    longer = plan_forget([*backups, deploy], only(keep_within="1m"), NOW, project="shop")
    assert ids(longer.keep) == ids(backups)


@pytest.mark.parametrize(
    ("key", "duration", "unit"),
    [
        ("keep_within_hourly", "1d", "hourly"),
        ("keep_within_daily", "5d", "daily"),
        ("keep_within_weekly", "1m", "weekly"),
        ("keep_within_monthly", "4m", "monthly"),
        ("keep_within_yearly", "2y", "yearly"),
    ],
)
def test_keep_within_unit_keeps_one_regular_snapshot_per_period_inside_the_window(
    key: str, duration: str, unit: str
) -> None:
    """restic's --keep-within-<unit>: the newest backup of each period within the duration of
    the newest backup; special snapshots, even newer ones, neither count nor are kept by it."""
    start = datetime(2022, 1, 1, 1, tzinfo=UTC)
    backups = [snapshot(start + timedelta(hours=offset)) for offset in range(0, 3 * 365 * 24, 7)]
    deploys = [
        snapshot(start + timedelta(hours=offset), kind="pre-deploy") for offset in range(3, 3 * 365 * 24 + 500, 50)
    ]
    plan = plan_forget([*backups, *deploys], only(**{key: duration}), NOW, project="shop")
    rule = RetentionPolicy(**{key.removeprefix("keep_"): Duration.parse(duration)})
    expected = apply_policy(backups, rule, int(NOW.timestamp()) * 1_000_000_000)
    assert ids(plan.keep) == ids(expected.keep)
    assert 1 < len(plan.keep) < len(backups) / 5
    assert ids(plan.keep) & ids(deploys) == set()
    newest = backups[-1]
    assert reasons_by_id(plan)[newest.id] == (f"{unit} within {duration}",)
    window = {
        "hourly": timedelta(days=1),
        "daily": timedelta(days=5),
        "weekly": timedelta(days=31),
        "monthly": timedelta(days=4 * 31),
        "yearly": timedelta(days=2 * 366),
    }[unit]
    assert all(item.time_ns > newest.time_ns - int(window.total_seconds()) * 1_000_000_000 for item in plan.keep)


def test_keep_tags_keeps_any_snapshot_with_the_tags_whatever_its_kind() -> None:
    """keep_tags ["release", "db,weekly"]: a backup tagged release, a pre-deploy snapshot tagged
    release (kept although keep_pre_deploy is 0) and a backup with both db and weekly are kept
    ("has tags [...]", restic's words, before the other reasons); one with only db goes."""
    release = snapshot(datetime(2025, 6, 1, tzinfo=UTC), extra=("release",))
    deploy = snapshot(datetime(2025, 6, 2, tzinfo=UTC), kind="pre-deploy", extra=("release",))
    both = snapshot(datetime(2025, 6, 3, tzinfo=UTC), extra=("db", "weekly"))
    db_only = snapshot(datetime(2025, 6, 4, tzinfo=UTC), extra=("db",))
    newest = snapshot(datetime(2025, 6, 5, tzinfo=UTC), extra=("release",))
    retention = only(keep_daily=1, keep_tags=["release", "db,weekly"])
    plan = plan_forget([release, deploy, both, db_only, newest], retention, NOW, project="shop")
    reasons = reasons_by_id(plan)
    assert ids(plan.keep) == {release.id, deploy.id, both.id, newest.id}
    assert reasons[release.id] == ("has tags [release]",)
    assert reasons[deploy.id] == ("has tags [release]",)
    assert reasons[both.id] == ("has tags [db, weekly]",)
    assert reasons[newest.id] == ("has tags [release]", "daily snapshot")
    assert reasons[db_only.id] == (REMOVE_REASON,)


def test_describe_names_the_new_rules_in_restics_words() -> None:
    retention = RetentionConfig(
        keep_last=3,
        keep_hourly=24,
        keep_yearly=-1,
        keep_within="1y",
        keep_within_daily="30d",
        keep_tags=["release", "db,weekly"],
        keep_pre_deploy=0,
        keep_pre_restore=2,
    )
    assert describe(retention) == (
        "keep 3 latest, 24 hourly, 7 daily, 4 weekly, all monthly, all yearly snapshots, daily snapshots within"
        " 30d and all snapshots within 1y of the newest (manual and scheduled), plus all snapshots with tags"
        " [[release] [db, weekly]] and the pre-restore snapshots of the last 2 restores"
    )
    assert describe(only(keep_tags=["release"])) == "keep only all snapshots with tags [[release]]"
    assert describe(only(keep_within="2d")) == "keep all snapshots within 2d of the newest (manual and scheduled)"
    for rules in (
        {"keep_last": 1},
        {"keep_hourly": 1},
        {"keep_yearly": 1},
        {"keep_within": "1d"},
        {"keep_within_weekly": "1m"},
        {"keep_tags": ["release"]},
    ):
        assert not is_empty(only(**rules)), rules
    assert is_empty(only(keep_within="0d", keep_tags=[]))
