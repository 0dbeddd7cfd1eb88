"""`lockstep snapshot list`: the coordinated snapshots in the repository, with their manifests."""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.pipeline.manifest import Manifest
from lockstep.pipeline.retention_policy import snapshot_environment
from lockstep.pipeline.snapshot import is_lockstep_snapshot, load_manifest, snapshot_project
from lockstep.pipeline.verification_records import VerificationResult, latest_results
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot


@dataclass(frozen=True)
class ListedSnapshot:
    snapshot: Snapshot
    manifest: Manifest
    verification: VerificationResult | None = None  # the newest `snapshot verify` result, if any


def lockstep_snapshots(
    repository: Repository, project: str | None, environments: tuple[str, ...] | None = None
) -> list[Snapshot]:
    """Snapshots tagged `lockstep` (oldest first) of `project` (every project's when None: only to
    say whose a snapshot is), of these environments when given; others are skipped, and so are
    unreadable snapshot files (with a warning): this is for reading only."""
    return [
        snapshot
        for snapshot in repository.list_snapshots(skip_unreadable=True)
        if is_lockstep_snapshot(snapshot)
        and (project is None or snapshot_project(snapshot) == project)
        and (environments is None or snapshot_environment(snapshot) in environments)
    ]


def list_snapshots(
    access: RepositoryAccess, project: str, environments: tuple[str, ...] | None = None
) -> list[ListedSnapshot]:
    """Every coordinated snapshot of `project` with its manifest and last verification, oldest
    first; with `environments` (reference_environments: what `--env` covers), only theirs."""
    with access.session(lock=False) as repository:
        snapshots = lockstep_snapshots(repository, project, environments)
        verifications = latest_results(repository, [snapshot.id for snapshot in snapshots])
        return [
            ListedSnapshot(snapshot, load_manifest(repository, snapshot), verifications.get(snapshot.id))
            for snapshot in snapshots
        ]


def other_projects(access: RepositoryAccess, project: str) -> list[str]:
    """The names of the other projects whose lockstep snapshots share the repository: what an
    empty `snapshot list` names, in case the snapshots sought were taken under another name
    (another directory, before `project` was set)."""
    with access.session(lock=False, load_index=False) as repository:
        names = {snapshot_project(snapshot) for snapshot in lockstep_snapshots(repository, None)}
    return sorted(name for name in names if name is not None and name != project)
