"""Options shared by every `repo` command: where the repository is and how to open it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lockstep.actions.repo.session import SOURCE_NAMES, RepositoryAccess
from lockstep.cli.project_options import Duration

if TYPE_CHECKING:
    from lockstep.repository.retention import SnapshotFilter

F = TypeVar("F", bound=Callable[..., Any])


def repository_options(function: F) -> F:
    """Add --repo, --password-file, --password-command, --lock-wait and --json to a command."""
    decorators = [
        click.option(
            "-r",
            "--repo",
            "repository",
            metavar="LOCATION",
            help=(
                "Repository: PATH, local:PATH, s3:HOST/BUCKET[/PREFIX] or s3:URL/BUCKET[/PREFIX]. "
                "Default: $LOCKSTEP_REPOSITORY."
            ),
        ),
        click.option(
            "--password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Read the password from this file. Default: $LOCKSTEP_PASSWORD_FILE.",
        ),
        click.option(
            "--password-command",
            metavar="CMD",
            help="Run CMD (no shell) and use its output as the password. Default: $LOCKSTEP_PASSWORD_COMMAND.",
        ),
        click.option(
            "--lock-wait",
            type=Duration(),
            default=0.0,
            metavar="DURATION",
            help="Wait this long for a locked repository (e.g. 30s, 5m; a bare number is seconds).",
        ),
        click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout."),
        click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Take the repository from this lockstep.toml, default_environment's (default: ./lockstep.toml,"
            " when neither --repo nor $LOCKSTEP_REPOSITORY is given).",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def source_repository_options(function: F) -> F:
    """--from-repo and its password options: the source of `repo copy` and of
    `repo init --copy-chunker-params`, named as restic names them."""
    options = [
        click.option(
            "--from-repo",
            "from_repository",
            metavar="LOCATION",
            help="Source repository (same forms as --repo). Default: $LOCKSTEP_FROM_REPOSITORY.",
        ),
        click.option(
            "--from-password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Read the source repository's password from this file. Default: $LOCKSTEP_FROM_PASSWORD_FILE.",
        ),
        click.option(
            "--from-password-command",
            metavar="CMD",
            help="Run CMD (no shell) for the source repository's password. Default: "
            "$LOCKSTEP_FROM_PASSWORD_COMMAND (without either: $LOCKSTEP_FROM_PASSWORD).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def source_access_from(options: dict[str, Any], lock_wait_seconds: float) -> RepositoryAccess:
    """Pop the --from-* options out of a command's kwargs: the source repository's access."""
    return RepositoryAccess(
        location=options.pop("from_repository"),
        password_file=options.pop("from_password_file"),
        password_command=options.pop("from_password_command"),
        lock_wait_seconds=lock_wait_seconds,
        names=SOURCE_NAMES,
    )


def snapshot_filter_options(function: F) -> F:
    """--host, --tag and --path: which snapshots a command considers (forget, copy), as in restic."""
    decorators = [
        click.option("--host", "hosts", multiple=True, help="Only consider snapshots from this host; repeatable."),
        click.option(
            "--tag",
            "tags",
            multiple=True,
            metavar="TAGS",
            help="Only consider snapshots with all these tags (a,b); repeat = either.",
        ),
        click.option(
            "--path", "paths", multiple=True, help="Only consider snapshots that include this path; repeatable."
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def snapshot_filter_from(options: dict[str, Any]) -> SnapshotFilter:
    """Pop the --host/--tag/--path values out of a command's kwargs."""
    # Imported here: retention costs ~40 ms to import, which `repo backup` must not pay.
    from lockstep.repository.retention import SnapshotFilter, parse_tag_list

    return SnapshotFilter(
        hosts=tuple(options.pop("hosts")),
        tag_lists=tuple(parse_tag_list(text) for text in options.pop("tags")),
        paths=tuple(options.pop("paths")),
    )


def access_from(options: dict[str, Any]) -> RepositoryAccess:
    """Pop the shared options out of a command's kwargs and build the access object.

    Without --repo and $LOCKSTEP_REPOSITORY, the repository of lockstep.toml (-c, or the one in
    the current directory) is used: default_environment's, as for every command without --env,
    with its password_file/password_command (which a flag or $LOCKSTEP_PASSWORD_FILE /
    $LOCKSTEP_PASSWORD_COMMAND overrides).
    """
    location = options.pop("repository")
    password_file = options.pop("password_file")
    password_command = options.pop("password_command")
    lock_wait = options.pop("lock_wait")
    config_path = options.pop("config_path", None)
    access = RepositoryAccess(
        location=location,
        password_file=password_file,
        password_command=password_command,
        lock_wait_seconds=lock_wait,
    )
    if not location and not os.environ.get("LOCKSTEP_REPOSITORY"):
        # Imported here: the project configuration (pydantic models) costs ~0.2 s to import,
        # which commands given --repo or $LOCKSTEP_REPOSITORY should not pay.
        from lockstep.actions.snapshot_create import chosen_environment, load_project
        from lockstep.config.loading import CONFIG_FILE_NAME

        candidate = config_path or Path(CONFIG_FILE_NAME)
        if config_path is not None or candidate.is_file():
            # default_environment's repository, where `lockstep backup` without --env writes.
            project = load_project(Path.cwd(), candidate, chosen_environment(Path.cwd(), candidate, None))
            access = replace(
                project.access,
                password_file=password_file,
                password_command=password_command,
                lock_wait_seconds=lock_wait,
                password_options=True,
            )
    return access


def wants_json(options: dict[str, Any]) -> bool:
    json_here = bool(options.pop("json_output", False))
    context = click.get_current_context(silent=True)
    root = context.find_root().obj if context is not None else None
    return json_here or bool(root and root.get("json"))
