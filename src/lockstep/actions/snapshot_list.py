"""`lockstep snapshot list`: the coordinated snapshots in the repository, with their manifests."""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.pipeline.manifest import Manifest
from lockstep.pipeline.retention_policy import snapshot_environment
from lockstep.pipeline.snapshot import is_lockstep_snapshot, load_manifest
from lockstep.pipeline.verification_records import VerificationResult, latest_results
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot


@dataclass(frozen=True)
class ListedSnapshot:
    snapshot: Snapshot
    manifest: Manifest
    verification: VerificationResult | None = None  # the newest `snapshot verify` result, if any


def lockstep_snapshots(repository: Repository, environments: tuple[str, ...] | None = None) -> list[Snapshot]:
    """Snapshots tagged `lockstep` (oldest first), of these environments when given; others are
    skipped, and so are unreadable snapshot files (with a warning): this is for reading only."""
    return [
        snapshot
        for snapshot in repository.list_snapshots(skip_unreadable=True)
        if is_lockstep_snapshot(snapshot) and (environments is None or snapshot_environment(snapshot) in environments)
    ]


def list_snapshots(access: RepositoryAccess, environments: tuple[str, ...] | None = None) -> list[ListedSnapshot]:
    """Every coordinated snapshot with its manifest and last verification, oldest first; with
    `environments` (reference_environments: what `--env` covers), only theirs."""
    with access.session(lock=False) as repository:
        snapshots = lockstep_snapshots(repository, environments)
        verifications = latest_results(repository, [snapshot.id for snapshot in snapshots])
        return [
            ListedSnapshot(snapshot, load_manifest(repository, snapshot), verifications.get(snapshot.id))
            for snapshot in snapshots
        ]
