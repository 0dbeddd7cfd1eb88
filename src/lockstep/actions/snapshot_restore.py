"""`lockstep snapshot restore`: bring databases, code or files back from a coordinated snapshot.

Restoring a live database in place is the one step here that destroys data, so it goes:
say what the restore discards (a diff of live against the snapshot) and get a confirmation,
then take a `pre-restore` snapshot of exactly the databases about to be replaced (as late as
possible, so it holds the last writes), restore, and check the restored tables against the
manifest. Any failure names the database and the pre-restore snapshot that brings it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lockstep.actions.snapshot_create import ProjectContext, chosen_environment, load_project
from lockstep.actions.snapshot_show import find_snapshot, reference_environments
from lockstep.actions.step_reports import SilentReporter, bind_operation, reported_step, teach_secrets
from lockstep.config.model import FilesConfig
from lockstep.databases import adapter_for
from lockstep.databases.identity import same_database
from lockstep.errors import LockstepError, UsageError
from lockstep.pipeline.diff import DatabaseDiff, diff_database
from lockstep.pipeline.manifest import FileRecord, Manifest
from lockstep.pipeline.restore import (
    RestoredDatabase,
    ServerAccess,
    check_code_target,
    database_record,
    restore_code,
    restore_database,
    restore_files,
    target_state,
)
from lockstep.pipeline.retention_policy import PRE_RESTORE_KIND
from lockstep.pipeline.snapshot import (
    RESTORE_OF_TAG_PREFIX,
    SnapshotRequest,
    create_snapshot,
    database_password,
    environment_name,
    load_database_adapters,
    load_manifest,
)
from lockstep.pipeline.steps import Reporter
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot


@dataclass(frozen=True)
class RestoreRequest:
    """What the user asked to restore; with no database, code or files: every database in place."""

    reference: str
    database: str | None = None
    to_url: str | None = None
    code_directory: Path | None = None
    files_directory: Path | None = None
    yes: bool = False

    @property
    def everything(self) -> bool:
        return self.database is None and self.code_directory is None and self.files_directory is None


@dataclass(frozen=True)
class RestorePlan:
    """What an in-place restore will discard, shown before asking for confirmation."""

    snapshot: Snapshot
    databases: list[str]
    diffs: list[DatabaseDiff]
    # Live databases restored from a schema-only dump: every row they hold is discarded.
    schema_only: list[str] = field(default_factory=list)


@dataclass
class RestoreOutcome:
    snapshot: Snapshot
    manifest: Manifest
    pre_restore: Snapshot | None = None
    databases: list[RestoredDatabase] = field(default_factory=list)
    diffs: list[DatabaseDiff] = field(default_factory=list)
    code: str | None = None
    # What the code restore could not restore as stored (an owner, an extended attribute), one line per problem.
    warnings: list[str] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)


class RestoreCancelled(LockstepError):
    """The user said no: nothing was changed."""


Confirm = Callable[[RestorePlan], bool]


def restore(
    start: Path,
    request: RestoreRequest,
    confirm: Confirm,
    config_path: Path | None = None,
    environment: str | None = None,
    reporter: Reporter | None = None,
) -> RestoreOutcome:
    """Restore what `request` names; `confirm` is asked before live databases are replaced
    (unless request.yes). Raises RestoreCancelled when it says no.

    Each step (compare, pre-restore snapshot, each database, code, files) goes to `reporter`."""
    if request.to_url is not None and request.database is None:
        raise UsageError("--to needs --database NAME", "name the database of the snapshot to restore there")
    if request.code_directory is not None:
        check_code_target(request.code_directory)  # before any database is replaced
    reporter = reporter or SilentReporter()
    environment = chosen_environment(start, config_path, environment)
    project = load_project(start, config_path, environment)
    teach_secrets(reporter, project)
    bind_operation(reporter, operation="snapshot-restore", env=environment_name(environment))
    with project.access.session(exclusive=False, meanwhile=lambda: _load_adapters(project, request)) as repository:
        # Into the environment's own databases: only its snapshots. --to names the target itself.
        among = None if request.to_url is not None else reference_environments(start, config_path, environment)
        snapshot = find_snapshot(repository, request.reference, among, project.config.default_environment)
        bind_operation(reporter, snapshot_id=snapshot.id)
        manifest = load_manifest(repository, snapshot)
        outcome = RestoreOutcome(snapshot=snapshot, manifest=manifest)
        live = _configured_database_at(project, request.to_url)
        if request.database is not None and live is not None:
            # --to one of the project's own databases: an in-place restore, with its safeguards.
            database_record(manifest, snapshot, request.database)
            _restore_in_place(
                repository,
                project,
                snapshot,
                manifest,
                {request.database: live},
                request,
                confirm,
                outcome,
                environment,
                reporter,
            )
        elif request.database is not None and request.to_url is not None:
            database_record(manifest, snapshot, request.database)
            target = ServerAccess(request.to_url, _password_for(project, request.database))
            with reported_step(reporter, f"restore {request.database}", "into the --to database") as step:
                restored = restore_database(
                    repository, snapshot, manifest, request.database, target, replace=request.yes
                )
                step.detail = _describe_restored(restored)
            outcome.databases.append(restored)
        else:
            names = _in_place_names(project, manifest, snapshot, request, outcome)
            if names:
                live_names = {name: name for name in names}
                _restore_in_place(
                    repository,
                    project,
                    snapshot,
                    manifest,
                    live_names,
                    request,
                    confirm,
                    outcome,
                    environment,
                    reporter,
                )
        if request.code_directory is not None:
            work_tree = project.config.code.path if project.config.code.kind == "git" else None
            with reported_step(reporter, "code", f"into {request.code_directory}"):
                restored_code = restore_code(repository, snapshot, manifest, work_tree, request.code_directory)
                outcome.code = restored_code.description
                outcome.warnings.extend(restored_code.warnings)
        if request.files_directory is not None:
            with reported_step(reporter, "files", f"into {request.files_directory}") as step:
                outcome.files = restore_files(repository, snapshot, manifest, request.files_directory)
                step.detail = f"{len(outcome.files)} files"
        if request.everything:
            if manifest.code is not None:
                outcome.hints.append(f"the code can be restored with --code DIR ({_describe_code(manifest)})")
            if manifest.files:
                outcome.hints.append(f"{len(manifest.files)} config and secret files can be restored with --files DIR")
        return outcome


def _load_adapters(project: ProjectContext, request: RestoreRequest) -> None:
    """Import the target databases' adapters (PostgreSQL's driver: ~0.1 s) while the repository
    key is derived on another thread."""
    if request.to_url is not None:
        adapter_for(request.to_url)
    else:
        load_database_adapters(project.config)


def _configured_database_at(project: ProjectContext, url: str | None) -> str | None:
    """The name of the project's database that `url` names, however it is spelt; None for
    another database (or no --to)."""
    if url is None:
        return None
    return next((name for name, database in project.config.databases.items() if same_database(database.url, url)), None)


def _password_for(project: ProjectContext, name: str) -> str | None:
    database = project.config.databases.get(name)
    return None if database is None else database_password(name, database)


def _describe_code(manifest: Manifest) -> str:
    code = manifest.code
    assert code is not None
    return f"git commit {code.commit[:12]}" if code.commit else f"{code.kind} {code.path}"


def _in_place_names(
    project: ProjectContext, manifest: Manifest, snapshot: Snapshot, request: RestoreRequest, outcome: RestoreOutcome
) -> list[str]:
    configured = project.config.databases
    if request.database is not None:
        database_record(manifest, snapshot, request.database)
        if request.database not in configured:
            raise UsageError(
                f"database {request.database} is not in lockstep.toml, so it has no live location to restore to",
                "pass --to URL",
            )
        return [request.database]
    if not request.everything:
        return []
    names = []
    for name in manifest.databases:
        if name in configured:
            names.append(name)
        else:
            outcome.hints.append(f"database {name} is not in lockstep.toml: restore it with --database {name} --to URL")
    return names


def _restore_in_place(
    repository: Repository,
    project: ProjectContext,
    snapshot: Snapshot,
    manifest: Manifest,
    live_names: dict[str, str],
    request: RestoreRequest,
    confirm: Confirm,
    outcome: RestoreOutcome,
    environment: str | None,
    reporter: Reporter,
) -> None:
    """Restore each of the snapshot's databases in `live_names` into the configured database
    that maps to it (the same name, except for --to one of them)."""
    configured = project.config.databases
    names = list(live_names)
    targets = {
        name: ServerAccess(configured[live].url, _password_for(project, live)) for name, live in live_names.items()
    }
    with reported_step(reporter, "compare", "live databases against the snapshot") as step:
        existing = [name for name in names if target_state(adapter_for(targets[name].url), targets[name]) != "missing"]
        for name in existing:
            outcome.diffs.append(diff_database(repository, snapshot, manifest, name, targets[name]))
        changed = [diff.name for diff in outcome.diffs if diff.changed]
        step.detail = f"changed since the snapshot: {', '.join(changed)}" if changed else "nothing changed"
    schema_only = [name for name in existing if manifest.databases[name].schema_only]
    shown = [name if live == name else f"{live} (from {name})" for name, live in live_names.items()]
    if existing and not request.yes and not confirm(RestorePlan(snapshot, shown, outcome.diffs, schema_only)):
        raise RestoreCancelled("the restore was cancelled; nothing was changed")
    if existing:
        subset = project.config.model_copy(
            update={
                "databases": {live_names[name]: configured[live_names[name]] for name in existing},
                "files": FilesConfig(),
            }
        )
        pre_request = SnapshotRequest(
            project_directory=project.directory,
            environment=environment,
            message=f"before restoring snapshot {snapshot.short_id}",
            tags=(RESTORE_OF_TAG_PREFIX + snapshot.short_id,),
            kind=PRE_RESTORE_KIND,
        )
        with reported_step(reporter, "pre-restore snapshot", ", ".join(live_names[name] for name in existing)) as step:
            outcome.pre_restore = create_snapshot(repository, subset, pre_request, code=None).snapshot
            step.detail = f"snapshot {outcome.pre_restore.short_id}"
    for name in names:
        try:
            with reported_step(reporter, f"restore {name}", "in place") as step:
                restored = restore_database(repository, snapshot, manifest, name, targets[name], replace=True)
                step.detail = _describe_restored(restored)
            outcome.databases.append(restored)
        except LockstepError as error:
            raise _with_way_back(error, live_names[name], outcome.pre_restore) from error


def _describe_restored(restored: RestoredDatabase) -> str:
    return f"{restored.tables} tables, {restored.rows} rows, checked against the manifest"


def _with_way_back(error: LockstepError, name: str, pre_restore: Snapshot | None) -> LockstepError:
    """The same kind of error, telling the user which snapshot holds the database as it was."""
    if pre_restore is None:
        return error
    message = f"{error.message}; database {name} as it was before is in pre-restore snapshot {pre_restore.short_id}"
    hint = f"bring it back with `lockstep snapshot restore {pre_restore.short_id} --database {name} --yes`"
    replacement = type(error)(message, hint)
    return replacement


__all__ = ["PRE_RESTORE_KIND", "RestoreCancelled", "RestoreOutcome", "RestorePlan", "RestoreRequest", "restore"]
