"""`lockstep repo check`: verify a repository's structure and, optionally, every byte of its packs."""

from __future__ import annotations

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.repository.checker import Checker, CheckReport, PackSelection, ProgressCallback


def run_check(
    access: RepositoryAccess,
    read_data: bool = False,
    subset: str | None = None,
    progress: ProgressCallback | None = None,
) -> CheckReport:
    """Check the repository; `subset` (`n/t` or `x%`) reads part of the data and implies `read_data`.

    Damage is returned in the report, not raised: the caller decides what it means (the CLI exits
    with ExitCode.INTEGRITY, a test asserts on the messages). Only a repository that cannot be
    opened, locked or listed raises.
    """
    selection: PackSelection | None = None
    if subset is not None:
        selection = PackSelection.parse(subset)
    elif read_data:
        selection = PackSelection()
    # A shared lock: check writes nothing, so backups may go on meanwhile (restic takes an
    # exclusive one). prune and forget take exclusive locks, so nothing disappears under us.
    # The checker loads the index itself, file by file, so one damaged file does not stop it.
    with access.session(exclusive=False, load_index=False) as repository:
        return Checker(repository, progress).run(selection)


# The name other tests and actions use when they only want to know "is the repository sound?".
check_repository = run_check

__all__ = ["CheckReport", "check_repository", "run_check"]
