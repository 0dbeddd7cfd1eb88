"""The copies of [repository.copies]: each backup's snapshots copied on to other repositories.

borgmatic's model, in lockstep's terms: one snapshot, then each copy gets what it lacks (restic's
`copy`, so a copy that failed last time catches up) and the same retention, as borgmatic prunes
every repository. The primary snapshot is written first and stays whatever a copy does.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from lockstep.actions.repo.copy import CopyRequest, copy_from, opened_source, reworded
from lockstep.actions.repo.session import AccessNames, PasswordSource, RepositoryAccess
from lockstep.config.model import RepositoryCopyConfig
from lockstep.errors import IntegrityError, LockstepError, RepositoryNotFound, WrongPassword
from lockstep.pipeline.snapshot import is_of_project
from lockstep.repository.copier import CopyReport, SourceReadFailed


def copy_access(
    name: str, copy_config: RepositoryCopyConfig, config_directory: Path, lock_wait_seconds: float = 0.0
) -> RepositoryAccess:
    """How to open the copy `name`: its url and its own password source, never LOCKSTEP_PASSWORD*."""
    return RepositoryAccess(
        location=copy_config.url,
        lock_wait_seconds=lock_wait_seconds,
        password_options=False,
        names=AccessNames(role=f"repository copy {name}"),
        only_password_source=copy_password_source(name, copy_config, config_directory),
    )


def copy_password_source(name: str, copy_config: RepositoryCopyConfig, config_directory: Path) -> PasswordSource:
    setting = f"repository.copies.{name}"
    if copy_config.password_command is not None:
        return PasswordSource(
            "command",
            f"{setting}.password_command in lockstep.toml",
            command=copy_config.password_command,
            directory=config_directory,
        )
    if copy_config.password_file is not None:
        return PasswordSource("file", f"{setting}.password_file in lockstep.toml", file=copy_config.password_file)
    assert copy_config.password_env is not None  # the config requires one of the three
    return PasswordSource("variable", copy_config.password_env)


@dataclass(frozen=True)
class CopyOutcome:
    name: str
    location: str
    report: CopyReport


def copy_to(name: str, destination: RepositoryAccess, source: RepositoryAccess, project: str) -> CopyOutcome:
    """Copy every snapshot of `project` in `source` that the copy `name` lacks (the new one, and
    any an earlier failed copy missed): another project sharing the repository copies its own,
    and this project's retention on the copy never sees them. Errors say which copy failed and
    how to fix it, never its password. The primary (`source`) is opened and locked apart, and its
    reads fail as SourceReadFailed: its errors (locked exclusively by a prune, gone, a pack missing
    or damaged) are the primary's, not the copy's."""
    location = destination.resolved_location()
    with ExitStack() as held:
        try:
            primary = held.enter_context(opened_source(source))
        except LockstepError as error:
            raise primary_error(name, error) from error
        try:
            report = copy_from(
                primary, destination, CopyRequest(only=lambda snapshot: is_of_project(snapshot, project))
            )
        except SourceReadFailed as failure:
            raise primary_read_error(name, failure) from failure.error
        except LockstepError as error:
            raise copy_error(name, location, error) from error
    return CopyOutcome(name, location, report)


def primary_error(name: str, error: LockstepError) -> LockstepError:
    """`error` of the primary repository (keeping its class, hence its exit code) as what stopped
    copy `name`: its message already names the primary's location, and its hint still applies."""
    message = f"copy {name}: could not open the primary repository, its source: {error.message}"
    return reworded(error, message, error.hint)


def primary_read_error(name: str, failure: SourceReadFailed) -> LockstepError:
    """A read of the primary that failed while copying to `name` (keeping the read error's class,
    hence its exit code): the primary is damaged or its storage failed, and the copy is not at
    fault, so the hint checks the primary; the next backup sends the copy what it lacks."""
    error = failure.error
    snapshot = f" (while copying snapshot {failure.snapshot})" if failure.snapshot else ""
    message = f"copy {name}: could not read the primary repository, its source, at {failure.location}{snapshot}: "
    if isinstance(error, IntegrityError):
        hint = (
            "the primary repository is damaged, not the copy: check it with `lockstep repo check --read-data` "
            "(where lockstep.toml is)"
        )
    else:
        hint = error.hint or "check the primary repository's storage; the next backup copies what this one did not"
    return reworded(error, message + error.message, hint)


def copy_error(name: str, location: str, error: LockstepError) -> LockstepError:
    """`error` (keeping its class, hence its exit code) as the failure of copy `name`."""
    shown = location  # the config allows no password in it
    if isinstance(error, RepositoryNotFound):
        return RepositoryNotFound(
            f"copy {name}: there is no repository at {shown}",
            f"create it with `lockstep repo init -r {shown}` and the copy's password, or fix "
            f"repository.copies.{name}.url",
        )
    if isinstance(error, WrongPassword):
        return WrongPassword(
            f"copy {name}: its password does not open the repository at {shown}",
            f"make repository.copies.{name}'s password source give the password that repository was created with",
        )
    wrapped = type(error).__new__(type(error))
    LockstepError.__init__(wrapped, f"copy {name} ({shown}): {error.message}", error.hint)
    return wrapped
