"""Which coordinated snapshots the config's retention keeps: restic's `forget` rules for the
regular snapshots, and a rule of their own for pre-deploy and pre-restore snapshots.

The rules of [retention] named after restic's flags are restic's `forget` semantics and come
from `repository/retention.py`, applied to the regular snapshots: manual and scheduled ones (any
kind but the two below). A snapshot taken for a special purpose never takes the slot of an
hour, day, week, month or year that has a regular snapshot: restic keeps the newest snapshot of
each day, so a pre-restore snapshot (one database, taken before a restore) after the nightly
backup would otherwise be the day's daily and the whole-app backup would be forgotten. For the
calendar rules (keep_hourly ... keep_yearly), a period with no regular snapshot at all is filled
by its newest special snapshot instead, counted like any other period of the rule: a project
that only deploys keeps a pre-deploy snapshot per month (keep_monthly) as it would keep its
backups. keep_last, keep_within and the keep_within_<unit> rules count the regular snapshots
only (keep_within from the newest regular one), as restic would over a group of them alone;
keep_tags (restic's --keep-tag) keeps any snapshot with the tags, whatever its kind. On top of
that:

* the pre-deploy snapshots of the last `keep_pre_deploy` deploys are kept, because they are what
  a rollback restores: a week of quiet nights must not push last Tuesday's deploy out of reach;
* the pre-restore snapshots of the last `keep_pre_restore` restores are kept: each is the only
  undo of a mistaken restore.

Only snapshots tagged `lockstep` of the project (its path, /lockstep/NAME) are considered;
another tool's or another project's snapshots in the same repository are never in a plan, so a
project sharing a repository never forgets another's snapshots by its own retention. Groups are
per environment and per project path (the snapshot's path, as restic groups by paths), so
staging's hourly snapshots never crowd out production's, and schema-only snapshots (`snapshot
create --schema-only`) are a group of their own: one taken after the nightly backup never makes
that day's full snapshot forgettable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from lockstep.config.model import RetentionConfig
from lockstep.pipeline.snapshot import (
    DEFAULT_ENVIRONMENT,
    DEPLOY_TAG_PREFIX,
    ENVIRONMENT_TAG_PREFIX,
    KIND_TAG_PREFIX,
    is_of_project,
    is_schema_only,
    tag_value,
)
from lockstep.repository.retention import (
    UNLIMITED,
    Duration,
    RetentionPolicy,
    WallClock,
    apply_policy,
    calendar_bucket,
    newest_first,
)
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tag_lists import parse_tag_list

PRE_DEPLOY_KIND = "pre-deploy"
PRE_RESTORE_KIND = "pre-restore"  # one per restore (`snapshot restore`, a data rollback)
# Kinds kept by a rule of their own and never by the calendar rules; every other kind is regular.
SPECIAL_KINDS = (PRE_DEPLOY_KIND, PRE_RESTORE_KIND)
# A deploy that snapshots several times tags them all `deploy:<id>` (DEPLOY_TAG_PREFIX); they
# count as one deploy.
REMOVE_REASON = "no rule keeps it"
# The calendar rules of [retention], in restic's order of reasons, with the period each counts.
_CALENDAR_PERIODS = (("hourly", "hour"), ("daily", "day"), ("weekly", "week"), ("monthly", "month"), ("yearly", "year"))
# restic's --keep-within-<unit> rules, in its order of reasons.
_WINDOW_RULES = ("within_hourly", "within_daily", "within_weekly", "within_monthly", "within_yearly")


@dataclass(frozen=True)
class SnapshotVerdict:
    """One snapshot's fate and why (restic's "keep" reasons; removed ones get REMOVE_REASON)."""

    snapshot: Snapshot
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GroupPlan:
    """The verdicts of one environment and project path, newest first."""

    environment: str
    paths: tuple[str, ...]
    policy: str
    verdicts: list[SnapshotVerdict]

    @property
    def keep(self) -> list[Snapshot]:
        return [verdict.snapshot for verdict in self.verdicts if verdict.keep]

    @property
    def remove(self) -> list[Snapshot]:
        return [verdict.snapshot for verdict in self.verdicts if not verdict.keep]


@dataclass(frozen=True)
class ForgetPlan:
    """Every group's verdicts; `remove` is what forget deletes."""

    groups: list[GroupPlan] = field(default_factory=list)

    @property
    def keep(self) -> list[Snapshot]:
        return [snapshot for group in self.groups for snapshot in group.keep]

    @property
    def remove(self) -> list[Snapshot]:
        return [snapshot for group in self.groups for snapshot in group.remove]


def _duration(text: str | None) -> Duration:
    return Duration() if text is None else Duration.parse(text)


def restic_policy(retention: RetentionConfig) -> RetentionPolicy:
    """The restic rules of the retention config, as `lockstep repo forget`'s flags would give them."""
    return RetentionPolicy(
        last=retention.keep_last,
        hourly=retention.keep_hourly,
        daily=retention.keep_daily,
        weekly=retention.keep_weekly,
        monthly=retention.keep_monthly,
        yearly=retention.keep_yearly,
        within=_duration(retention.keep_within),
        within_hourly=_duration(retention.keep_within_hourly),
        within_daily=_duration(retention.keep_within_daily),
        within_weekly=_duration(retention.keep_within_weekly),
        within_monthly=_duration(retention.keep_within_monthly),
        within_yearly=_duration(retention.keep_within_yearly),
        keep_tags=tuple(parse_tag_list(entry) for entry in retention.keep_tags),
    )


def is_empty(retention: RetentionConfig) -> bool:
    """No rule at all: forgetting with it would delete everything, so callers refuse it."""
    return restic_policy(retention).is_empty and retention.keep_pre_deploy == 0 and retention.keep_pre_restore == 0


def describe(retention: RetentionConfig) -> str:
    """One line: restic's wording for the rules that count the manual and scheduled snapshots (a
    period without one is filled by a special snapshot, which its reasons say), plus keep_tags
    (any snapshot) and the pre-deploy and pre-restore rules."""
    policy = restic_policy(retention)
    regular = replace(policy, keep_tags=())
    extras = []
    if policy.keep_tags:
        extras.append(RetentionPolicy(keep_tags=policy.keep_tags).describe().removeprefix("keep "))
    if retention.keep_pre_deploy == UNLIMITED:
        extras.append("every pre-deploy snapshot")
    elif retention.keep_pre_deploy > 0:
        extras.append(f"the pre-deploy snapshots of {_the_last(retention.keep_pre_deploy, 'deploy')}")
    if retention.keep_pre_restore == UNLIMITED:
        extras.append("every pre-restore snapshot")
    elif retention.keep_pre_restore > 0:
        extras.append(f"the pre-restore snapshots of {_the_last(retention.keep_pre_restore, 'restore')}")
    if regular.is_empty:
        return f"keep only {_and(extras)}" if extras else "keep"
    text = f"{regular.describe()} (manual and scheduled)"
    return f"{text}, plus {_and(extras)}" if extras else text


def _and(items: list[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _the_last(count: int, noun: str) -> str:
    """`the last 10 deploys`, `the last deploy`."""
    return f"the last {noun}" if count == 1 else f"the last {count} {noun}s"


def snapshot_environment(snapshot: Snapshot) -> str:
    return tag_value(snapshot, ENVIRONMENT_TAG_PREFIX) or DEFAULT_ENVIRONMENT


def snapshot_kind(snapshot: Snapshot) -> str:
    return tag_value(snapshot, KIND_TAG_PREFIX) or "manual"


def is_regular(snapshot: Snapshot) -> bool:
    """Counted by the calendar rules: a manual or scheduled snapshot (any kind but SPECIAL_KINDS)."""
    return snapshot_kind(snapshot) not in SPECIAL_KINDS


def plan_forget(
    snapshots: Iterable[Snapshot],
    retention: RetentionConfig,
    now: datetime,
    environments: tuple[str, ...] | None = None,
    retention_by_environment: Mapping[str, RetentionConfig] | None = None,
    *,
    project: str,
) -> ForgetPlan:
    """Decide, per environment and project path, which lockstep snapshots of `project` to keep.

    `environments` limits the plan to those environments' groups (each planned on its own);
    `retention_by_environment` overrides `retention` for the environments it names (their [environments.X.retention]).
    Nothing is deleted here. A group the rules would empty is left whole (its snapshots are
    kept with the reason "the rules keep none of this group"), never deleted.
    """
    now_ns = int(now.timestamp() * 1_000_000_000)
    groups: dict[tuple[str, tuple[str, ...], bool], list[Snapshot]] = {}
    for snapshot in snapshots:
        if not is_of_project(snapshot, project):
            continue
        name = snapshot_environment(snapshot)
        if environments is not None and name not in environments:
            continue
        # A schema-only snapshot (its paths end in /schema-only already) is in a group of its
        # own even if its paths were changed: it must never take the place of a full one.
        groups.setdefault((name, tuple(sorted(snapshot.paths)), is_schema_only(snapshot)), []).append(snapshot)
    plans = []
    for (name, paths, _), members in sorted(groups.items()):
        chosen = (retention_by_environment or {}).get(name, retention)
        plans.append(GroupPlan(name, paths, describe(chosen), _plan_group(members, chosen, now_ns)))
    return ForgetPlan(plans)


def _plan_group(members: list[Snapshot], retention: RetentionConfig, now_ns: int) -> list[SnapshotVerdict]:
    ordered = newest_first(members)
    reasons: dict[str, list[str]] = {snapshot.id: [] for snapshot in ordered}
    for snapshot, matches in _restic_reasons(ordered, restic_policy(retention), now_ns):
        reasons[snapshot.id].extend(matches)
    for snapshot in _last_pre_deploy(ordered, retention.keep_pre_deploy):
        reasons[snapshot.id].append("pre-deploy snapshot")
    for snapshot in _last_pre_restore(ordered, retention.keep_pre_restore):
        reasons[snapshot.id].append("pre-restore snapshot")
    if not any(reasons.values()):
        return [SnapshotVerdict(snapshot, True, ("the rules keep none of this group",)) for snapshot in ordered]
    return [
        SnapshotVerdict(
            snapshot, bool(reasons[snapshot.id]), tuple(reasons[snapshot.id]) or (_removal(snapshot, retention),)
        )
        for snapshot in ordered
    ]


def _restic_reasons(
    ordered: list[Snapshot], policy: RetentionPolicy, now_ns: int
) -> list[tuple[Snapshot, tuple[str, ...]]]:
    """What restic's rules keep, one rule (or kind of rule) at a time in the order of restic's
    reasons: keep_tags over every snapshot of the group; keep_within and keep_last over the
    regular snapshots (the window from the newest of them); each calendar rule over its own view
    (_calendar_reasons); the keep_within_<unit> rules over the regular snapshots. The rules are
    independent in restic's ApplyPolicy, so one at a time keeps exactly what one pass would."""
    regular = [snapshot for snapshot in ordered if is_regular(snapshot)]
    found: list[tuple[Snapshot, tuple[str, ...]]] = []

    def run(view: list[Snapshot], rules: RetentionPolicy) -> None:
        if not rules.is_empty:
            found.extend((kept.snapshot, kept.matches) for kept in apply_policy(view, rules, now_ns).reasons)

    run(ordered, RetentionPolicy(keep_tags=policy.keep_tags))
    run(regular, RetentionPolicy(within=policy.within))
    run(regular, RetentionPolicy(last=policy.last))
    found.extend(_calendar_reasons(regular, [item for item in ordered if not is_regular(item)], policy, now_ns))
    run(regular, RetentionPolicy(**{rule: getattr(policy, rule) for rule in _WINDOW_RULES}))
    return found


def _calendar_reasons(
    regular: list[Snapshot], special: list[Snapshot], policy: RetentionPolicy, now_ns: int
) -> list[tuple[Snapshot, tuple[str, ...]]]:
    """What the calendar rules keep, each rule in turn (hourly, daily, weekly, monthly, yearly:
    the order of restic's reasons) over its own view of the group: every regular snapshot, plus
    the newest special snapshot of each of its periods that has no regular one. restic's counting
    over that view is unchanged: a period that has a regular snapshot keeps it whatever special
    snapshots came later, and a filled period counts as one of the rule's N. The rules are
    independent in restic's ApplyPolicy, so one rule at a time keeps exactly what one pass with
    all of them would over the regular snapshots alone."""
    found: list[tuple[Snapshot, tuple[str, ...]]] = []
    for rule, period in _CALENDAR_PERIODS:
        count = getattr(policy, rule)
        if count == 0:
            continue
        view = regular + _fillers(regular, special, rule)
        for kept in apply_policy(view, replace(RetentionPolicy(), **{rule: count}), now_ns).reasons:
            matches = kept.matches
            if not is_regular(kept.snapshot):
                # Alone in its period in the view, so never an "oldest ..." of a shared period.
                matches = tuple(f"{match} (no regular snapshot that {period})" for match in matches)
            found.append((kept.snapshot, matches))
    return found


def _fillers(regular: list[Snapshot], special: list[Snapshot], rule: str) -> list[Snapshot]:
    """The newest special snapshot of each `rule` period (hour ... year) without a regular
    snapshot, from newest-first input."""
    taken = {calendar_bucket(rule, WallClock.of(snapshot.time)) for snapshot in regular}
    chosen = []
    for snapshot in special:
        bucket = calendar_bucket(rule, WallClock.of(snapshot.time))
        if bucket not in taken:
            taken.add(bucket)
            chosen.append(snapshot)
    return chosen


def _removal(snapshot: Snapshot, retention: RetentionConfig) -> str:
    """Why a snapshot no rule keeps goes: a special one is past its own rule (the calendar rules
    keep one only for a period without a regular snapshot, and then only the period's newest)."""
    kind = snapshot_kind(snapshot)
    if kind == PRE_DEPLOY_KIND:
        count = retention.keep_pre_deploy
        return "keep_pre_deploy is 0" if count == 0 else f"not of {_the_last(count, 'deploy')}"
    if kind == PRE_RESTORE_KIND:
        count = retention.keep_pre_restore
        return "keep_pre_restore is 0" if count == 0 else f"not of {_the_last(count, 'restore')}"
    return REMOVE_REASON


def _last_pre_deploy(ordered: list[Snapshot], count: int) -> list[Snapshot]:
    """The pre-deploy snapshots of the newest `count` deploys (-1: all), from newest-first input."""
    if count == 0:
        return []
    deploys: list[str] = []
    kept = []
    for snapshot in ordered:
        if snapshot_kind(snapshot) != PRE_DEPLOY_KIND:
            continue
        deploy = tag_value(snapshot, DEPLOY_TAG_PREFIX) or snapshot.id
        if deploy not in deploys:
            if count != UNLIMITED and len(deploys) >= count:
                continue
            deploys.append(deploy)
        kept.append(snapshot)
    return kept


def _last_pre_restore(ordered: list[Snapshot], count: int) -> list[Snapshot]:
    """The pre-restore snapshots of the newest `count` restores (-1: all), from newest-first input."""
    if count == 0:
        return []
    taken = [snapshot for snapshot in ordered if snapshot_kind(snapshot) == PRE_RESTORE_KIND]
    return taken if count == UNLIMITED else taken[:count]
