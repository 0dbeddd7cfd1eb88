"""`lockstep snapshot forget`: apply the config's retention to the coordinated snapshots, maybe prune."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.snapshot_create import chosen_environment, load_project
from lockstep.actions.snapshot_show import reference_environments
from lockstep.actions.step_reports import SilentReporter, report_detail, reported_step, teach_secrets
from lockstep.config.model import ProjectConfig, RetentionConfig
from lockstep.errors import UsageError
from lockstep.pipeline.retention_policy import ForgetPlan, is_empty, plan_forget
from lockstep.pipeline.snapshot import environment_name
from lockstep.pipeline.steps import Reporter, bind_context
from lockstep.repository.pruner import ProgressCallback, PruneOptions, PruneReport, prune
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.base import FileType
from lockstep.wording import counted


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
    project: str,
    environments: tuple[str, ...] | None = None,
    dry_run: bool = False,
    run_prune: bool = False,
    by_environment: dict[str, RetentionConfig] | None = None,
    now: datetime | None = None,
    progress: ProgressCallback | None = None,
    reporter: Reporter | None = None,
) -> SnapshotForgetResult:
    """Plan first, then delete, under one exclusive lock; with `run_prune`, prune under it too.

    Only `project`'s snapshots are planned (never another project's sharing the repository).
    `environments` None plans every environment's snapshots; otherwise only theirs. The steps
    (plan, forget, prune) go to `reporter` with their durations."""
    reporter = reporter or SilentReporter()
    if is_empty(retention) and not any(not is_empty(chosen) for chosen in (by_environment or {}).values()):
        raise UsageError(
            "the retention keeps no snapshot: every keep_* in [retention] is 0 or unset",
            "set keep_daily, keep_weekly, keep_monthly, keep_last, keep_within, keep_pre_deploy or another"
            " keep_* rule in lockstep.toml",
        )
    moment = now or datetime.now(UTC)
    with access.session(exclusive=True, load_index=False) as repository:
        with reported_step(reporter, "plan", "retention per environment") as step:
            plan = plan_forget(
                repository.list_snapshots(), retention, moment, environments, by_environment, project=project
            )
            removed = plan.remove
            step.detail = f"keep {sum(len(group.keep) for group in plan.groups)}, remove {len(removed)}"
        for group in plan.groups:
            for verdict in group.verdicts:
                action = "keep" if verdict.keep else "remove"
                reasons = f" ({', '.join(verdict.reasons)})" if verdict.reasons else ""
                report_detail(reporter, f"{group.environment}: {action} {verdict.snapshot.short_id}{reasons}")
        if not dry_run:
            with reported_step(reporter, "forget", counted(len(removed), "snapshot")) as step:
                for snapshot in removed:
                    repository.backend.remove(FileType.SNAPSHOT, snapshot.id)
                step.detail = f"{counted(len(removed), 'snapshot')} removed"
        report = None
        if run_prune and removed:
            with reported_step(reporter, "prune", "dry run" if dry_run else "free the space"):
                report = prune(
                    repository,
                    PruneOptions(dry_run=dry_run),
                    [snapshot.id for snapshot in removed],
                    progress or reporter.info,
                )
    return SnapshotForgetResult(plan, removed, dry_run, report)


def forget(
    start: Path,
    config_path: Path | None = None,
    environment: str | None = None,
    dry_run: bool = False,
    run_prune: bool = False,
    progress: ProgressCallback | None = None,
    reporter: Reporter | None = None,
) -> SnapshotForgetResult:
    """Load the project and forget by its retention: one environment with `environment`, else all
    (each configured environment by its own retention, the rest by the top-level one). The
    snapshots labelled default (the top-level config's) count as the default environment's when
    it has no table of its own (reference_environments), as the agent's scheduled retention counts them. Without
    --env the repository is the one `lockstep backup` without --env writes to (chosen_environment);
    the retentions still come from the whole config."""
    reporter = reporter or SilentReporter()
    project = load_project(start, config_path, environment)
    if environment is None:
        access = load_project(start, config_path, chosen_environment(start, config_path, None)).access
    else:
        access = project.access
    teach_secrets(reporter, project)
    # env is null in the events when every environment's snapshots are considered.
    bind_context(
        reporter, operation="snapshot-forget", env=None if environment is None else environment_name(environment)
    )
    config = project.config
    by_environment = None if environment is not None else retention_by_environment(config)
    return forget_snapshots(
        access,
        config.retention,
        project.name,
        environments=None if environment is None else reference_environments(start, config_path, environment),
        dry_run=dry_run,
        run_prune=run_prune,
        by_environment=by_environment,
        progress=progress,
        reporter=reporter,
    )
