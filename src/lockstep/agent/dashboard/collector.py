"""What the dashboard and /metrics show, gathered from the agent, the history and the repository.

The agent's own state and the history are local and cheap: read on every request. The
repository (snapshots, manifests, verification records, the environment lock) may be remote
and slow, and health checks may hang until their timeout, so both are read by background
threads and cached: a request gets the last result at once and a refresh starts when it is
stale (or, for the repository, when the history shows a new operation that made a snapshot).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep.actions.environment import EnvironmentContext, snapshot_environments
from lockstep.actions.snapshot_list import lockstep_snapshots
from lockstep.agent.dashboard.cache import BackgroundValue
from lockstep.agent.service import AgentService
from lockstep.errors import LockstepError
from lockstep.health.checks import run_check
from lockstep.pipeline.environment_lock import describe_holder, judge_staleness, read_blocking_holder
from lockstep.pipeline.history import History, OperationRecord
from lockstep.pipeline.manifest import Manifest
from lockstep.pipeline.release_launch import ComponentPlan, plan_components
from lockstep.pipeline.retention_policy import snapshot_environment
from lockstep.pipeline.snapshot import load_manifest
from lockstep.pipeline.verification_records import VerificationResult, latest_results
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot

REPOSITORY_MAX_AGE = 60.0
HEALTH_MAX_AGE = 3.0


@dataclass(frozen=True)
class SnapshotInfo:
    """One coordinated snapshot of the environment, as the dashboard lists it."""

    id: str
    time: float  # seconds since the epoch
    kind: str
    message: str | None
    size: int
    commit: str | None
    databases: list[str]
    verification: VerificationResult | None
    seconds: float | None  # how long taking it took, when the history knows
    schema_only: bool = False  # the databases' structure only: no backup of the data

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def good(self) -> bool:
        """Usable for a restore as far as we know: not failed its latest verification."""
        return self.verification is None or self.verification.ok


@dataclass(frozen=True)
class RepositoryView:
    """The repository as last read; `error` says why it could not be (no password, unreachable)."""

    snapshots: list[SnapshotInfo] = field(default_factory=list)
    lock: dict[str, Any] = field(default_factory=dict)
    read_at: float = 0.0
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class HealthResult:
    slot: str
    component: str
    ok: bool
    reason: str
    seconds: float
    checked_at: float


class DashboardData:
    """The one source of everything the dashboard shows, for one environment."""

    def __init__(
        self,
        context: EnvironmentContext,
        service: AgentService,
        repository_max_age: float = REPOSITORY_MAX_AGE,
        health_max_age: float = HEALTH_MAX_AGE,
    ) -> None:
        self.context = context
        self.service = service
        self.history_store = History(context.layout.history_database)
        # Scheduled backups of an environment without its own table are tagged `default`.
        self._snapshot_environments = snapshot_environments(context)
        self._manifests: dict[str, Manifest] = {}
        self._manifests_lock = threading.Lock()
        self._repository = BackgroundValue(self._read_repository, repository_max_age, "dashboard-repository")
        self._health = BackgroundValue(self._check_health, health_max_age, "dashboard-health")
        self._seen_operations: tuple[int, float | None] | None = None

    # -- local, cheap ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.service.status()

    def history(self) -> list[OperationRecord]:
        """Every deploy and rollback, oldest first; notices new ones so the snapshot list follows."""
        records = self.history_store.all()
        marker = (len(records), records[-1].finished_at if records else None)
        if self._seen_operations is not None and marker != self._seen_operations:
            self._repository.invalidate()
        self._seen_operations = marker
        return records

    # -- cached, read in the background ----------------------------------------------------------

    def repository(self, wait: float = 0.0) -> RepositoryView | None:
        """The last repository view (None before the first read finished)."""
        self.history()
        return self._repository.get(wait)

    def health(self, wait: float = 0.0) -> list[HealthResult] | None:
        return self._health.get(wait)

    def refresh_repository(self) -> None:
        """Read the repository again on the next request (after a rollback, for instance)."""
        self._repository.invalidate()

    def _read_repository(self) -> RepositoryView:
        started = time.monotonic()
        access = self.context.project.access
        try:
            with access.session(lock=False) as repository:
                snapshots = [
                    snapshot
                    for snapshot in lockstep_snapshots(repository, self.context.project.name)
                    if snapshot_environment(snapshot) in self._snapshot_environments
                ]
                verifications = latest_results(repository, [snapshot.id for snapshot in snapshots])
                durations = _snapshot_durations(self.history_store.all())
                listed = []
                for snapshot in snapshots:
                    manifest = self._manifest(repository, snapshot)
                    listed.append(
                        SnapshotInfo(
                            id=snapshot.id,
                            time=snapshot.time_ns / 1e9,
                            kind=manifest.kind,
                            message=manifest.message,
                            size=manifest.stored_size,
                            commit=manifest.code.commit if manifest.code is not None else None,
                            databases=sorted(manifest.databases),
                            verification=verifications.get(snapshot.id),
                            seconds=durations.get(snapshot.id),
                            schema_only=manifest.schema_only,
                        )
                    )
                lock = self._lock_document(DocumentStore(repository))
        except LockstepError as error:
            return RepositoryView(read_at=time.time(), seconds=time.monotonic() - started, error=str(error))
        except Exception as error:  # a broken repository must not take the dashboard down
            return RepositoryView(
                read_at=time.time(), seconds=time.monotonic() - started, error=f"{type(error).__name__}: {error}"
            )
        return RepositoryView(snapshots=listed, lock=lock, read_at=time.time(), seconds=time.monotonic() - started)

    def _manifest(self, repository: Repository, snapshot: Snapshot) -> Manifest:
        """Manifests never change once written: each is read once per agent."""
        with self._manifests_lock:
            cached = self._manifests.get(snapshot.id)
        if cached is None:
            cached = load_manifest(repository, snapshot)
            with self._manifests_lock:
                self._manifests[snapshot.id] = cached
        return cached

    def _lock_document(self, store: DocumentStore) -> dict[str, Any]:
        try:
            holder = read_blocking_holder(store, self.context.project.name, self.context.environment)
        except LockstepError as error:
            return {"state": "unknown", "detail": str(error)}
        if holder is None:
            return {"state": "unlocked"}
        stale, reason = judge_staleness(holder, self.context.config.deploy.lock_stale_after)
        return {"state": "stale" if stale else "locked", "detail": describe_holder(holder) + f" ({reason})"}

    def _check_health(self) -> list[HealthResult]:
        """Each running component's health check, all at once, so one slow check does not delay the rest."""
        status = self.service.status()
        work: list[tuple[str, ComponentPlan]] = []
        for slot, document in status["slots"].items():
            release = document["release"]
            if release is None:
                continue
            running = {process["component"] for process in document["processes"] if process["running"]}
            try:
                plans = plan_components(
                    self.context.config, Path(release["release_directory"]), self.context.layout.shared, slot
                )
            except LockstepError:
                continue
            work.extend((slot, plan) for plan in plans if plan.health is not None and plan.name in running)
        if not work:
            return []

        def check(item: tuple[str, ComponentPlan]) -> HealthResult:
            slot, plan = item
            assert plan.health is not None
            try:
                result = run_check(plan.health)
                return HealthResult(slot, plan.name, result.ok, result.reason, result.elapsed, time.time())
            except LockstepError as error:
                return HealthResult(slot, plan.name, False, str(error), 0.0, time.time())

        with ThreadPoolExecutor(max_workers=min(8, len(work)), thread_name_prefix="dashboard-check") as pool:
            return list(pool.map(check, work))


def _snapshot_durations(records: list[OperationRecord]) -> dict[str, float]:
    """Seconds each snapshot took, from the history: a deploy's `snapshot` step, or a whole scheduled backup."""
    durations: dict[str, float] = {}
    for record in records:
        if not record.snapshot_id:
            continue
        step = next((step for step in record.steps if step.get("step") == "snapshot"), None)
        if step is not None and step.get("outcome") == "ok":  # not "failed", nor "running" (no duration yet)
            durations[record.snapshot_id] = float(step.get("seconds") or 0.0)
        elif record.operation.endswith("backup") and record.duration is not None:  # scheduled-backup
            durations[record.snapshot_id] = record.duration
    return durations
