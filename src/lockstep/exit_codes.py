"""Exit codes are part of lockstep's API: scripts and CI branch on them.

They are documented in docs/exit-codes.md; a test keeps the two in step.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status lockstep can return."""

    OK = 0
    FAILED = 1  # the command ran and failed (a generic error)
    USAGE = 2  # bad arguments or configuration: fix the command line
    ROLLED_BACK = 3  # a deploy failed and was rolled back: the old release serves
    LOCKED = 4  # the repository or environment is locked by someone else (or its agent already runs)
    NO_REPOSITORY = 10  # no repository at that location: run `lockstep repo init`
    WRONG_PASSWORD = 11  # no key in the repository opens with this password
    INTEGRITY = 12  # data in the repository is damaged: a check or a read found it
    NOT_FOUND = 13  # a snapshot, path or key that was asked for does not exist
    STORAGE = 14  # the storage (disk, S3) failed: full, unreachable, no permission
    SOURCE = 15  # the data to back up could not be read (a command failed, an empty stream)
    INTERRUPTED = 130  # Ctrl-C, SIGTERM or SIGHUP
