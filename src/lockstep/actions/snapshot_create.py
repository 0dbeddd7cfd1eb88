"""`lockstep snapshot create`: one coordinated snapshot of the project's code, databases and files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.config import ProjectConfig, find_config, load_config
from lockstep.pipeline.snapshot import CreatedSnapshot, SnapshotRequest, create_snapshot, prepare_code


@dataclass(frozen=True)
class ProjectContext:
    """A loaded project: its directory, resolved config and how to reach its repository."""

    directory: Path
    config: ProjectConfig
    access: RepositoryAccess


def load_project(start: Path, config_path: Path | None, environment: str | None) -> ProjectContext:
    """Find and load lockstep.toml for `environment`, and the repository access it describes.

    LOCKSTEP_PASSWORD, when set, wins over the config's password_file/password_command, as
    LOCKSTEP_REPOSITORY wins over its url (the config loader applies that one).
    """
    path = find_config(start, config_path)
    config = load_config(path, environment)
    repository = config.repository
    password_from_environment = bool(os.environ.get("LOCKSTEP_PASSWORD"))
    access = RepositoryAccess(
        location=repository.url,
        password_file=None if password_from_environment else repository.password_file,
        password_command=None if password_from_environment else repository.password_command,
    )
    return ProjectContext(directory=path.resolve().parent, config=config, access=access)


def create(
    start: Path,
    config_path: Path | None = None,
    environment: str | None = None,
    message: str | None = None,
    tags: tuple[str, ...] = (),
    commit: bool = False,
    allow_dirty: bool = False,
) -> CreatedSnapshot:
    """Check the code, then write the snapshot under a shared lock; raises on any failed source."""
    project = load_project(start, config_path, environment)
    request = SnapshotRequest(
        project_directory=project.directory,
        environment=environment,
        message=message,
        tags=tags,
        commit=commit,
        allow_dirty=allow_dirty,
    )
    code = prepare_code(project.config.code, request)
    with project.access.session(exclusive=False) as repository:
        return create_snapshot(repository, project.config, request, code)
