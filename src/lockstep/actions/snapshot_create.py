"""`lockstep snapshot create`: one coordinated snapshot of the project's code, databases and files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.actions.step_reports import (
    SilentReporter,
    bind_operation,
    report_manifest,
    report_warnings,
    reported_step,
    teach_secrets,
)
from lockstep.config import ProjectConfig, find_config, load_config
from lockstep.pipeline.snapshot import (
    CreatedSnapshot,
    PreparedCode,
    SnapshotRequest,
    check_user_tags,
    create_snapshot,
    environment_name,
    load_database_adapters,
    prepare_code,
    project_name,
    stored_apart,
)
from lockstep.pipeline.steps import Reporter


@dataclass(frozen=True)
class ProjectContext:
    """A loaded project: its directory, resolved config and how to reach its repository."""

    directory: Path
    config: ProjectConfig
    access: RepositoryAccess

    @property
    def name(self) -> str:
        """The project's name in the repository: only snapshots under it are this project's."""
        return project_name(self.config, self.directory)


def load_project(start: Path, config_path: Path | None, environment: str | None) -> ProjectContext:
    """Find and load lockstep.toml for `environment`, and the repository access it describes.

    The config's password_file/password_command count unless a flag or variable names a file or
    command (RepositoryAccess says the whole order, restic's), as LOCKSTEP_REPOSITORY wins over
    its url (the config loader applies that one).
    """
    path = find_config(start, config_path)
    config = load_config(path, environment)
    repository = config.repository
    directory = path.resolve().parent
    access = RepositoryAccess(
        location=repository.url,
        configured_password_file=repository.password_file,
        configured_password_command=repository.password_command,
        config_directory=directory,
        password_options=False,
    )
    return ProjectContext(directory=directory, config=config, access=access)


def chosen_environment(start: Path, config_path: Path | None, environment: str | None) -> str | None:
    """The `--env` a snapshot-side command works with: `environment` when given; without it,
    default_environment when that has an [environments.NAME] table of its own, so that no --env
    means the environment deploy uses (its databases, its label). Otherwise None: the top-level
    config is default_environment's, and its snapshots keep the label `default` they always had."""
    if environment is not None:
        return environment
    base = load_config(find_config(start, config_path), None)
    return base.default_environment if base.default_environment in base.environments else None


def create(
    start: Path,
    config_path: Path | None = None,
    environment: str | None = None,
    message: str | None = None,
    tags: tuple[str, ...] = (),
    commit: bool = False,
    allow_dirty: bool = False,
    reporter: Reporter | None = None,
    schema_only: bool = False,
) -> CreatedSnapshot:
    """Check the code, then write the snapshot under a shared lock; raises on any failed source.

    The steps (code, snapshot) go to `reporter` with their durations."""

    check_user_tags(tags)
    reporter = reporter or SilentReporter()
    environment = chosen_environment(start, config_path, environment)
    project = load_project(start, config_path, environment)
    teach_secrets(reporter, project)
    bind_operation(reporter, operation="snapshot-create", env=environment_name(environment))
    request = SnapshotRequest(
        project_directory=project.directory,
        environment=environment,
        message=message,
        tags=tags,
        commit=commit,
        allow_dirty=allow_dirty,
        schema_only=schema_only,
    )
    with reported_step(reporter, "code", project.config.code.kind or "") as step:
        code = prepare_code(project.config.code, request, stored_apart(project.config, project.directory))
        step.detail = _describe_code(code)
    with reported_step(reporter, "snapshot", ", ".join(project.config.databases) or "no databases") as step:
        with project.access.session(
            exclusive=False, defer_lock_recheck=True, meanwhile=lambda: load_database_adapters(project.config)
        ) as repository:
            created = create_snapshot(repository, project.config, request, code)
            added = repository.bytes_added
        bind_operation(reporter, snapshot_id=created.snapshot.id)  # the step-finished event carries it
        step.detail = f"snapshot {created.snapshot.short_id}, {added} bytes added"
    report_warnings(reporter, created.manifest)
    report_manifest(reporter, created.manifest)
    return created


def _describe_code(code: PreparedCode | None) -> str:
    if code is None:
        return "not recorded"
    if code.git is not None:
        return f"commit {code.git.short_commit}" + (" with uncommitted changes" if code.git.dirty else "")
    return code.kind
