"""`lockstep snapshot forget`: apply the config's retention to the coordinated snapshots, maybe prune."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.snapshot_create import load_project
from lockstep.config.model import ProjectConfig, RetentionConfig
from lockstep.errors import UsageError
from lockstep.pipeline.retention_policy import ForgetPlan, is_empty, plan_forget
from lockstep.pipeline.snapshot import environment_name
from lockstep.repository.pruner import ProgressCallback, PruneOptions, PruneReport, prune
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.base import FileType


@dataclass(frozen=True)
class SnapshotForgetResult:
    """The plan, what was removed (or would be, with dry_run), and the prune that followed."""

    plan: ForgetPlan
    removed: list[Snapshot]
    dry_run: bool
    prune: PruneReport | None


def retention_by_environment(config: ProjectConfig) -> dict[str, RetentionConfig]:
    """Each configured environment's retention, with its [environments.X.retention] overrides."""
    return {name: config.resolve(name).retention for name in config.environments}


def forget_snapshots(
    access: RepositoryAccess,
    retention: RetentionConfig,
    environment: str | None = None,
    dry_run: bool = False,
    run_prune: bool = False,
    by_environment: dict[str, RetentionConfig] | None = None,
    now: datetime | None = None,
    progress: ProgressCallback | None = None,
) -> SnapshotForgetResult:
    """Plan first, then delete, under one exclusive lock; with `run_prune`, prune under it too.

    `environment` None plans every environment's snapshots; otherwise only that one's."""
    if is_empty(retention) and not any(not is_empty(chosen) for chosen in (by_environment or {}).values()):
        raise UsageError(
            "the retention keeps no snapshot: every keep_* in [retention] is 0",
            "set keep_daily, keep_weekly, keep_monthly or keep_pre_deploy in lockstep.toml",
        )
    moment = now or datetime.now(UTC)
    with access.session(exclusive=True, load_index=False) as repository:
        plan = plan_forget(repository.list_snapshots(), retention, moment, environment, by_environment)
        removed = plan.remove
        if not dry_run:
            for snapshot in removed:
                repository.backend.remove(FileType.SNAPSHOT, snapshot.id)
        report = None
        if run_prune and removed:
            report = prune(repository, PruneOptions(dry_run=dry_run), [snapshot.id for snapshot in removed], progress)
    return SnapshotForgetResult(plan, removed, dry_run, report)


def forget(
    start: Path,
    config_path: Path | None = None,
    environment: str | None = None,
    dry_run: bool = False,
    run_prune: bool = False,
    progress: ProgressCallback | None = None,
) -> SnapshotForgetResult:
    """Load the project and forget by its retention: one environment with `environment`, else all
    (each configured environment by its own retention, the rest by the top-level one)."""
    project = load_project(start, config_path, environment)
    config = project.config
    by_environment = None if environment is not None else retention_by_environment(config)
    return forget_snapshots(
        project.access,
        config.retention,
        environment=None if environment is None else environment_name(environment),
        dry_run=dry_run,
        run_prune=run_prune,
        by_environment=by_environment,
        progress=progress,
    )
