"""`lockstep repo forget`: delete snapshots by a retention policy (or by ID), then maybe prune."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import UsageError
from lockstep.repository.pruner import ProgressCallback, PruneOptions, PruneReport, prune
from lockstep.repository.repository import Repository
from lockstep.repository.retention import (
    GroupBy,
    GroupKey,
    KeepReason,
    RetentionPolicy,
    SnapshotFilter,
    apply_policy,
    group_snapshots,
    newest_first,
)
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.base import FileType


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget: a policy applied per group, or explicit snapshot IDs; then maybe prune."""

    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    snapshot_filter: SnapshotFilter = field(default_factory=SnapshotFilter)
    group_by: GroupBy = field(default_factory=GroupBy)
    snapshot_ids: tuple[str, ...] = ()
    dry_run: bool = False
    prune: PruneOptions | None = None  # None: do not prune afterwards


@dataclass(frozen=True)
class ForgetGroup:
    """One group's verdict: keep and remove newest first, reasons in the order of keep."""

    key: GroupKey
    keep: list[Snapshot]
    remove: list[Snapshot]
    reasons: list[KeepReason]


@dataclass(frozen=True)
class ForgetResult:
    """What forget removed (or would remove), group by group, and the prune that followed."""

    policy: str  # restic's one-line description, or "" for explicit IDs
    groups: list[ForgetGroup]
    removed: list[Snapshot]
    dry_run: bool
    prune: PruneReport | None


def forget(
    access: RepositoryAccess,
    request: ForgetRequest,
    now_ns: int | None = None,
    progress: ProgressCallback | None = None,
) -> ForgetResult:
    """Decide for every group first, then delete: a refusal never leaves half a forget behind.

    Runs under an exclusive lock; with `request.prune`, prune runs under the same lock."""
    if request.snapshot_ids and not request.policy.is_empty:
        raise UsageError("give snapshot IDs or a --keep-* policy, not both")
    if not request.snapshot_ids and request.policy.is_empty:
        raise UsageError(
            "no policy was specified, no snapshots will be removed",
            "give at least one --keep-* option (for example --keep-last 7), or the IDs of the snapshots to forget",
        )
    with access.session(exclusive=True, load_index=False) as repository:
        snapshots = repository.list_snapshots()
        if request.snapshot_ids:
            groups = [_explicit_group(repository, snapshots, request.snapshot_ids)]
            description = ""
        else:
            now = time.time_ns() if now_ns is None else now_ns
            groups = _groups_by_policy(snapshots, request, now)
            description = request.policy.describe()
        removed = [snapshot for group in groups for snapshot in group.remove]
        if not request.dry_run:
            for snapshot in removed:
                repository.backend.remove(FileType.SNAPSHOT, snapshot.id)
        report = None
        if request.prune is not None and removed:
            options = replace(request.prune, dry_run=request.dry_run)
            report = prune(repository, options, [snapshot.id for snapshot in removed], progress)
    return ForgetResult(description, groups, removed, request.dry_run, report)


def _groups_by_policy(snapshots: list[Snapshot], request: ForgetRequest, now_ns: int) -> list[ForgetGroup]:
    considered = [snapshot for snapshot in snapshots if request.snapshot_filter.matches(snapshot)]
    groups = []
    for key, members in group_snapshots(considered, request.group_by).items():
        result = apply_policy(members, request.policy, now_ns)
        if not result.keep:
            raise UsageError(
                f"refusing to delete the last snapshot of the group {key.describe()}: the policy keeps none of them",
                "add a --keep-* rule that keeps at least one snapshot of every group, or narrow with --host/--tag",
            )
        groups.append(ForgetGroup(key, result.keep, result.remove, result.reasons))
    return groups


def _explicit_group(repository: Repository, snapshots: list[Snapshot], references: tuple[str, ...]) -> ForgetGroup:
    found = {repository.find_snapshot(reference, snapshots).id: None for reference in references}
    chosen = newest_first(snapshot for snapshot in snapshots if snapshot.id in found)
    return ForgetGroup(GroupKey(None, None, None), [], chosen, [])
