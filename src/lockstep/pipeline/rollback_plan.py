"""`lockstep rollback --dry-run`: what a rollback would do, changing nothing.

The plan comes from the same decisions as the rollback (Rollback.choose and check_request), so
it refuses where the rollback would (nothing to go back to, --to matching nothing, a newer
schema without --force) with the same exit codes. It reads the agent's status, the history,
the environment lock's holder and, with --with-data, the live databases against the snapshot
(the `snapshot diff` of pipeline/diff.py, as the real rollback shows before asking); it takes no
lock and touches no process, traffic or data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.state import other_slot
from lockstep.pipeline.data_rollback import describe_discarded, summarize_discarded
from lockstep.pipeline.environment_lock import EnvironmentLock, describe_holder, read_old_key_holder
from lockstep.pipeline.notifications import secrets_redactor
from lockstep.pipeline.release_launch import (
    ComponentPlan,
    describe_commands,
    describe_health_gate,
    plan_components,
    traffic_component,
)
from lockstep.pipeline.rollback import Rollback, RollbackRequest, RollbackTarget, warm_in
from lockstep.pipeline.steps import SilentReporter
from lockstep.repository.documents import DocumentStore


@dataclass(frozen=True)
class RollbackPlan:
    """The plan as lines for a person and as a document for --json."""

    lines: list[str]
    document: dict[str, Any]


def plan_rollback(context: EnvironmentContext, request: RollbackRequest) -> RollbackPlan:
    """Every step the rollback would take, or the refusal it would end with."""
    rollback = Rollback(context, request, SilentReporter())  # the plan says it all
    status, active, target = rollback.choose()
    with_data = rollback.check_request(target)
    planner = _Planner(context, request, status, active, target)
    abandoned = [record.id for record in rollback.history.abandoned()]
    lines, document = planner.plan(with_data, abandoned)
    redactor = secrets_redactor(context)  # a hook's token, a database URL's password
    lines = [redactor.redact(line) for line in lines]
    steps = [redactor.redact(step) for step in document["steps"]]
    return RollbackPlan(lines=lines, document={**document, "steps": steps, "plan": lines})


def lock_state(context: EnvironmentContext, request: RollbackRequest) -> str:
    """Whether the environment's lock is free now, in parentheses, and what the rollback does if not."""
    repository = context.project.access.open(load_index=False)
    try:
        store = DocumentStore(repository)
        lock = EnvironmentLock(
            store, context.project.name, context.environment, stale_after=context.config.deploy.lock_stale_after
        )
        holder = lock.current() or read_old_key_holder(store, context.environment)
        if holder is None:
            return "(free now)"
        stale, why = lock.is_stale(holder)
    finally:
        repository.close()
    if stale:
        return f"(held by a stale {describe_holder(holder)}: {why}; the rollback takes it over)"
    waits = f"waits up to {request.lock_wait:.0f} s for it, then " if request.lock_wait else ""
    return f"(HELD NOW by {describe_holder(holder)}: the rollback {waits}exits 4 unless --force)"


class _Planner:
    """The steps of Rollback.run and its _bring_back (or _bring_back_component), in words: kept
    next to them so that a change there shows here (tests/deploy/test_rollback_dry_run.py)."""

    def __init__(
        self,
        context: EnvironmentContext,
        request: RollbackRequest,
        status: dict[str, Any],
        active: str,
        target: RollbackTarget,
    ) -> None:
        self.context = context
        self.config = context.config
        self.request = request
        self.status = status
        self.active = active
        self.idle = other_slot(active)
        self.target = target
        self.release = target.release
        self.release_id = self.release.release_id or ""
        self.release_directory = context.layout.release_directory(self.release_id)
        self.traffic = traffic_component(self.config)

    def plan(self, with_data: bool, abandoned: list[str]) -> tuple[list[str], dict[str, Any]]:
        current = self.status["slots"][self.active]["release"] or {}
        component = self.request.component
        warm = self._warm()
        what = f"{component} of {self.context.environment}" if component else self.context.environment
        steps = [self._lock_line()]
        if abandoned:
            steps.append(f"clean up what the interrupted {', '.join(abandoned)} left, and mark it interrupted")
        data: dict[str, Any] | None = None
        if with_data:
            data, data_steps = self._data()
            steps += data_steps
        if component is not None and component != self.traffic:
            steps += self._worker_component_lines(component)
        elif warm:
            steps += self._warm_lines(with_data)
        else:
            steps += self._cold_lines(with_data)
        lines = [
            f"rollback {what} from release {current.get('release_id') or '(unknown)'} (slot {self.active}) "
            f"to release {self.release_id} ({(self.release.commit or '')[:12]}, {self.release.operation} "
            f"{self.release.id})",
            *(f"{number}. {step}" for number, step in enumerate(steps, start=1)),
            self._failure_line(with_data),
        ]
        document = {
            "environment": self.context.environment,
            "component": component,
            "from": {
                "release_id": current.get("release_id"),
                "slot": self.active,
                "commit": current.get("version"),  # the agent calls the commit a version
            },
            "to": {
                "release_id": self.release_id,
                "commit": self.release.commit,
                "operation_id": self.release.id,
                "slot": self._target_slot(),
                "warm": warm,
                "release_directory": str(self.release_directory),
                "release_directory_exists": self.release_directory.is_dir(),
            },
            "with_data": with_data,
            "data": data,
            "steps": steps,
        }
        return lines, document

    def _target_slot(self) -> str:
        """Where the target runs: a worker rolled back alone is replaced in the active slot."""
        component = self.request.component
        return self.active if component is not None and component != self.traffic else self.idle

    def _warm(self) -> bool:
        if self.request.component is not None and self.request.component != self.traffic:
            return False
        return warm_in(self.status["slots"][self.idle], self.release.release_id, self.traffic)

    def _lock_line(self) -> str:
        return f"lock environment {self.context.environment} in the repository {lock_state(self.context, self.request)}"

    def _data(self) -> tuple[dict[str, Any], list[str]]:
        snapshot_id = self.target.data_snapshot_id
        assert snapshot_id is not None  # check_request refused otherwise
        with self.context.project.access.session(exclusive=False) as repository:
            snapshot = repository.find_snapshot(snapshot_id)
            diffs = describe_discarded(repository, snapshot, self.config)
        discarded = summarize_discarded(diffs)
        confirm = (
            "no question (--yes)"
            if self.request.yes
            else "asks first" + (" (type the environment name)" if self.context.environment == "production" else " (y)")
        )
        workers = self._workers_running()
        # Rollback.run holds traffic only when there is some: workers only, it stops them alone.
        hold = (
            [
                f"hold traffic at {self.config.traffic.listen}: new requests wait (at most "
                f"{self.config.traffic.hold_timeout:.0f} s, then 503) until the older release serves"
            ]
            if self.traffic is not None
            else []
        )
        lines = [
            *hold,
            f"stop workers of slot {self.active}: " + (", ".join(workers) if workers else "none running"),
            f"restore data from snapshot {snapshot.short_id} (taken before the target was replaced), after a "
            f"pre-restore snapshot to undo it; {confirm}; it discards:\n     " + "\n     ".join(discarded),
        ]
        document = {
            "snapshot_id": snapshot.id,
            "databases": [diff.to_document() for diff in diffs],
            "discarded": discarded,
        }
        return document, lines

    def _workers_running(self) -> list[str]:
        processes = self.status["slots"][self.active]["processes"]
        return sorted(
            {process["component"] for process in processes if process["port"] is None} & set(self.config.app.components)
        )

    def _plans(self, slot: str, only: list[str] | None = None) -> list[ComponentPlan]:
        return plan_components(self.config, self.release_directory, self.context.layout.shared, slot, only=only)

    def _directory_line(self) -> list[str]:
        if self.release_directory.is_dir():
            return []
        how = (
            f"or rebuilt from git commit {(self.release.commit or '')[:12]}"
            if self.config.code.kind == "git" and self.release.commit
            else "(refused if none holds it: no git commit to rebuild from)"
        )
        return [f"release directory {self.release_directory} is gone: restored from a snapshot holding it, {how}"]

    def _start_lines(self, slot: str, plans: list[ComponentPlan]) -> list[str]:
        return [
            f"start release {self.release_id} in slot {slot}: {describe_commands(plans)}",
            f"health gate: {describe_health_gate(plans)}",
        ]

    def _retire_line(self, with_data: bool) -> str:
        drain = f"retire slot {self.active} after draining (at most {self.config.traffic.drain_timeout:.0f} s): "
        if self.traffic is None:  # no requests to drain (Rollback._retire's wait returns at once)
            drain = f"retire slot {self.active}: "
        if with_data:
            return drain + "stop all of it (its release expects the data the restore replaces)"
        others = [name for name in self.config.app.components if name != self.traffic]
        kept = f"; {self.traffic} stays warm" if self.traffic else ""
        return drain + (f"stop {', '.join(others)}" if others else "nothing to stop") + kept

    def _warm_lines(self, with_data: bool) -> list[str]:
        traffic = self.traffic or ""
        lines = [
            f"pre-switch check: {traffic} still runs in slot {self.idle}, with at most "
            f"{self.config.deploy.watch_max_exits} exits since the rollback found it warm",
            f"switch traffic at {self.config.traffic.listen} to slot {self.idle}: WARM ({traffic} of release "
            f"{self.release_id} runs there), an instant switch",
        ]
        if self.request.component is not None:
            return lines
        missing = [plan for plan in self._plans(self.idle) if plan.name != traffic]
        if missing:
            lines.append(
                f"start the stopped {', '.join(plan.name for plan in missing)} of release {self.release_id} in "
                f"slot {self.idle}; health gate"
            )
        lines.append(self._retire_line(with_data))
        return lines

    def _cold_lines(self, with_data: bool) -> list[str]:
        only = [self.request.component] if self.request.component is not None else None
        plans = self._plans(self.idle, only)
        lines = self._directory_line()
        lines.append(f"slot {self.idle} is COLD (release {self.release_id} does not run there): it must be started")
        lines += self._start_lines(self.idle, plans)
        lines.append(
            f"pre-switch check: {', '.join(plan.name for plan in plans)} still run, with at most "
            f"{self.config.deploy.watch_max_exits} exits since the health gate"
        )
        if self.traffic is not None:
            lines.append(f"switch traffic at {self.config.traffic.listen} to slot {self.idle}")
        else:
            lines.append(f"slot {self.idle} becomes the active one (workers only: no traffic to switch)")
        if self.request.component is None:
            lines.append(self._retire_line(with_data))
        return lines

    def _worker_component_lines(self, component: str) -> list[str]:
        plans = self._plans(self.active, [component])
        lines = self._directory_line()
        lines += [
            f"replace {component} in slot {self.active} (no traffic moves): stop the running one, "
            f"start release {self.release_id}'s"
        ]
        lines += self._start_lines(self.active, plans)[1:]
        return lines

    def _failure_line(self, with_data: bool) -> str:
        line = "on failure: undo in reverse (exit 3): the release that serves now serves on"
        if with_data and self.traffic is None:
            line += (
                "; the data goes back from the pre-restore snapshot while no worker runs (the older release's "
                "are stopped first, the newer release's started again after it)"
            )
        elif with_data:
            line += (
                "; the data goes back from the pre-restore snapshot while the traffic is still held, "
                "unless the older release already served on the restored data"
            )
        return line
