"""`lockstep backup`: the cron-friendly one-shot around a scheduled snapshot.

preflight → ping /start → snapshot (kind `scheduled`) → retention → verification → each of
[repository.copies] (copy, then its retention) → ping success.
Any failure pings /fail with a one-line reason and raises the documented error; pings themselves
never decide the outcome. A copy that fails fails the backup, but the snapshot in the repository
stays: it was written and verified before any copy began. The snapshot is written under a shared
lock, retention takes an exclusive one afterwards, so a concurrent `snapshot create` is only ever
blocked for the forget.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from lockstep.actions.repo.copy import DestinationLocked, SourceLocked
from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.repository_copies import CopyOutcome, copy_access, copy_error, copy_to
from lockstep.actions.snapshot_create import ProjectContext, chosen_environment, load_project
from lockstep.actions.snapshot_forget import forget_snapshots
from lockstep.actions.snapshot_verify import database_servers
from lockstep.actions.step_reports import (
    SilentReporter,
    bind_operation,
    report_detail,
    report_manifest,
    report_verification,
    reported_step,
    teach_secrets,
)
from lockstep.config.model import ProjectConfig, VerifyLevel
from lockstep.errors import IntegrityError, LockstepError, RepositoryLocked
from lockstep.fault_injection import wait_point
from lockstep.notify.dispatcher import Notifier
from lockstep.notify.events import BACKUP_FAILED, SNAPSHOT_CREATED, Event
from lockstep.pipeline.healthchecks_ping import HealthchecksPinger
from lockstep.pipeline.manifest import Manifest
from lockstep.pipeline.preflight import CheckResult, raise_for_failures, run_preflight
from lockstep.pipeline.project_secrets import project_secrets, teach_project_secrets
from lockstep.pipeline.retention_policy import is_empty
from lockstep.pipeline.snapshot import (
    DEFAULT_ENVIRONMENT,
    SnapshotRequest,
    create_snapshot,
    environment_name,
    prepare_code,
    stored_apart,
)
from lockstep.pipeline.steps import Reporter
from lockstep.pipeline.verify import verify_snapshot
from lockstep.redaction import MINIMUM_SECRET_LENGTH, is_secret_name
from lockstep.repository.snapshot import Snapshot
from lockstep.wording import counted

SCHEDULED_KIND = "scheduled"
MAX_FINDINGS_SHOWN = 3

Warn = Callable[[str], None]


@dataclass(frozen=True)
class BackupResult:
    """What one backup did; `summary_line` is what cron mails and the success ping carry."""

    snapshot: Snapshot
    manifest: Manifest
    environment: str
    stored_bytes: int
    added_bytes: int
    seconds: float
    verify_level: VerifyLevel
    preflight: list[CheckResult]
    forgotten: list[Snapshot] = field(default_factory=list)
    pings_sent: list[str] = field(default_factory=list)
    copies: list[CopyOutcome] = field(default_factory=list)  # [repository.copies], in config order
    # Every warning the backup gave (the manifest's, failed pings and channels, retention put off),
    # for --json, whose reader does not see stderr.
    warnings: list[str] = field(default_factory=list)


def _secrets(config: ProjectConfig) -> list[str]:
    """Every secret lockstep knows of here, to blank out of what goes to the ping URL."""
    found = [os.environ.get("LOCKSTEP_PASSWORD", "")]
    found += [value for name, value in os.environ.items() if is_secret_name(name)]
    found += project_secrets(config)
    return [secret for secret in found if len(secret) >= MINIMUM_SECRET_LENGTH]


def run_backup(
    start: Path,
    config_path: Path | None = None,
    environment: str | None = None,
    message: str | None = None,
    warn: Warn | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    reporter: Reporter | None = None,
    notify: bool = False,
) -> BackupResult:
    """Run the whole backup; raises the failing step's error after pinging /fail.

    Each step (preflight, snapshot, retention, verify) is reported to `reporter` with its
    duration; warnings go to `warn`, or to the reporter when no `warn` is given. With `notify`
    (the CLI; the agent's scheduler sends its own) the [notifications] channels hear
    snapshot.created or backup.failed; a channel that fails only warns."""
    started = time.monotonic()
    reporter = reporter or SilentReporter()
    given_warn = warn or reporter.warn
    warnings: list[str] = []

    def keep_and_warn(line: str) -> None:
        warnings.append(line)
        given_warn(line)

    environment = chosen_environment(start, config_path, environment)
    project = load_project(start, config_path, environment)
    config = project.config
    teach_secrets(reporter, project)
    bind_operation(reporter, operation="backup", env=environment_name(environment))
    pinger = HealthchecksPinger(config.backup.healthchecks_url, keep_and_warn, _secrets(config))
    notifier = _notifier(project.directory, config, environment_name(environment), keep_and_warn) if notify else None
    try:
        result = _run(project, environment, message, keep_and_warn, now, reporter, pinger, notifier, started)
        return replace(result, warnings=list(warnings))
    finally:
        if notifier is not None:
            notifier.close()


def _notifier(directory: Path, config: ProjectConfig, environment: str, warn: Warn) -> Notifier:
    return Notifier(
        config.notifications,
        directory,
        environment,
        redactor=teach_project_secrets(config),
        warn=lambda line: warn(line.removeprefix("warning: ")),
        stdout=lambda: sys.stderr,  # stdout is the one-line report
        project=config.project,
    )


def _failed(notifier: Notifier | None, environment: str, reason: str) -> None:
    if notifier is not None:
        notifier.notify(
            Event(
                kind=BACKUP_FAILED,
                environment=environment,
                summary=f"backup failed: {reason}",
                details={"error": reason},
            )
        )


def _run(
    project: ProjectContext,
    environment: str | None,
    message: str | None,
    warn: Warn,
    now: Callable[[], datetime],
    reporter: Reporter,
    pinger: HealthchecksPinger,
    notifier: Notifier | None,
    started: float,
) -> BackupResult:
    config = project.config
    try:
        level = config.backup.verify_level
        with reported_step(reporter, "preflight", "tools, databases, disk space") as step:
            checks = run_preflight(config)
            raise_for_failures(checks)
            step.detail = f"{counted(len(checks), 'check')} passed"
        for check in checks:
            report_detail(reporter, f"{check.name}: {'ok' if check.ok else 'failed'}, {check.detail}")
        pinger.start()
        request = SnapshotRequest(
            project_directory=project.directory, environment=environment, message=message, kind=SCHEDULED_KIND
        )
        with reported_step(reporter, "snapshot", ", ".join(config.databases) or "no databases") as step:
            code = prepare_code(config.code, request, stored_apart(config, project.directory), flags=False)
            with project.access.session(exclusive=False, defer_lock_recheck=True) as repository:
                created = create_snapshot(repository, config, request, code, now)
                added = repository.bytes_added
            bind_operation(reporter, snapshot_id=created.snapshot.id)  # the step-finished event carries it
            step.detail = f"snapshot {created.snapshot.short_id}, {human_size(added)} added"
        for line in created.manifest.warnings:
            warn(line)
        report_manifest(reporter, created.manifest)
        forgotten: list[Snapshot] = []
        if config.backup.forget and not is_empty(config.retention):
            with reported_step(reporter, "retention", "forget by [retention]") as step:
                forgotten = _forget(project.access, project, environment, now(), warn)
                step.detail = f"{counted(len(forgotten), 'snapshot')} removed"
        if level != "none":
            with reported_step(reporter, "verify", f"level {level}"):
                _verify(project.access, config, created.snapshot, level, reporter)
        copies = _copy_everywhere(project, environment, now, warn, reporter)
    except LockstepError as error:
        pinger.fail(f"lockstep backup failed: {error.message}")
        _failed(notifier, environment_name(environment), error.message)
        raise
    except KeyboardInterrupt:
        pinger.fail("lockstep backup was interrupted")
        _failed(notifier, environment_name(environment), "interrupted (Ctrl-C or SIGTERM)")
        raise
    except Exception as error:
        pinger.fail(f"lockstep backup failed: internal error ({type(error).__name__})")
        _failed(notifier, environment_name(environment), f"internal error ({type(error).__name__}: {error})")
        raise
    result = BackupResult(
        snapshot=created.snapshot,
        manifest=created.manifest,
        environment=environment_name(environment),
        stored_bytes=created.manifest.stored_size,
        added_bytes=added,
        seconds=time.monotonic() - started,
        verify_level=level,
        preflight=checks,
        forgotten=forgotten,
        copies=copies,
    )
    pinger.success(summary_line(result))
    if notifier is not None:
        notifier.notify(
            Event(
                kind=SNAPSHOT_CREATED,
                environment=result.environment,
                summary=summary_line(result),
                details={
                    "snapshot": result.snapshot.id,
                    "kind": SCHEDULED_KIND,
                    "stored_bytes": result.stored_bytes,
                    "added_bytes": result.added_bytes,
                    "duration": round(result.seconds, 3),
                    "verify_level": level,
                    "forgotten": len(forgotten),
                    "copied_to": [outcome.name for outcome in result.copies],
                },
            )
        )
    return replace(result, pings_sent=list(pinger.sent))


def human_size(count: float) -> str:
    """1.50 MiB: the unit the one-line report uses (same as the CLI's tables)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} TiB"


def human_duration(seconds: float) -> str:
    """`4.2 s`, `3 min 07 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def summary_line(result: BackupResult) -> str:
    """`backup ok: snapshot 1a2b3c4d, 1.20 GiB stored (12.40 MiB added), copied to offsite, 3 min 07 s`,
    with "of environment NAME" after the ID unless it ran with the top-level config (label
    `default`): cron mail must say which environment's databases a `lockstep backup` without --env
    saved."""
    shown = "" if result.environment == DEFAULT_ENVIRONMENT else f" of environment {result.environment}"
    copied = f"copied to {', '.join(outcome.name for outcome in result.copies)}, " if result.copies else ""
    return (
        f"backup ok: snapshot {result.snapshot.short_id}{shown}, {human_size(result.stored_bytes)} stored "
        f"({human_size(result.added_bytes)} added), {copied}{human_duration(result.seconds)}"
    )


def _verify(
    access: RepositoryAccess, config: ProjectConfig, snapshot: Snapshot, level: VerifyLevel, reporter: Reporter
) -> None:
    """`snapshot verify` at `level` (recorded in the repository, so `snapshot list` shows it);
    a snapshot that fails it fails the backup with the first findings."""
    if level == "none":
        return
    with access.session(exclusive=False) as repository:
        result = verify_snapshot(repository, snapshot, level, database_servers(config))
    report_verification(reporter, result)
    if not result.ok:
        shown = "; ".join(finding.message for finding in result.findings[:MAX_FINDINGS_SHOWN])
        more = len(result.findings) - MAX_FINDINGS_SHOWN
        raise IntegrityError(
            f"the new snapshot {snapshot.short_id} failed verification ({level}): {shown}"
            + (f" (and {more} more)" if more > 0 else ""),
            f"run `lockstep snapshot verify {snapshot.short_id} --level {level}` for the details",
        )


def _forget(
    access: RepositoryAccess, project: ProjectContext, environment: str | None, now: datetime, warn: Warn
) -> list[Snapshot]:
    """Retention for this environment. Another process holding the repository (a deploy's
    snapshot, a verify) only postpones it to the next backup: the new snapshot is safe already."""
    try:
        environments = (environment_name(environment),)
        return forget_snapshots(
            access, project.config.retention, project.name, environments=environments, now=now
        ).removed
    except RepositoryLocked as error:
        warn(f"retention skipped, the next backup applies it: {error.message}")
        return []


def _copy_everywhere(
    project: ProjectContext, environment: str | None, now: Callable[[], datetime], warn: Warn, reporter: Reporter
) -> list[CopyOutcome]:
    """Each [repository.copies] entry in turn: the snapshots it lacks, then [retention] as on the
    repository (borgmatic prunes every repository it backs up to). The first copy that fails
    stops the backup; the ones after it are tried again at the next backup, which also sends
    what this one could not. A copy locked by another process (a prune there) is only put off,
    with a warning, as retention is on a locked repository: the next backup catches it up. So
    is every copy when the repository itself, their source, was locked exclusively since the
    snapshot (a prune started in between): the snapshot is safe, and the next backup sends it."""
    config = project.config
    outcomes: list[CopyOutcome] = []
    wait_point("backup copies")  # tests: another process locks the repository after the snapshot
    primary_locked: str | None = None
    for name, copy_config in config.repository.copies.items():
        if primary_locked is not None:
            warn(f"copy {name} skipped, the next backup catches it up: {primary_locked}")
            continue
        access = copy_access(name, copy_config, project.directory, project.access.lock_wait_seconds)
        with reported_step(reporter, f"copy {name}", copy_config.url) as step:
            try:
                outcome = copy_to(name, access, project.access, project.name)
            except DestinationLocked as error:
                reason = error.__cause__.message if isinstance(error.__cause__, LockstepError) else error.message
                warn(f"copy {name} skipped, the next backup catches it up: {reason}")
                step.detail = "skipped: locked by another process"
                continue
            except SourceLocked as error:
                reason = error.__cause__.message if isinstance(error.__cause__, LockstepError) else error.message
                primary_locked = f"the primary repository, its source, is busy: {reason}"
                warn(f"copy {name} skipped, the next backup catches it up: {primary_locked}")
                step.detail = "skipped: the primary repository is locked by another process"
                continue
            step.detail = (
                f"{counted(len(outcome.report.copied), 'snapshot')} copied, "
                f"{len(outcome.report.skipped)} already there, "
                f"{human_size(outcome.report.bytes_added)} added"
            )
        if config.backup.forget and not is_empty(config.retention):
            with reported_step(reporter, f"retention {name}", "forget by [retention]") as step:
                try:
                    removed = _forget(access, project, environment, now(), warn)
                except LockstepError as error:
                    raise copy_error(name, outcome.location, error) from error
                step.detail = f"{counted(len(removed), 'snapshot')} removed"
        outcomes.append(outcome)
    return outcomes
