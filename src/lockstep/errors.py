"""Errors users see. Each carries its exit code and a sentence that says what to do.

The CLI turns any `LockstepError` into one line on stderr and its exit code; anything else
is a bug and shows a traceback only with --debug.
"""

from __future__ import annotations

from typing import Any, Protocol

from lockstep.exit_codes import ExitCode


class Documented(Protocol):
    def to_document(self) -> dict[str, Any]: ...


class LockstepError(Exception):
    """A failure the user can act on: `message` says what happened, `hint` what to do.

    `result` is what the command would have printed with --json had it succeeded (a failed
    deploy's record): --json prints it beside the error, so a script learns the failed step."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None, result: Documented | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.result = result

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}: {self.hint}"
        return self.message


class UsageError(LockstepError):
    exit_code = ExitCode.USAGE


class RepositoryNotFound(LockstepError):
    exit_code = ExitCode.NO_REPOSITORY


class RepositoryExists(LockstepError):
    """`repo init` where a repository already is: nothing failed (exit 1, as restic's init), the
    location is simply taken; it is left as it was."""

    def __init__(self, location: str) -> None:
        super().__init__(
            f"a repository already exists at {location} (left untouched)",
            "use it (it opens with the password it was created with), or choose another location for a new repository",
        )


class WrongPassword(LockstepError):
    exit_code = ExitCode.WRONG_PASSWORD


class IntegrityError(LockstepError):
    exit_code = ExitCode.INTEGRITY


class NotFound(LockstepError):
    exit_code = ExitCode.NOT_FOUND


class StorageError(LockstepError):
    exit_code = ExitCode.STORAGE


class SourceError(LockstepError):
    exit_code = ExitCode.SOURCE


class ServerLimitExceeded(SourceError):
    """A database server refused what it was sent for a limit of its own (MariaDB's
    max_allowed_packet): the data is fine, the server's setting is not, so a verification
    records no failure for it. `remedy` says how to raise the limit."""

    def __init__(self, message: str, remedy: str, hint: str | None = None) -> None:
        super().__init__(message, hint or remedy)
        self.remedy = remedy


class RepositoryLocked(LockstepError):
    exit_code = ExitCode.LOCKED
