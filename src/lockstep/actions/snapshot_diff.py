"""`lockstep snapshot diff`: what changed in the live databases since a snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lockstep.actions.snapshot_create import chosen_environment, load_project
from lockstep.actions.snapshot_show import find_snapshot, reference_environments
from lockstep.errors import UsageError
from lockstep.pipeline.diff import DatabaseDiff, diff_database
from lockstep.pipeline.restore import ServerAccess, database_record
from lockstep.pipeline.snapshot import database_password, load_manifest
from lockstep.repository.snapshot import Snapshot


@dataclass(frozen=True)
class SnapshotDiff:
    snapshot: Snapshot
    databases: list[DatabaseDiff]
    skipped: list[str] = field(default_factory=list)  # in the snapshot, but no longer in lockstep.toml
    # In lockstep.toml but not in the snapshot (added since, or a pre-restore snapshot, which holds
    # only the databases its restore replaced): nothing to compare them with, which must be said,
    # or their absence from the output reads as "unchanged".
    not_in_snapshot: list[str] = field(default_factory=list)


def diff(
    start: Path,
    reference: str,
    database: str | None = None,
    config_path: Path | None = None,
    environment: str | None = None,
) -> SnapshotDiff:
    """Compare every database of the snapshot (or only `database`) with its live counterpart."""
    environment = chosen_environment(start, config_path, environment)
    project = load_project(start, config_path, environment)
    configured = project.config.databases
    if database is not None and database not in configured:
        raise UsageError(f"there is no database {database!r} in lockstep.toml", "name one of its [databases.NAME]")
    with project.access.session(exclusive=False) as repository:
        among = reference_environments(start, config_path, environment)
        snapshot = find_snapshot(repository, reference, among, project.config.default_environment, project=project.name)
        manifest = load_manifest(repository, snapshot)
        not_in_snapshot: list[str] = []
        if database is not None:
            database_record(manifest, snapshot, database)
            names = [database]
        else:
            names = list(manifest.databases)
            not_in_snapshot = [name for name in configured if name not in manifest.databases]
        diffs: list[DatabaseDiff] = []
        skipped: list[str] = []
        for name in names:
            if name not in configured:
                skipped.append(name)
                continue
            live = ServerAccess(configured[name].url, database_password(name, configured[name]))
            diffs.append(diff_database(repository, snapshot, manifest, name, live))
        return SnapshotDiff(snapshot=snapshot, databases=diffs, skipped=skipped, not_in_snapshot=not_in_snapshot)
