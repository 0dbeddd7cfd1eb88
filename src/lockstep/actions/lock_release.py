"""`lockstep lock release`: remove an environment's deploy lock left by a deploy that is gone.

Two steps, so the CLI can show the holder and ask before anything changes: `inspect_lock`, then
`release_lock` with the lock ID that was shown, which refuses if the lock changed meanwhile.
"""

from __future__ import annotations

from lockstep.actions.lock_status import EnvironmentLockStatus, environment_lock_status
from lockstep.actions.repo.session import RepositoryAccess
from lockstep.pipeline.environment_lock import DEFAULT_STALE_AFTER_SECONDS, LockHolder, break_lock
from lockstep.repository.documents import DocumentStore


def inspect_lock(
    access: RepositoryAccess, environment: str, stale_after: float = DEFAULT_STALE_AFTER_SECONDS
) -> EnvironmentLockStatus:
    """The environment's lock as it is now (holder, stale or not and why)."""
    with access.session(lock=False, load_index=False) as repository:
        return environment_lock_status(DocumentStore(repository), environment, stale_after)


def release_lock(access: RepositoryAccess, environment: str, expected_lock_id: str | None) -> LockHolder | None:
    """Remove the lock if it is still `expected_lock_id` (None: whatever is there, damaged included).

    Returns the holder removed. Raises EnvironmentLocked when another lock replaced the one shown.
    """
    with access.session(lock=False, load_index=False) as repository:
        return break_lock(DocumentStore(repository), environment, expected_lock_id=expected_lock_id)
