"""`lockstep snapshot verify`: check one coordinated snapshot and record the result."""

from __future__ import annotations

import time
from pathlib import Path

from lockstep.actions.snapshot_create import chosen_environment, load_project
from lockstep.actions.snapshot_show import find_snapshot, reference_environments
from lockstep.actions.step_reports import (
    SilentReporter,
    bind_operation,
    failure_reason,
    report_verification,
    teach_secrets,
)
from lockstep.config import ProjectConfig
from lockstep.pipeline.restore import ServerAccess
from lockstep.pipeline.snapshot import database_password, environment_name
from lockstep.pipeline.steps import Reporter
from lockstep.pipeline.verification_records import VerificationResult
from lockstep.pipeline.verify import ProgressCallback, VerifyLevel, verify_snapshot
from lockstep.wording import counted

FINDINGS_IN_REASON = 3


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
    reporter: Reporter | None = None,
) -> VerificationResult:
    """Verify the snapshot `reference` names (under a shared lock, so prune cannot remove its
    packs meanwhile); the result is recorded in the repository and returned, ok or not.

    The verification and each database's test-restore go to `reporter` as step outcomes; a
    verification that finds problems is a failed step (the result is still returned)."""

    reporter = reporter or SilentReporter()
    environment = chosen_environment(start, config_path, environment)
    project = load_project(start, config_path, environment)
    teach_secrets(reporter, project)
    bind_operation(reporter, operation="snapshot-verify", env=environment_name(environment))
    servers = database_servers(project.config)
    with project.access.session(exclusive=False) as repository:
        among = reference_environments(start, config_path, environment)
        snapshot = find_snapshot(repository, reference, among, project.config.default_environment, project=project.name)
        bind_operation(reporter, snapshot_id=snapshot.id)
        reporter.step_started("verify", f"snapshot {snapshot.short_id}, level {level}")
        started = time.monotonic()
        try:
            result = verify_snapshot(repository, snapshot, level, servers, progress=progress)
        except BaseException as error:
            reporter.step_failed("verify", time.monotonic() - started, failure_reason(error))
            raise
    report_verification(reporter, result)
    if result.ok:
        reporter.step_finished("verify", result.seconds, f"{result.bytes_read} bytes read")
    else:
        shown = "; ".join(f"{finding.subject}: {finding.message}" for finding in result.findings[:FINDINGS_IN_REASON])
        reporter.step_failed("verify", result.seconds, f"{counted(len(result.findings), 'problem')}: {shown}")
    return result
