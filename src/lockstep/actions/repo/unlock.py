"""`lockstep repo unlock`: remove stale locks (or all of them)."""

from __future__ import annotations

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.repository.locks import LockInfo, list_locks, remove_locks


def unlock(access: RepositoryAccess, remove_all: bool = False) -> tuple[list[LockInfo], list[LockInfo]]:
    """Returns (removed, still held)."""
    repository = access.open(load_index=False)
    try:
        removed = remove_locks(repository, remove_all=remove_all)
        return removed, list_locks(repository)
    finally:
        repository.close()
