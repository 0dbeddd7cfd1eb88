"""The JSON documents the dashboard page renders: status, timeline, snapshots, rollback preview.

They are plain data; the page puts every string in with `textContent`, and the server passes
each document through the redactor before sending it, so neither markup nor secrets get through.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from lockstep.agent.dashboard.collector import DashboardData, HealthResult, RepositoryView, SnapshotInfo
from lockstep.errors import LockstepError, UsageError
from lockstep.pipeline.data_rollback import describe_discarded, summarize_discarded
from lockstep.pipeline.deploy import migration_version
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.release_launch import runs_workers_only
from lockstep.pipeline.rollback import RollbackRequest, choose_target
from lockstep.pipeline.verification_records import describe_state

TIMELINE_LENGTH = 200


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _health_document(results: list[HealthResult] | None, slot: str) -> dict[str, Any]:
    if results is None:
        return {}
    return {
        result.component: {"ok": result.ok, "reason": result.reason, "seconds": round(result.seconds, 4)}
        for result in results
        if result.slot == slot
    }


def environment_document(data: DashboardData) -> dict[str, Any]:
    """Active slot, release, commit, since when, health and lock: what `lockstep status` shows.
    An app of workers only has no URL (`url` None, `workers_only` true), as in `lockstep status`:
    nothing answers at the proxy's address."""
    status = data.status()
    health = data.health()
    view = data.repository()
    active = status.get("active_slot")
    slots = {}
    for slot, document in status["slots"].items():
        release = document["release"]
        slots[slot] = {
            "release": release["release_id"] if release else None,
            "commit": release["version"] if release else None,
            "since": _iso(release["started_at"]) if release else None,
            "processes": [
                {key: process[key] for key in ("component", "pid", "port", "running", "crash_looped")}
                for process in document["processes"]
            ],
            "health": _health_document(health, slot),
        }
    records = data.history()
    last = records[-1] if records else None
    workers_only = runs_workers_only(data.context.config, status["slots"][active]["processes"] if active else None)
    return {
        "environment": data.context.environment,
        "url": None if workers_only else f"http://{data.context.config.traffic.listen}/",
        "workers_only": workers_only,
        "active_slot": active,
        "release": slots[active]["release"] if active else None,
        "commit": slots[active]["commit"] if active else None,
        "since": slots[active]["since"] if active else None,
        "slots": slots,
        "lock": (view.lock or {"state": "unknown"}) if view is not None and not view.error else {"state": "unknown"},
        "repository": _repository_state(view),
        "last_operation": None if last is None else _operation_entry(last),
        "now": _iso(time.time()),
    }


def _repository_state(view: RepositoryView | None) -> dict[str, Any]:
    if view is None:
        return {"state": "reading"}
    if view.error:
        return {"state": "unreadable", "detail": view.error, "read_at": _iso(view.read_at)}
    return {"state": "ok", "read_at": _iso(view.read_at), "seconds": round(view.seconds, 3)}


def _operation_entry(record: OperationRecord) -> dict[str, Any]:
    return {
        "type": record.operation,
        "id": record.id,
        "time": _iso(record.started_at),
        "outcome": record.outcome,
        "release": record.release_id,
        "commit": record.commit,
        "message": record.message,
        "duration": None if record.duration is None else round(record.duration, 1),
        "data_restored": record.data_restored,
        "reason": record.reason,
        "performer": record.performer,
    }


def _snapshot_entry(snapshot: SnapshotInfo) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "short_id": snapshot.short_id,
        "time": _iso(snapshot.time),
        "kind": snapshot.kind,
        "message": snapshot.message,
        "size": snapshot.size,
        "commit": snapshot.commit,
        "databases": snapshot.databases,
        "seconds": None if snapshot.seconds is None else round(snapshot.seconds, 1),
        "verified": describe_state(snapshot.verification),
        "verification_ok": None if snapshot.verification is None else snapshot.verification.ok,
    }


def snapshots_document(data: DashboardData) -> dict[str, Any]:
    """The environment's snapshots, newest first, with size and verification state."""
    view = data.repository()
    snapshots = [] if view is None else sorted(view.snapshots, key=lambda snapshot: snapshot.time, reverse=True)
    return {"repository": _repository_state(view), "snapshots": [_snapshot_entry(item) for item in snapshots]}


def timeline_document(data: DashboardData) -> dict[str, Any]:
    """Deploys, rollbacks, snapshots and verifications, newest first."""
    entries = [_operation_entry(record) for record in data.history()]
    view = data.repository()
    for snapshot in [] if view is None else view.snapshots:
        entries.append(
            {
                "type": "snapshot",
                "id": snapshot.short_id,
                "time": _iso(snapshot.time),
                "outcome": snapshot.kind,
                "message": snapshot.message,
                "size": snapshot.size,
                "commit": snapshot.commit,
            }
        )
        result = snapshot.verification
        if result is not None:
            entries.append(
                {
                    "type": "verification",
                    "id": snapshot.short_id,
                    "time": result.started.replace("+00:00", "Z"),
                    "outcome": "passed" if result.ok else "failed",
                    "message": f"{result.level} verification of snapshot {snapshot.short_id}"
                    + ("" if result.ok else ": " + "; ".join(f"{f.subject}: {f.message}" for f in result.findings[:3])),
                    "duration": round(result.seconds, 1),
                }
            )
    entries.sort(key=lambda entry: entry.get("time") or "", reverse=True)
    return {"repository": _repository_state(view), "entries": entries[:TIMELINE_LENGTH]}


def _current_release(data: DashboardData) -> str | None:
    status = data.status()
    active = status.get("active_slot")
    release = status["slots"][active]["release"] if active else None
    return str(release["release_id"]) if release else None


def rollback_targets(data: DashboardData) -> dict[str, Any]:
    """Every release a rollback can go to (what `lockstep rollback --to` accepts), newest first;
    `default` is the one a rollback without a choice goes to."""
    current = _current_release(data)
    latest: dict[str, OperationRecord] = {}
    for record in data.history_store.successful_deploys():  # one entry per release: its latest operation
        if record.release_id and record.component is None:
            latest.pop(record.release_id, None)
            latest[record.release_id] = record
    try:
        default: str | None = choose_target(data.history_store, current, RollbackRequest()).release.release_id
    except LockstepError:
        default = None
    targets = [
        {
            "release": record.release_id,
            "commit": record.commit,
            "message": record.message,
            "time": _iso(record.started_at),
            "operation": record.operation,
            "default": record.release_id == default,
        }
        for record in reversed(latest.values())
        if record.release_id != current
    ]
    return {"current_release": current, "default": default, "targets": targets}


def resolve_rollback_target(data: DashboardData, to: str | None) -> str | None:
    """The release ID `to` names, checked as `lockstep rollback --to` would (None: the default
    target, chosen by the rollback itself); raises a clear error for anything else."""
    if to is None:
        return None
    if not to or to.startswith("-") or len(to) > 200 or not all(c.isalnum() or c in "._:-" for c in to):
        raise UsageError("that is not a release ID", "pick a release from the list")
    target = choose_target(data.history_store, _current_release(data), RollbackRequest(to=to))
    return target.release.release_id


def rollback_preview(data: DashboardData, with_data: bool, to: str | None = None) -> dict[str, Any]:
    """Where a rollback would go (the previous release, or `to`) and, with the data, what the
    restore would throw away."""
    status = data.status()
    active = status.get("active_slot")
    environment = data.context.environment
    preview: dict[str, Any] = {"environment": environment, "with_data": with_data, "possible": False}
    if not active:
        preview["reason"] = f"nothing is deployed in {environment}"
        return preview
    current = status["slots"][active]["release"]
    try:
        target = choose_target(data.history_store, current["release_id"] if current else None, RollbackRequest(to=to))
    except LockstepError as error:
        preview["reason"] = str(error)
        return preview
    preview.update(
        current_release=current["release_id"] if current else None,
        target_release=target.release.release_id,
        target_commit=target.release.commit,
        target_message=target.release.message,
        data_snapshot=target.data_snapshot_id[:8] if target.data_snapshot_id else None,
        discarded=[],
    )
    if not with_data:
        return _code_only_preview(data, preview, target.release.release_id, target.migration_version)
    if target.data_snapshot_id is None:
        preview["reason"] = f"there is no snapshot of the data as it was under {target.release.release_id}"
        return preview
    try:
        with data.context.project.access.session(lock=False) as repository:
            snapshot = repository.find_snapshot(target.data_snapshot_id)
            preview["discarded"] = summarize_discarded(describe_discarded(repository, snapshot, data.context.config))
    except LockstepError as error:
        preview["reason"] = f"cannot tell what a restore would discard: {error}"
        return preview
    preview["possible"] = True
    return preview


def _code_only_preview(
    data: DashboardData, preview: dict[str, Any], release_id: str | None, expected: str | None
) -> dict[str, Any]:
    """A code-only rollback onto a newer schema is refused by `lockstep rollback`: say so up front."""
    try:
        current = migration_version(data.context)
    except LockstepError as error:
        preview["reason"] = f"cannot read the database's migration version: {error}"
        return preview
    if _newer(current, expected):
        preview["reason"] = (
            f"release {release_id} expects migration version {expected}, but the database is at {current}: "
            "old code on a newer schema can damage data; roll back with the data"
        )
        return preview
    preview["possible"] = True
    return preview


def _newer(current: str | None, expected: str | None) -> bool:
    """The same comparison `lockstep rollback` makes: numerically when both are numbers."""
    if current is None or expected is None:
        return False
    if current.isdigit() and expected.isdigit():
        return int(current) > int(expected)
    return current > expected
