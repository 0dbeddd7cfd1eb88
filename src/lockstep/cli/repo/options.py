"""Options shared by every `repo` command: where the repository is and how to open it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lockstep.actions.repo.session import RepositoryAccess

F = TypeVar("F", bound=Callable[..., Any])


def repository_options(function: F) -> F:
    """Add --repo, --password-file, --password-command, --lock-wait and --json to a command."""
    decorators = [
        click.option(
            "-r",
            "--repo",
            "repository",
            metavar="LOCATION",
            help="Repository: PATH, local:PATH or s3:URL/BUCKET[/PREFIX]. Default: $LOCKSTEP_REPOSITORY.",
        ),
        click.option(
            "--password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Read the password from this file. Default: $LOCKSTEP_PASSWORD.",
        ),
        click.option("--password-command", metavar="CMD", help="Run CMD and use its output as the password."),
        click.option(
            "--lock-wait", type=float, default=0.0, metavar="SECONDS", help="Wait this long for a locked repository."
        ),
        click.option("--json", "json_output", is_flag=True, help="Print JSON on stdout."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def access_from(options: dict[str, Any]) -> RepositoryAccess:
    """Pop the shared options out of a command's kwargs and build the access object."""
    return RepositoryAccess(
        location=options.pop("repository"),
        password_file=options.pop("password_file"),
        password_command=options.pop("password_command"),
        lock_wait_seconds=options.pop("lock_wait"),
    )


def wants_json(options: dict[str, Any]) -> bool:
    json_here = bool(options.pop("json_output", False))
    context = click.get_current_context(silent=True)
    root = context.find_root().obj if context is not None else None
    return json_here or bool(root and root.get("json"))
