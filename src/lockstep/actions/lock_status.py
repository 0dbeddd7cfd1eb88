"""`lockstep lock status`: who holds each environment's deploy lock, and whether it is stale."""

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
            "holder": None if holder is None else holder.to_document(),
        }


def environment_lock_status(
    store: DocumentStore,
    environment: str,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    now: datetime | None = None,
) -> EnvironmentLockStatus:
    """The lock of one environment; a damaged lock document is reported, not raised."""
    try:
        holder = read_holder(store, environment)
    except IntegrityError as error:
        return EnvironmentLockStatus(environment, None, True, "the lock document is damaged", error.message)
    if holder is None:
        return EnvironmentLockStatus(environment, None, False, "")
    stale, reason = judge_staleness(holder, stale_after, now or now_utc())
    return EnvironmentLockStatus(environment, holder, stale, reason)


def lock_status(
    access: RepositoryAccess,
    environment: str | None = None,
    stale_after: float = DEFAULT_STALE_AFTER_SECONDS,
    known_environments: Iterable[str] = (),
) -> list[EnvironmentLockStatus]:
    """Just `environment` (locked or not), or every known and every locked environment, sorted."""
    if environment is not None:
        check_environment_name(environment)
    with access.session(lock=False, load_index=False) as repository:
        store = DocumentStore(repository)
        if environment is not None:
            names = [environment]
        else:
            names = sorted({*map(check_environment_name, known_environments), *list_locked_environments(store)})
        now = now_utc()
        return [environment_lock_status(store, name, stale_after, now) for name in names]
