"""`lockstep snapshot restore`: bring databases, code or files back from a coordinated snapshot.

Restoring a live database in place is the one step here that destroys data, so it goes:
say what the restore discards (a diff of live against the snapshot) and get a confirmation,
then take a `pre-restore` snapshot of exactly the databases about to be replaced (as late as
possible, so it holds the last writes), restore, and check the restored tables against the
manifest. Any failure names the database and the pre-restore snapshot that brings it back.
Files under --files DIR are treated the same way: those the restore would overwrite with other
content are named (never shown: they may be secrets), confirmed, and saved in the same
pre-restore snapshot, relative to DIR.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lockstep.actions.snapshot_create import ProjectContext, chosen_environment, load_project
from lockstep.actions.snapshot_show import find_snapshot, reference_environments
from lockstep.actions.step_reports import SilentReporter, bind_operation, reported_step, teach_secrets
from lockstep.config.model import FilesConfig
from lockstep.databases import adapter_for
from lockstep.databases.identity import same_database
from lockstep.databases.sqlite import anchored_url
from lockstep.errors import LockstepError, NotFound, UsageError
from lockstep.pipeline.diff import DatabaseDiff, diff_database
from lockstep.pipeline.manifest import FileRecord, Manifest
from lockstep.pipeline.restore import (
    OverwrittenFile,
    RestoredDatabase,
    ServerAccess,
    check_code_target,
    database_record,
    overwritten_files,
    restore_code,
    restore_database,
    restore_files,
    restore_tables,
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
from lockstep.wording import counted


@dataclass(frozen=True)
class RestoreRequest:
    """What the user asked to restore; with no database, code or files: every database in place."""

    reference: str
    database: str | None = None
    to_url: str | None = None
    code_directory: Path | None = None
    files_directory: Path | None = None
    yes: bool = False
    # Only these tables of --database, into the --to database (never in place).
    tables: tuple[str, ...] = ()

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
    # Files under --files DIR the restore overwrites with other content: names only (secrets).
    files: list[str] = field(default_factory=list)
    files_directory: Path | None = None


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
    # Names under --files DIR that had other content, saved in the pre-restore snapshot first.
    overwritten_files: list[str] = field(default_factory=list)
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
    if request.tables and request.to_url is None:
        raise UsageError(
            "--table restores tables into another database, never in place: give --to URL",
            "pass --database NAME --table TABLE --to URL with a new or empty database, then copy the rows you need",
        )
    if request.to_url is not None and request.database is None:
        raise UsageError("--to needs --database NAME", "name the database of the snapshot to restore there")
    if request.to_url is not None:  # a relative SQLite path is taken from where lockstep runs, and shown whole
        request = replace(request, to_url=anchored_url(request.to_url, start))
    if request.code_directory is not None:
        check_code_target(request.code_directory)  # before any database is replaced
    reporter = reporter or SilentReporter()
    environment = chosen_environment(start, config_path, environment)
    project = load_project(start, config_path, environment)
    teach_secrets(reporter, project)
    bind_operation(reporter, operation="snapshot-restore", env=environment_name(environment))
    # The lock's second look runs while the snapshot is found and compared; nothing is written
    # before it has found no competitor (confirm_lock below): 0.2 s less before the restore begins.
    with project.access.session(
        exclusive=False, defer_lock_recheck=True, meanwhile=lambda: _load_adapters(project, request)
    ) as repository:
        # Into the environment's own databases: only its snapshots. --to names the target itself.
        among = None if request.to_url is not None else reference_environments(start, config_path, environment)
        snapshot = find_snapshot(
            repository, request.reference, among, project.config.default_environment, project=project.name
        )
        bind_operation(reporter, snapshot_id=snapshot.id)
        manifest = load_manifest(repository, snapshot)
        _refuse_parts_not_recorded(snapshot, manifest, request)
        outcome = RestoreOutcome(snapshot=snapshot, manifest=manifest)
        live = _configured_database_at(project, request.to_url)
        if request.tables and live is not None:
            raise UsageError(
                f"--to names database {live} of lockstep.toml: --table never restores into a live database",
                "give --to a new or empty database, then copy the rows you need from there",
            )
        to_other = False
        if request.database is not None and live is not None:
            # --to one of the project's own databases: an in-place restore, with its safeguards.
            database_record(manifest, snapshot, request.database)
            live_names = {request.database: live}
        elif request.database is not None and request.to_url is not None:
            database_record(manifest, snapshot, request.database)
            live_names, to_other = {}, True
        else:
            live_names = {name: name for name in _in_place_names(project, manifest, snapshot, request, outcome)}
        targets = _in_place_targets(project, live_names)
        existing = _compare_live(repository, snapshot, manifest, targets, outcome, reporter)
        overwritten = _compare_files(manifest, snapshot, request.files_directory, reporter)
        outcome.overwritten_files = [item.relative for item in overwritten]
        _confirm(snapshot, manifest, live_names, existing, overwritten, request, confirm, outcome)
        repository.confirm_lock()
        if existing or overwritten:
            outcome.pre_restore = _pre_restore_snapshot(
                repository,
                project,
                snapshot,
                {live_names[name] for name in existing},
                overwritten,
                request.files_directory,
                environment,
                reporter,
            )
        if to_other:
            assert request.database is not None and request.to_url is not None
            target = ServerAccess(request.to_url, _password_for(project, request.database))
            with reported_step(reporter, f"restore {request.database}", "into the --to database") as step:
                if request.tables:
                    restored = restore_tables(
                        repository, snapshot, manifest, request.database, target, list(request.tables)
                    )
                else:
                    restored = restore_database(
                        repository, snapshot, manifest, request.database, target, replace=request.yes
                    )
                step.detail = _describe_restored(restored)
            outcome.databases.append(restored)
        for name, target in targets.items():
            try:
                with reported_step(reporter, f"restore {name}", "in place") as step:
                    restored = restore_database(repository, snapshot, manifest, name, target, replace=True)
                    step.detail = _describe_restored(restored)
                outcome.databases.append(restored)
            except LockstepError as error:
                raise _with_way_back(error, live_names[name], outcome.pre_restore) from error
        if request.code_directory is not None:
            work_tree = project.config.code.path if project.config.code.kind == "git" else None
            with reported_step(reporter, "code", f"into {request.code_directory}"):
                restored_code = restore_code(repository, snapshot, manifest, work_tree, request.code_directory)
                outcome.code = restored_code.description
                outcome.warnings.extend(restored_code.warnings)
        if request.files_directory is not None:
            with reported_step(reporter, "files", f"into {request.files_directory}") as step:
                try:
                    outcome.files = restore_files(repository, snapshot, manifest, request.files_directory)
                except LockstepError as error:
                    raise _files_way_back(error, request.files_directory, outcome.pre_restore) from error
                step.detail = counted(len(outcome.files), "file")
        if request.everything:
            if manifest.code is not None:
                outcome.hints.append(f"the code can be restored with --code DIR ({_describe_code(manifest)})")
            if manifest.files:
                outcome.hints.append(
                    f"{counted(len(manifest.files), 'config and secret file')} can be restored with --files DIR"
                )
        return outcome


def _refuse_parts_not_recorded(snapshot: Snapshot, manifest: Manifest, request: RestoreRequest) -> None:
    """`--code` or `--files` of a snapshot that recorded none: exit 13 before anything is
    restored (the code's refusal came after the databases had been restored, and `--files`
    reported "0 files" as a success)."""
    if request.code_directory is not None and manifest.code is None:
        raise NotFound(
            f"snapshot {snapshot.short_id} records no code; nothing was restored",
            "leave out --code (`lockstep snapshot show ID` lists what a snapshot holds)",
        )
    if request.files_directory is not None and not manifest.files:
        raise NotFound(
            f"snapshot {snapshot.short_id} records no config or secret files; nothing was restored",
            "leave out --files (`lockstep snapshot show ID` lists what a snapshot holds)",
        )


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


def _in_place_targets(project: ProjectContext, live_names: dict[str, str]) -> dict[str, ServerAccess]:
    """Each of the snapshot's databases in `live_names` with the configured database that maps
    to it (the same name, except for --to one of them)."""
    configured = project.config.databases
    return {name: ServerAccess(configured[live].url, _password_for(project, live)) for name, live in live_names.items()}


def _compare_live(
    repository: Repository,
    snapshot: Snapshot,
    manifest: Manifest,
    targets: dict[str, ServerAccess],
    outcome: RestoreOutcome,
    reporter: Reporter,
) -> list[str]:
    """The databases about to be replaced that exist, each diffed against the snapshot into `outcome`."""
    if not targets:
        return []
    with reported_step(reporter, "compare", "live databases against the snapshot") as step:
        existing = [
            name for name, target in targets.items() if target_state(adapter_for(target.url), target) != "missing"
        ]
        for name in existing:
            outcome.diffs.append(diff_database(repository, snapshot, manifest, name, targets[name]))
        changed = [diff.name for diff in outcome.diffs if diff.changed]
        step.detail = f"changed since the snapshot: {', '.join(changed)}" if changed else "nothing changed"
    return existing


def _compare_files(
    manifest: Manifest, snapshot: Snapshot, directory: Path | None, reporter: Reporter
) -> list[OverwrittenFile]:
    """The files under --files DIR the restore would replace with other content."""
    if directory is None or not manifest.files:
        return []
    with reported_step(reporter, "compare files", f"in {directory} against the snapshot") as step:
        overwritten = overwritten_files(manifest, snapshot, directory)
        step.detail = f"{counted(len(overwritten), 'file')} to overwrite" if overwritten else "nothing to overwrite"
    return overwritten


def _confirm(
    snapshot: Snapshot,
    manifest: Manifest,
    live_names: dict[str, str],
    existing: list[str],
    overwritten: list[OverwrittenFile],
    request: RestoreRequest,
    confirm: Confirm,
    outcome: RestoreOutcome,
) -> None:
    """Ask before anything live is replaced: existing databases and files with other content."""
    if request.yes or not (existing or overwritten):
        return
    schema_only = [name for name in existing if manifest.databases[name].schema_only]
    shown = [name if live == name else f"{live} (from {name})" for name, live in live_names.items()]
    plan = RestorePlan(
        snapshot,
        shown if existing else [],
        outcome.diffs,
        schema_only,
        files=[item.relative for item in overwritten],
        files_directory=request.files_directory,
    )
    if not confirm(plan):
        raise RestoreCancelled("the restore was cancelled; nothing was changed")


def _pre_restore_snapshot(
    repository: Repository,
    project: ProjectContext,
    snapshot: Snapshot,
    databases: set[str],
    overwritten: list[OverwrittenFile],
    files_directory: Path | None,
    environment: str | None,
    reporter: Reporter,
) -> Snapshot:
    """A snapshot of exactly what the restore replaces (taken as late as possible, so it holds
    the last writes): the live databases, and the files under --files DIR stored relative to
    DIR, so `snapshot restore PRE --files DIR` puts them back."""
    configured = project.config.databases
    files = FilesConfig(
        config=[glob.escape(str(item.path)) for item in overwritten if item.record.kind == "config"],
        secrets=[glob.escape(str(item.path)) for item in overwritten if item.record.kind != "config"],
    )
    kept = {name: database for name, database in configured.items() if name in databases}
    subset = project.config.model_copy(update={"databases": kept, "files": files})
    pre_request = SnapshotRequest(
        project_directory=project.directory,
        environment=environment,
        message=f"before restoring snapshot {snapshot.short_id}",
        tags=(RESTORE_OF_TAG_PREFIX + snapshot.short_id,),
        kind=PRE_RESTORE_KIND,
        files_directory=None if files_directory is None else files_directory.resolve(),
    )
    saved = [name for name in configured if name in databases]
    if overwritten:
        saved.append(counted(len(overwritten), "file"))
    with reported_step(reporter, "pre-restore snapshot", ", ".join(saved)) as step:
        pre_restore = create_snapshot(repository, subset, pre_request, code=None).snapshot
        step.detail = f"snapshot {pre_restore.short_id}"
    return pre_restore


def _describe_restored(restored: RestoredDatabase) -> str:
    return f"{counted(restored.tables, 'table')}, {counted(restored.rows, 'row')}, checked against the manifest"


def _with_way_back(error: LockstepError, name: str, pre_restore: Snapshot | None) -> LockstepError:
    """The same kind of error, telling the user which snapshot holds the database as it was."""
    if pre_restore is None:
        return error
    message = f"{error.message}; database {name} as it was before is in pre-restore snapshot {pre_restore.short_id}"
    hint = f"bring it back with `lockstep snapshot restore {pre_restore.short_id} --database {name} --yes`"
    replacement = type(error)(message, hint)
    return replacement


def _files_way_back(error: LockstepError, directory: Path, pre_restore: Snapshot | None) -> LockstepError:
    """The same kind of error, telling the user which snapshot holds the overwritten files."""
    if pre_restore is None:
        return error
    message = (
        f"{error.message}; the files it overwrote in {directory} are in pre-restore snapshot {pre_restore.short_id}"
    )
    hint = f"bring them back with `lockstep snapshot restore {pre_restore.short_id} --files {directory} --yes`"
    return type(error)(message, hint)


__all__ = ["PRE_RESTORE_KIND", "RestoreCancelled", "RestoreOutcome", "RestorePlan", "RestoreRequest", "restore"]
