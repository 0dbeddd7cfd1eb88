"""`lockstep lock acquire -m MESSAGE`: hold an environment's deploys off by hand.

For work that must not meet a deploy or a rollback (a maintenance window, a migration run outside
lockstep, an incident): the lock is taken for a person, not a process, says why, and is never
stale, so deploys and rollbacks wait or refuse, naming it, until `lockstep lock release`. A
running deploy is waited for (`wait`), as another deploy would; a stale lock is taken over.
"""

from __future__ import annotations

from collections.abc import Callable

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import UsageError
from lockstep.pipeline.environment_lock import (
    DEFAULT_STALE_AFTER_SECONDS,
    EnvironmentLock,
    LockHolder,
    check_environment_name,
)
from lockstep.repository.documents import DocumentStore

# A message long enough to say why, short enough for one line of `lock status`.
MESSAGE_MAX_CHARACTERS = 500


def acquire_lock(
    access: RepositoryAccess,
    project: str,
    environment: str,
    message: str,
    *,
    wait: float = 0.0,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    on_stale: Callable[[LockHolder], None] | None = None,
) -> LockHolder:
    """Take the project's lock of the environment by hand with `message`; the holder written. Raises
    EnvironmentLocked (naming the holder) when another holds it past `wait` seconds."""
    check_environment_name(environment)
    message = message.strip()
    if not message:
        raise UsageError(
            "a lock taken by hand needs a message saying why",
            'pass -m "what you are doing", e.g. -m "database maintenance until 14:00"',
        )
    if len(message) > MESSAGE_MAX_CHARACTERS or "\n" in message:
        raise UsageError(
            f"the lock's message must be one line of at most {MESSAGE_MAX_CHARACTERS} characters",
            "say why in a sentence; details belong in your team's channel",
        )
    with access.session(lock=False, load_index=False) as repository:
        lock = EnvironmentLock(DocumentStore(repository), project, environment, stale_after=stale_after)
        lock.acquire(LockHolder.by_hand(environment, message), wait=wait, on_stale=on_stale)
        assert lock.holder is not None
        return lock.holder
