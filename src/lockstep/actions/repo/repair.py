"""`lockstep repo repair index`: rebuild the index from the packs' headers."""

from __future__ import annotations

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.repository.repair import ProgressCallback, RepairIndexReport, repair_index


def repair_repository_index(
    access: RepositoryAccess, read_all_packs: bool = False, progress: ProgressCallback | None = None
) -> RepairIndexReport:
    """Rebuild the index under an exclusive lock (as restic's `repair index` does). The index
    is not loaded first: a damaged index file is what this repairs."""
    with access.session(exclusive=True, load_index=False) as repository:
        return repair_index(repository, read_all_packs=read_all_packs, progress=progress)


__all__ = ["RepairIndexReport", "repair_repository_index"]
