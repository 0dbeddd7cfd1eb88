"""What lockstep tells the outside world about: one immutable event per noteworthy outcome.

Channels never see an `Event` itself, only its redacted document (`to_document()` passed through
the Redactor), so a secret that slipped into `details` cannot reach Slack, a webhook or a mailbox.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import PurePath
from typing import Any

DEPLOY_STARTED = "deploy.started"
DEPLOY_SUCCEEDED = "deploy.succeeded"
DEPLOY_FAILED = "deploy.failed"
DEPLOY_ROLLED_BACK = "deploy.rolled_back"
ROLLBACK_DONE = "rollback.done"
ROLLBACK_FAILED = "rollback.failed"
SNAPSHOT_CREATED = "snapshot.created"
SNAPSHOT_VERIFIED = "snapshot.verified"
SNAPSHOT_VERIFICATION_FAILED = "snapshot.verification_failed"
BACKUP_FAILED = "backup.failed"
LOCK_BROKEN = "lock.broken"
SNAPSHOT_RPO_EXCEEDED = "snapshot.rpo_exceeded"

EVENT_KINDS: tuple[str, ...] = (
    DEPLOY_STARTED,
    DEPLOY_SUCCEEDED,
    DEPLOY_FAILED,
    DEPLOY_ROLLED_BACK,
    ROLLBACK_DONE,
    ROLLBACK_FAILED,
    SNAPSHOT_CREATED,
    SNAPSHOT_VERIFIED,
    SNAPSHOT_VERIFICATION_FAILED,
    BACKUP_FAILED,
    LOCK_BROKEN,
    SNAPSHOT_RPO_EXCEEDED,
)

# Something went wrong and a person should look (GitHub ::error, Slack red, healthchecks /fail).
FAILURE_KINDS: frozenset[str] = frozenset(
    {DEPLOY_FAILED, DEPLOY_ROLLED_BACK, ROLLBACK_FAILED, SNAPSHOT_VERIFICATION_FAILED, BACKUP_FAILED}
)
# Nothing failed yet, but safety is reduced (GitHub ::warning, Slack yellow).
WARNING_KINDS: frozenset[str] = frozenset({LOCK_BROKEN, SNAPSHOT_RPO_EXCEEDED})


def severity(kind: str) -> str:
    """ "error", "warning" or "info": how loudly a channel should present an event of `kind`."""
    if kind in FAILURE_KINDS:
        return "error"
    if kind in WARNING_KINDS:
        return "warning"
    return "info"


@dataclass(frozen=True)
class Event:
    """One noteworthy outcome. `details` holds JSON-able facts (snapshot ID, commit, error, duration)."""

    kind: str
    environment: str | None
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    deploy_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}: use one of {', '.join(EVENT_KINDS)}")

    def with_environment(self, environment: str | None) -> Event:
        """This event, with `environment` filled in when it had none."""
        if self.environment is not None or environment is None:
            return self
        return dataclasses.replace(self, environment=environment)

    def to_document(self) -> dict[str, Any]:
        """The event as a JSON-able dict: the body of a webhook and one line of the event log."""
        return {
            "kind": self.kind,
            "severity": severity(self.kind),
            "environment": self.environment,
            "deploy_id": self.deploy_id,
            "summary": self.summary,
            "at": _timestamp(self.at),
            "details": jsonable(self.details),
        }


def _timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """`value` with paths, datetimes, enums, sets and other objects turned into JSON types."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(item) for item in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
