"""`lockstep snapshot verify`: check one coordinated snapshot and record the result."""

from __future__ import annotations

from pathlib import Path

from lockstep.actions.snapshot_create import load_project
from lockstep.actions.snapshot_list import lockstep_snapshots
from lockstep.actions.snapshot_show import resolve_reference
from lockstep.config import ProjectConfig
from lockstep.pipeline.restore import ServerAccess
from lockstep.pipeline.snapshot import database_password
from lockstep.pipeline.verification_records import VerificationResult
from lockstep.pipeline.verify import ProgressCallback, VerifyLevel, verify_snapshot


def database_servers(config: ProjectConfig) -> dict[str, ServerAccess]:
    """Each configured database's URL and password: where its scratch databases are made."""
    return {
        name: ServerAccess(database.url, database_password(name, database))
        for name, database in config.databases.items()
    }


def verify(
    start: Path,
    reference: str,
    level: VerifyLevel,
    config_path: Path | None = None,
    environment: str | None = None,
    progress: ProgressCallback | None = None,
) -> VerificationResult:
    """Verify the snapshot `reference` names (under a shared lock, so prune cannot remove its
    packs meanwhile); the result is recorded in the repository and returned, ok or not."""
    project = load_project(start, config_path, environment)
    servers = database_servers(project.config)
    with project.access.session(exclusive=False) as repository:
        snapshot = resolve_reference(lockstep_snapshots(repository), reference)
        return verify_snapshot(repository, snapshot, level, servers, progress=progress)
