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
    access: RepositoryAccess, project: str, environment: str, stale_after: float = DEFAULT_STALE_AFTER_SECONDS
) -> EnvironmentLockStatus:
    """The project's lock of the environment as it is now (holder, stale or not and why); when
    that one is free, the lock an older lockstep left under the old key, if any (`old_key`)."""
    with access.session(lock=False, load_index=False) as repository:
        store = DocumentStore(repository)
        status = environment_lock_status(store, project, environment, stale_after)
        if status.locked:
            return status
        old_key = environment_lock_status(store, None, environment, stale_after)
        return old_key if old_key.locked else status


def release_lock(
    access: RepositoryAccess, project: str | None, environment: str, expected_lock_id: str | None
) -> LockHolder | None:
    """Remove the project's lock (None: the one under the old key) if it is still
    `expected_lock_id` (None: whatever is there, damaged included).

    Returns the holder removed. Raises EnvironmentLocked when another lock replaced the one shown.
    """
    with access.session(lock=False, load_index=False) as repository:
        return break_lock(DocumentStore(repository), project, environment, expected_lock_id=expected_lock_id)
