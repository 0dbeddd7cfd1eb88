"""`lockstep repo prune`: free the space of data that no snapshot needs any more."""

from __future__ import annotations

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.repository.pruner import ProgressCallback, PruneOptions, PruneReport, prune


def prune_repository(
    access: RepositoryAccess, options: PruneOptions, progress: ProgressCallback | None = None
) -> PruneReport:
    """Plan and carry out a prune under an exclusive lock (a dry run takes the lock too, as
    restic's does, so the plan it reports is the one a real run would make)."""
    with access.session(exclusive=True, load_index=False) as repository:
        return prune(repository, options, progress=progress)
