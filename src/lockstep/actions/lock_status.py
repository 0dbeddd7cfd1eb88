"""`lockstep lock status`: who holds each environment's deploy lock, and whether it is stale.

Each environment's lock of this project, and any lock an older lockstep left under the old key
(`old_key`: every project's environment of that name waits for it, pipeline/environment_lock.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import IntegrityError
from lockstep.pipeline.environment_lock import (
    DEFAULT_STALE_AFTER_SECONDS,
    LockHolder,
    check_environment_name,
    judge_staleness,
    list_locked_environments,
    now_utc,
    read_holder,
    read_old_key_holder,
)
from lockstep.repository.documents import DocumentStore


@dataclass(frozen=True)
class EnvironmentLockStatus:
    """One environment's lock as seen now: its holder (None when unlocked), staleness and why."""

    environment: str
    holder: LockHolder | None
    stale: bool
    reason: str
    damaged: str | None = None
    old_key: bool = False  # a lock under the key an older lockstep used, whatever its project

    @property
    def locked(self) -> bool:
        return self.holder is not None or self.damaged is not None

    def to_document(self) -> dict[str, Any]:
        """What `--json` prints for the environment."""
        holder = self.holder
        return {
            "environment": self.environment,
            "locked": self.locked,
            "stale": self.stale,
            "reason": self.reason,
            "damaged": self.damaged,
            "old_key": self.old_key,
            "holder": None if holder is None else holder.to_document(),
        }


def environment_lock_status(
    store: DocumentStore,
    project: str | None,
    environment: str,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    now: datetime | None = None,
) -> EnvironmentLockStatus:
    """The project's lock of one environment (`project` None: the lock under the old key); a
    damaged lock document is reported, not raised."""
    old_key = project is None
    try:
        if project is None:
            holder = read_old_key_holder(store, environment)
        else:
            holder = read_holder(store, project, environment)
    except IntegrityError as error:
        return EnvironmentLockStatus(environment, None, True, "the lock document is damaged", error.message, old_key)
    if holder is None:
        return EnvironmentLockStatus(environment, None, False, "", old_key=old_key)
    stale, reason = judge_staleness(holder, stale_after, now or now_utc())
    return EnvironmentLockStatus(environment, holder, stale, reason, old_key=old_key)


def lock_status(
    access: RepositoryAccess,
    project: str,
    environment: str | None = None,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    known_environments: Iterable[str] = (),
) -> list[EnvironmentLockStatus]:
    """Just `environment` (locked or not), or every known and every locked environment, sorted;
    after an environment, its lock under the old key when there is one."""
    if environment is not None:
        check_environment_name(environment)
    with access.session(lock=False, load_index=False) as repository:
        store = DocumentStore(repository)
        if environment is not None:
            names = [environment]
        else:
            known = map(check_environment_name, known_environments)
            names = sorted({*known, *list_locked_environments(store, project)})
        now = now_utc()
        statuses = []
        for name in names:
            statuses.append(environment_lock_status(store, project, name, stale_after, now))
            old_key = environment_lock_status(store, None, name, stale_after, now)
            if old_key.locked:
                statuses.append(old_key)
        return statuses
