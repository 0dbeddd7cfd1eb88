"""`lockstep rollback`: back to an earlier release, and to its data when asked.

The target is the previous successful release (or STEPS back, or --to ID). When its slot is
still warm, traffic simply moves back: well under a second. Otherwise the release is started in
the idle slot from its release directory, rebuilt from git when that directory is gone.

A code-only rollback to a release that expects an older migration version than the database has
is refused: old code on a newer schema is how data gets damaged. With --with-data the databases
are restored from the snapshot taken just before the target release was replaced, after showing
what that discards, asking, and taking a pre-restore snapshot. Traffic is held meanwhile (see
pipeline/traffic_hold.py): hold, stop the newer release's workers, restore the data, switch to
the older release, release the held requests to it. An app of workers only has no traffic to
hold: its workers are stopped, the data restored, then the older release's workers start. A
failure before the switch puts the data back as it was just before the rollback, still under
the hold, so the release that served before serves on its own data again; once the older
release serves on its data (workers only: once its slot is the active one), the rollback is past
undoing (see Rollback._restore and Rollback._switched)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockstep.actions.environment import EnvironmentContext
from lockstep.agent.state import other_slot
from lockstep.config.deploy_model import effective_policy
from lockstep.errors import LockstepError, NotFound, UsageError
from lockstep.fault_injection import kill_point
from lockstep.notify.events import ROLLBACK_DONE, ROLLBACK_FAILED
from lockstep.pipeline.data_rollback import describe_discarded, restore_snapshot_data, summarize_discarded
from lockstep.pipeline.deploy import (
    DeployFailed,
    DeployRolledBack,
    clean_up_abandoned,
    health_gate,
    migration_version,
    run_hook,
)
from lockstep.pipeline.environment_lock import EnvironmentLock, LockHolder
from lockstep.pipeline.history import History, OperationRecord, RedactedRecord
from lockstep.pipeline.notifications import notifier_for, operation_event, secrets_redactor, teach_reporter_secrets
from lockstep.pipeline.release_launch import plan_components, traffic_component
from lockstep.pipeline.releases import build_release_directory
from lockstep.pipeline.restore import restore_code
from lockstep.pipeline.slot_exits import GATE_WINDOW, PRE_SWITCH_CHECK_STEP, SlotExits, check_before_switch
from lockstep.pipeline.snapshot import RELEASE_TAG_PREFIX, is_of_project, load_manifest
from lockstep.pipeline.steps import Reporter, StepFailed, StepRunner, bind_context
from lockstep.pipeline.traffic_hold import TrafficHold
from lockstep.pipeline.worker_pause import last_event_id, restart_failed, wait_until_up
from lockstep.repository.documents import DocumentStore
from lockstep.wording import counted

# How the pre-switch check names the time a warm slot's process exited in.
WARM_WINDOW = "since this rollback found its slot warm"


@dataclass(frozen=True)
class RollbackRequest:
    steps: int = 1
    to: str | None = None
    with_data: bool = False
    code_only: bool = False
    yes: bool = False
    force: bool = False
    lock_wait: float = 0.0
    dry_run: bool = False
    component: str | None = None  # roll back only this component
    # A host's part of a rollback of several hosts (pipeline/multi_host_rollback.py): the
    # orchestrator's operation ID, whose lock this rollback joins; it waits at barriers.
    coordinated: str | None = None
    # With --with-data, a host other than the primary: it holds its traffic and stops its workers
    # while the primary restores the shared databases, then switches with every host.
    secondary: bool = False


@dataclass(frozen=True)
class RollbackTarget:
    """The release to go back to, and the snapshot holding the data as it was when it served."""

    release: OperationRecord
    data_snapshot_id: str | None  # pre-deploy snapshot of the deploy that replaced it
    migration_version: str | None


def _release_history(history: History) -> list[OperationRecord]:
    """Successful operations that put a release in service, oldest first."""
    return history.successful_deploys()


def serving_stack(served: list[OperationRecord]) -> list[str]:
    """The releases that served, as a stack: a deploy pushes its release, a rollback pops back to
    the release it brought back (or pushes it, when --to named one that had left the stack).

    So after 1, 2, rollback (to 1), 3 the stack is [1, 3]: the release before 3 is 1, which served
    before it, not 2, which was rolled back from. A rollback of one component leaves it alone.
    """
    stack: list[str] = []
    for record in served:
        release = record.release_id
        if not release or record.component is not None:
            continue
        if record.operation == "rollback" and release in stack:
            del stack[len(stack) - stack[::-1].index(release) :]
        elif not stack or stack[-1] != release:
            stack.append(release)
    return stack


def nothing_deployed(environment: str | None) -> NotFound:
    """The refusal of a rollback where no release ever served: exit 13, as where only one did
    (there is no earlier release either way), whatever the request (STEPS, --to, --dry-run, one
    host or several)."""
    where = f" in {environment}" if environment else ""
    return NotFound(
        f"nothing is deployed{where}, so there is no release to roll back to",
        "deploy first with `lockstep deploy`",
    )


def refuse_if_never_deployed(history: History, environment: str) -> None:
    """Before anything else is asked (the agent, the hosts): a project never deployed has no
    agent running either, and "agent not running" would send the user after the wrong problem."""
    if not _release_history(history):
        raise nothing_deployed(environment)


def _nothing_before(stack: list[str], current: str | None, steps: int, served: list[OperationRecord]) -> NotFound:
    """The refusal of a rollback STEPS back from `current` where fewer releases served before it."""
    if not stack:
        return nothing_deployed(served[-1].environment if served else None)
    environment = served[-1].environment
    earlier = len(stack) - 1 - stack[::-1].index(current) if current in stack else len(stack)
    if earlier == 0:
        return NotFound(
            f"release {current} is the first release deployed in {environment}, so there is no release to roll back to",
            "the first deploy cannot be rolled back; deploy the release you want with `lockstep deploy` "
            "(`lockstep history` lists what was deployed)",
        )
    before = f"before release {current} " if current in stack else ""
    return NotFound(
        f"only {counted(earlier, 'release')} served {before}in {environment}, "
        f"so there is no release {steps} steps back to roll back to",
        f"roll back at most {counted(earlier, 'step')}, or name the release with --to (`lockstep history` lists them)",
    )


def choose_target(history: History, current_release_id: str | None, request: RollbackRequest) -> RollbackTarget:
    """The release to roll back to, per STEPS or --to, with the data snapshot that goes with it."""
    served = _release_history(history)
    releases: list[OperationRecord] = []
    for record in served:  # one entry per release, the latest operation that served it
        releases = [item for item in releases if item.release_id != record.release_id] + [record]
    if request.to is not None:
        matches = [
            record
            for record in releases
            if (record.release_id or "").startswith(request.to)
            or (record.commit or "").startswith(request.to)
            or record.id.startswith(request.to)
        ]
        if not matches:
            raise NotFound(f"no successful release matches {request.to!r}", "see `lockstep history` for the IDs")
        if len({record.release_id for record in matches}) > 1:
            raise UsageError(f"{request.to!r} matches several releases", "give more characters of the ID")
        target = matches[-1]
    else:
        stack = serving_stack(served)
        if current_release_id in stack:
            index = len(stack) - 1 - stack[::-1].index(current_release_id) - request.steps
        else:
            index = len(stack) - request.steps
        if index < 0 or not stack:
            raise _nothing_before(stack, current_release_id, request.steps, served)
        target = next(record for record in reversed(releases) if record.release_id == stack[index])
    if target.release_id == current_release_id:
        raise UsageError(f"release {target.release_id} is already serving", "name another release with --to")
    # The data as it was while the target served: the pre-deploy snapshot of the deploy that
    # replaced it. Deploys that failed in between do not count: the target went on serving after
    # them, and their snapshots miss everything written since.
    successor = next(
        (
            record
            for record in history.all()
            if record.operation == "deploy" and record.outcome == "succeeded" and record.started_at > target.started_at
        ),
        None,
    )
    snapshot_id = successor.snapshot_id if successor is not None else None
    version = target.migration_after if target.migrations_ran else target.migration_before
    return RollbackTarget(release=target, data_snapshot_id=snapshot_id, migration_version=version)


def warm_in(slot: dict[str, Any], release_id: str | None, component: str | None) -> bool:
    """Whether `slot` (the agent's status of it) runs `release_id`'s traffic component: then the
    rollback only moves the traffic there."""
    release = slot["release"] or {}
    return (
        release_id is not None
        and release.get("release_id") == release_id
        and any(process["component"] == component and process["running"] for process in slot["processes"])
    )


def _newer(current: str | None, target: str | None) -> bool:
    if current is None or target is None:
        return False
    if current.isdigit() and target.isdigit():
        return int(current) > int(target)
    return current > target


class Rollback:
    """One run of `lockstep rollback` for one environment."""

    def __init__(self, context: EnvironmentContext, request: RollbackRequest, reporter: Reporter) -> None:
        self.context = context
        self.request = request
        self.reporter = reporter
        self.config = context.config
        self.policy = effective_policy(self.config.policy, context.environment)
        self.agent = context.agent(wait_for_restart=True)
        self.redactor = secrets_redactor(context)
        teach_reporter_secrets(reporter, self.redactor)
        self.history = History(context.layout.history_database, self.redactor)
        self.steps = StepRunner(reporter)
        self.traffic_hold: TrafficHold | None = None
        self.joined_lock: EnvironmentLock | None = None
        # With --with-data: the pre-restore snapshot the unwind put the data back from, and
        # whether the older release serves on its restored data (past undoing).
        self.data_put_back_from: str | None = None
        self.serves_restored_data = False
        self.paused_in: OperationRecord | None = None  # the record that says its workers are stopped
        # The agent's last event when this rollback read the slots: a warm slot judged by that
        # status must not have exited since (the pre-switch check, _check_before_switch).
        self.decided_at_event: int | None = None
        # A coordinated rollback told "go" at its retire barrier: every host keeps the release now.
        self.past_retire_go = False

    def choose(self) -> tuple[dict[str, Any], str, RollbackTarget]:
        """The agent's status, the active slot and the target, or the refusal a rollback would
        end with (no release to go back to, --to matching nothing). Changes nothing, so the dry
        run (pipeline/rollback_plan.py) refuses exactly where the rollback would."""
        refuse_if_never_deployed(self.history, self.context.environment)
        status = self.agent.status()
        self.decided_at_event = int(status["last_event_id"])
        active = status.get("active_slot")
        if not active:
            raise nothing_deployed(self.context.environment)
        current = status["slots"][active]["release"]
        target = choose_target(self.history, current["release_id"] if current else None, self.request)
        return status, str(active), target

    def check_request(self, target: RollbackTarget) -> bool:
        """The refusals of the request itself (--component, a newer schema, no data snapshot);
        returns whether the data is restored too."""
        self._check_component()
        return self._decide_data(target)

    def run(self) -> OperationRecord:
        status, active, target = self.choose()
        current = status["slots"][active]["release"]
        release = target.release
        record = OperationRecord.started_now(
            self.request.coordinated
            or self.history.unused_id(f"{time.strftime('%Y%m%d_%H%M%S', time.gmtime())}_rollback"),
            "rollback",
            self.context.environment,
            ref=release.ref,
            commit=release.commit,
            message=f"rollback {self.request.component or 'everything'} to {release.release_id}",
            release_id=release.release_id,
            component=self.request.component,
            previous_release_id=current["release_id"] if current else None,
            snapshot_id=target.data_snapshot_id if self.request.with_data and not self.request.secondary else None,
            coordinated=self.request.coordinated,
        )
        bind_context(self.reporter, deploy_id=record.id, env=record.environment)
        with_data = self.check_request(target)
        if with_data and not self.request.secondary:  # a secondary's orchestrator asked, once for all
            self._confirm_data_loss(target)
        lock = EnvironmentLock(
            DocumentStore(self.context.project.access.open(load_index=False)),
            self.context.project.name,
            self.context.environment,
            stale_after=self.config.deploy.lock_stale_after,
        )
        holder = LockHolder.for_this_process(record.id, self.context.environment, "rollback", record.message)

        def warn_stale(previous: LockHolder) -> None:
            self.reporter.warn(
                f"recovered a stale lock of {previous.operation} {previous.deploy_id} by {previous.user}@"
                f"{previous.host} (pid {previous.pid})"
            )

        if self.request.coordinated is not None:  # the orchestrator holds the lock for every host
            self.steps.run("lock", self.context.environment, lambda: self._join_lock(lock), lambda _: "joined")
        else:
            self.steps.run(
                "lock",
                self.context.environment,
                lambda: lock.acquire(
                    holder, wait=self.request.lock_wait, force=self.request.force, on_stale=warn_stale
                ),
                lambda _: "held",
            )
        try:
            # A deploy or rollback killed before this one: stop what it left, mark it interrupted.
            abandoned = self.history.abandoned()
            for interrupted in abandoned:
                clean_up_abandoned(self.context, interrupted, self.agent, self.history, self.reporter)
            if abandoned:  # the clean-up may have stopped a slot: decide on the slots as they are now
                status = self.agent.status()
            self.history.save(record)
            self.steps.on_started = lambda step, detail: self._save_progress(record, step, detail)
            if with_data:
                # An app of workers only has no traffic to hold: stopping its workers is what
                # keeps the data still while it is restored (the agent would answer "not held").
                if traffic_component(self.config) is not None:
                    hold = self.traffic_hold = TrafficHold(self.agent, self.config.traffic, self.reporter, record)
                    self.steps.on_undo("hold", hold.release_quietly)
                    self.steps.run("hold traffic", self.config.traffic.listen, self._hold, lambda r: r)
                self.steps.run(
                    "stop workers",
                    f"slot {active}",
                    lambda: self._stop_workers(str(active), status, record),
                    lambda r: r,
                )
                if self.request.secondary:
                    self.steps.on_undo("hold for the primary", self._hold_until_data_put_back)
                else:
                    self._barrier("restore", lock)  # every host holds its traffic: now the data can go
                    self.steps.run(
                        "restore data",
                        f"snapshot {(target.data_snapshot_id or '')[:8]}",
                        lambda: self._restore(target, record),
                        lambda summary: summary,
                    )
            self._barrier("switch", lock)
            if self.request.component is not None:
                component = self.request.component
                self.steps.run(
                    "code",
                    f"{component} of release {release.release_id}",
                    lambda: self._bring_back_component(component, release, status, record),
                    lambda r: r,
                )
            else:
                self.steps.run(
                    "code",
                    f"release {release.release_id}",
                    lambda: self._bring_back(release, status, record),
                    lambda r: r,
                )
            if self.traffic_hold is not None and self.traffic_hold.held:  # a path that did not switch
                self.steps.run("release traffic", "", self.traffic_hold.release, lambda r: r)
            record.outcome = "succeeded"
        except (Exception, KeyboardInterrupt) as error:  # any failure, a bug included, must unwind
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else self.redactor.redact(str(error))
            failed_step = error.step if isinstance(error, StepFailed) else self.steps.interrupted_step()
            if self.past_retire_go:  # every host was told to keep the release: nothing is undone
                kept = self._keep_release(record, (failed_step, reason))
                with notifier_for(self.context, self.reporter) as notifier:
                    notifier.notify(operation_event(ROLLBACK_FAILED, record, kept.message))
                raise kept from None
            record.outcome = "failed"
            record.reason = reason
            record.failed_step = failed_step
            undone = self.steps.unwind()
            reason += self._data_after_unwind(record)
            record.reason = reason
            failure: DeployFailed | DeployRolledBack
            if self.serves_restored_data:
                failure = DeployFailed(
                    f"rollback to {release.release_id}: it serves on its restored data, but then the rollback "
                    f"failed: {reason}",
                    (
                        f"the agent stops slot {record.retire_left['slot']} it left, all of it, within seconds (its "
                        "release expects the data the restore replaced), as `lockstep status` does once the agent runs"
                        if record.retire_left
                        else "the slot it left may still run: see `lockstep status`"
                    ),
                    result=RedactedRecord(record, self.redactor),
                )
            else:
                failure = (DeployRolledBack if undone else DeployFailed)(
                    f"rollback to {release.release_id} failed: {reason}",
                    "the release that served before still serves" if undone else "see `lockstep status`",
                    # Complete by the time it is printed: `finally` below fills it in.
                    result=RedactedRecord(record, self.redactor),
                )
            # A rollback that fails is when someone must look at once: tell the channels.
            with notifier_for(self.context, self.reporter) as notifier:
                notifier.notify(operation_event(ROLLBACK_FAILED, record, failure.message))
            raise failure from None
        finally:
            record.finished_at = time.time()
            record.steps = [step.to_document() for step in self.steps.records]
            self.history.save(record)
            if self.request.coordinated is None:
                lock.release()
        run_hook(self.context, "post-rollback", record, self.reporter)
        with notifier_for(self.context, self.reporter) as notifier:
            data = " with its data" if record.data_restored else ""
            notifier.notify(operation_event(ROLLBACK_DONE, record, f"rolled back to {record.release_id}{data}"))
        return record

    def _join_lock(self, lock: EnvironmentLock) -> None:
        from lockstep.pipeline.coordination import check_joined_lock

        assert self.request.coordinated is not None
        check_joined_lock(lock, self.request.coordinated)
        self.joined_lock = lock

    def _barrier(self, name: str, lock: EnvironmentLock) -> None:
        """In a coordinated rollback: wait until every host is here (pipeline/coordination.py);
        anything but "go" raises, so the steps so far unwind."""
        if self.request.coordinated is None:
            return
        from lockstep.pipeline.coordination import check_joined_lock, wait_at_barrier

        def wait() -> None:
            assert self.request.coordinated is not None
            wait_at_barrier(name, self.request.coordinated)
            check_joined_lock(lock, self.request.coordinated)

        self.steps.run(f"{name} barrier", "waiting for every host", wait, lambda _: "go")

    def _data_after_unwind(self, record: OperationRecord) -> str:
        """What the unwind did with the data, to end the failure's reason (history and message)."""
        if self.data_put_back_from is not None:
            return (
                f"; the data was put back as it was before the rollback (from pre-restore snapshot "
                f"{self.data_put_back_from[:8]}), so release {record.previous_release_id} serves on its own data"
            )
        pre_restore = record.pre_restore_snapshot_id
        if pre_restore is not None and "restore data" in self.steps.undo_failed():
            return (
                f"; PUTTING THE DATA BACK FAILED: the databases hold the data restored for release "
                f"{record.release_id} (snapshot {(record.snapshot_id or '')[:8]}), or part of it, while release "
                f"{record.previous_release_id} serves, and its workers stay stopped; put its data back by hand: "
                f"lockstep snapshot restore {pre_restore[:8]} (the databases as they were just before the rollback)"
            )
        return ""

    def _save_progress(self, record: OperationRecord, step: str, detail: str) -> None:
        """The record with the step now starting: a rollback killed in it is reported as killed there."""
        record.steps = self.steps.progress(step, detail)
        self.history.save(record)

    def _check_component(self) -> None:
        component = self.request.component
        if component is None:
            return
        if component not in self.config.app.components:
            raise UsageError(
                f"there is no component {component!r}",
                "the components are: " + ", ".join(sorted(self.config.app.components)),
            )
        if self.request.with_data:
            raise UsageError(
                "--with-data restores the databases every component shares: it cannot go with --component",
                "roll back everything with --with-data, or only the component's code",
            )

    def _bring_back_component(
        self, component: str, target: OperationRecord, status: dict[str, Any], record: OperationRecord
    ) -> str:
        """One component back to the target release; the others keep the release they run."""
        active = str(status["active_slot"])
        idle = other_slot(active)
        release_dir = self.context.layout.release_directory(target.release_id or "")
        if not release_dir.is_dir():
            self._rebuild(target, release_dir)
        if component == traffic_component(self.config):
            # Through the idle slot, like a deploy: started and checked there, then the switch.
            record.slot = idle
            self.history.save(record)
            is_warm = warm_in(status["slots"][idle], target.release_id, component)
            plans = plan_components(self.config, release_dir, self.context.layout.shared, idle, only=[component])
            if not is_warm:
                self.agent.start_slot(
                    idle,
                    target.release_id or "",
                    release_dir,
                    target.commit,
                    [plan.launch_document() for plan in plans],
                )
                self.steps.on_undo("code", lambda: self.agent.stop_slot(idle))
                gated_from = self._last_event()
                health_gate(self.agent, idle, plans)
                self._check_before_switch(idle, [component], gated_from)
            else:
                self._check_before_switch(idle, [component], self.decided_at_event, WARM_WINDOW)
            self.agent.switch(idle)
            self.steps.on_undo("switch", lambda: self._switch_back(active))
            return f"{component} now serves from release {target.release_id} in slot {idle}"
        # A component without traffic (a worker) is replaced where it runs.
        record.slot = active
        current = status["slots"][active]["release"]
        plans = plan_components(self.config, release_dir, self.context.layout.shared, active, only=[component])
        self.agent.start_components(
            active,
            [plan.launch_document() for plan in plans],
            release_id=target.release_id,
            release_directory=release_dir,
            replace=True,
        )
        if current is not None:
            current_dir = Path(current["release_directory"])
            current_plans = plan_components(
                self.config, current_dir, self.context.layout.shared, active, only=[component]
            )

            def put_back() -> None:
                self.agent.start_components(
                    active,
                    [plan.launch_document() for plan in current_plans],
                    release_id=current["release_id"],
                    release_directory=current_dir,
                    replace=True,
                )

            self.steps.on_undo("code", put_back)
        health_gate(self.agent, active, plans)
        return f"{component} in slot {active} now runs release {target.release_id}"

    def _switch_back(self, slot: str) -> None:
        self.agent.switch(slot)

    def _switched(self) -> None:
        """Traffic now goes to the older release (workers only: its slot is the active one): let
        the held requests go to it, at once (the old slot's retirement and the workers' restart
        need no hold), and past undoing keep it and its restored data, whatever fails next. In a
        rollback of several hosts, only once every host switched (_wait_at_retire_barrier): until
        then another host's failure must be able to put the data back, which it can only while no
        host serves on it."""
        if self.joined_lock is not None:
            return
        self._release_past_undoing()

    def _release_past_undoing(self) -> None:
        if self.traffic_hold is not None and self.traffic_hold.held:
            self.reporter.info(self.traffic_hold.release())
            self.steps.forget_undo("hold")
        elif not self._restores_workers_only():
            return  # no data restored, or nothing held: the switch stays undoable
        # The older release now answers on the restored data, and what it writes lands there (an
        # app of workers only: its workers write from their start, the switch makes them the
        # active release): neither the data nor the newer release can come back without losing
        # those writes, so the rollback is past undoing (a later failure leaves the older release).
        for step in ("switch", "code", "stop workers", "hold for the primary", "restore data"):
            self.steps.forget_undo(step)
        self.serves_restored_data = True
        self._forget_paused_workers()  # the newer release's workers are not to run again

    def _forget_paused_workers(self) -> None:
        if self.paused_in is not None and self.paused_in.paused_workers is not None:
            self.paused_in.paused_workers = None
            self.history.save(self.paused_in)

    def _note_restart_failed(self, error: str) -> None:
        """The record says the stopped workers did not start again, and why: the agent's retry
        (pipeline/paused_workers_retry.py) and `status` go by it."""
        if self.paused_in is not None and self.paused_in.paused_workers is not None:
            self.paused_in.paused_workers = restart_failed(self.paused_in.paused_workers, error)
            self.history.save(self.paused_in)

    def _keep_workers_stopped(self, why: str) -> None:
        """The record says the stopped workers must stay so: the agent's retry leaves them."""
        if self.paused_in is not None and self.paused_in.paused_workers is not None:
            self.paused_in.paused_workers["kept_stopped"] = why
            self.history.save(self.paused_in)

    def _restores_workers_only(self) -> bool:
        """A data rollback of an app of workers only: no traffic to hold, so its point of no return
        is its switch (the older slot becomes the active one), not the release of a hold."""
        return self.request.with_data and self.traffic_hold is None and traffic_component(self.config) is None

    def _hold(self) -> str:
        """Hold the traffic for the data restore. In a rollback of several hosts, a host that cannot
        hold stops it before the primary restores anything: its release would serve (and write)
        on data being replaced."""
        assert self.traffic_hold is not None
        detail = self.traffic_hold.hold()
        if self.request.coordinated is not None and not self.traffic_hold.held:
            raise UsageError(
                f"this host's traffic could not be held ({detail}): a data rollback of several hosts restores the "
                "data only while every host holds its traffic",
                "see `lockstep status` on this host (its agent and traffic switch), or roll back the code only",
            )
        return detail

    def _wait_until_every_host_undid(self) -> None:
        """The primary of a rollback of several hosts, about to put the data back: the other
        hosts' older release may run on the restored data (started cold, its workers write from
        their start), and what it writes after the put-back would stay in the data the newer
        release goes on with. So wait, at the restore barrier of the unwind (pipeline/
        coordination.py), until the orchestrator says every other host has undone its part and
        holds at its held barrier. Whatever it says, put the data back: the newer release serves
        again on every host that undid its part, and must not do so on the older data."""
        if self.request.coordinated is None or self.request.secondary:
            return
        from lockstep.pipeline.coordination import GO, RESTORE_BARRIER, wait_for_word

        if wait_for_word(RESTORE_BARRIER, self.request.coordinated, {"unwinding": True}) != GO:
            self.reporter.warn(
                "not every other host confirmed it stopped the older release before the data is put back: what "
                "it wrote since may stay in the data (the orchestrator's output names the host)"
            )

    def _hold_until_data_put_back(self) -> None:
        """A secondary's undo of its hold-and-stop, before its workers restart and its traffic goes:
        the primary may be putting the data back, so keep holding until the orchestrator says it
        is done (pipeline/coordination.py, the held barrier)."""
        from lockstep.pipeline.coordination import GO, HELD_BARRIER, wait_for_word

        assert self.request.coordinated is not None
        # Held: its traffic, or an app of workers only (nothing to hold; its workers are stopped).
        held = self.traffic_hold.held if self.traffic_hold is not None else traffic_component(self.config) is None
        said = {"unwinding": True, "held": held}
        word = wait_for_word(HELD_BARRIER, self.request.coordinated, said)
        if word != GO:
            self.reporter.warn(
                "lost the orchestrator while holding the traffic for the primary's data put-back: releasing it now"
            )

    def _stop_workers(self, slot: str, status: dict[str, Any], record: OperationRecord) -> str:
        """Stop the newer release's components without a port (workers) before its data goes: they
        write to the databases too, and the held traffic does not stop them. In an app of workers
        only this is all that keeps the databases still during the restore. The record says they
        are stopped (`paused_workers`) until they run again or the older release serves: a
        rollback killed in between leaves them to its clean-up (pipeline/worker_pause.py)."""
        slot_status = status["slots"][slot]
        workers = sorted(
            {process["component"] for process in slot_status["processes"] if process["port"] is None}
            & set(self.config.app.components)
        )
        if not workers:
            return "none running"
        current = slot_status["release"]
        if current is not None:
            record.paused_workers = {"slot": slot, "release_id": current["release_id"], "components": workers}
            if self.request.secondary:  # the primary restores: whether it began, this host cannot tell
                record.paused_workers["restored_elsewhere"] = True
            if self.request.coordinated is not None:  # the retry waits for the orchestrator's lock to go
                record.paused_workers["coordinated"] = self.request.coordinated
            self.history.save(record)
            self.paused_in = record
        self.agent.stop_slot(slot, workers)
        kill_point("workers stopped")  # tests: killed before the restore or the switch
        if current is not None:
            current_dir = Path(current["release_directory"])
            plans = plan_components(self.config, current_dir, self.context.layout.shared, slot, only=workers)

            def restart() -> None:
                if "restore data" in self.steps.undo_failed():
                    kept = (
                        f"{', '.join(workers)} of the newer release stay stopped: its data could not be put "
                        "back, and they would write to the older release's data"
                    )
                    self._keep_workers_stopped(kept)
                    raise UsageError(kept)
                try:
                    since = last_event_id(self.agent)
                    self.agent.start_components(slot, [plan.launch_document() for plan in plans])
                    down = wait_until_up(self.agent, slot, workers, since)
                except LockstepError as error:
                    self._note_restart_failed(str(error))  # the agent's watch tries again
                    raise
                if down is not None:  # started, but exited: the agent restarts them, its watch tries again
                    self._note_restart_failed(down)
                    raise UsageError(f"{', '.join(workers)} did not stay up after their start: {down}")
                self._forget_paused_workers()

            self.steps.on_undo("stop workers", restart)
        return "stopped " + ", ".join(workers)

    def _decide_data(self, target: RollbackTarget) -> bool:
        """Whether to restore data; refuse a code-only rollback onto a newer schema."""
        if self.request.with_data:
            if self.request.secondary:  # the primary restores the shared databases
                return True
            if target.data_snapshot_id is None:
                raise UsageError(
                    f"there is no snapshot of the data as it was under {target.release.release_id}",
                    "its successor was deployed with --skip-backup; roll back the code only (--code-only --force)",
                )
            return True
        current_version = migration_version(self.context)
        if _newer(current_version, target.migration_version) and not self.request.force:
            raise UsageError(
                f"release {target.release.release_id} expects migration version {target.migration_version}, but the "
                f"database is at {current_version}: old code on a newer schema can damage data",
                "roll back with the data (--with-data), or pass --force if the migrations are backward compatible",
            )
        return False

    def _confirm_data_loss(self, target: RollbackTarget) -> None:
        """Show what the restore discards and ask, before anything is locked or changed."""
        assert target.data_snapshot_id is not None
        with self.context.project.access.session(exclusive=False) as repository:
            snapshot = repository.find_snapshot(target.data_snapshot_id)
            lines = summarize_discarded(describe_discarded(repository, snapshot, self.config))
        self.reporter.info(f"restoring the data of snapshot {snapshot.short_id} discards:\n  " + "\n  ".join(lines))
        confirm_data_restore(self.reporter, self.context.environment, yes=self.request.yes)

    def _restore(self, target: RollbackTarget, record: OperationRecord) -> str:
        """Restore the target's data, with an undo that puts back the data as it was just before.

        Without that undo, a failure after the restore (the older release fails its health gate
        cold, Ctrl-C) stopped the older slot and restarted the newer release's workers: the newer
        release then served on the older data, maybe an older schema. The undo restores the
        pre-restore snapshot, and it loses nothing: the traffic is held and the newer release's
        workers are stopped (the steps before this one) before that snapshot is taken, so nothing
        writes between it and the put-back. Held requests wait (or get 503), never reaching a
        release; the older release gets none before the switch, where the undo is dropped (see
        _switched); its slot is stopped by the code undo, which runs before this one. Only what
        the older release's workers wrote while it started is discarded with the data: that
        release never served. The assumptions: the traffic component writes only when asked, and
        no request was still in flight when the hold's drain ended (its detail says so if one was).

        The undo is registered as soon as the pre-restore snapshot exists, so a restore that
        fails half-way (one of several databases restored) is put back too.
        """
        assert target.data_snapshot_id is not None

        def undo_from(pre_restore_id: str) -> None:
            record.pre_restore_snapshot_id = pre_restore_id
            self.history.save(record)  # a rollback killed from here on says where the data was
            kill_point("pre-restore snapshot saved")  # tests: killed as the first database is replaced
            self.steps.on_undo("restore data", lambda: self._put_data_back(pre_restore_id, record))

        with self.context.project.access.session(exclusive=False) as repository:
            snapshot = repository.find_snapshot(target.data_snapshot_id)
            result = restore_snapshot_data(
                repository,
                snapshot,
                self.config,
                self.context.directory,
                self.context.environment,
                on_pre_restore=undo_from,
            )
        record.data_restored = True
        for item in result.restored:  # grants to roles this server no longer has
            for sentence in item.left_out:
                self.reporter.warn(f"database {item.name}: left out: {sentence}")
        restored = ", ".join(f"{item.name} ({counted(item.rows, 'row')})" for item in result.restored)
        return f"{restored}; before-restore snapshot {(result.pre_restore_snapshot_id or '')[:8]}"

    def _put_data_back(self, pre_restore_id: str, record: OperationRecord) -> None:
        """The undo of "restore data": the databases as they were just before the rollback, while
        the traffic is still held (its undo is the last), so the release that served before serves
        on its own data again."""
        self._wait_until_every_host_undid()
        with self.context.project.access.session(exclusive=False) as repository:
            snapshot = repository.find_snapshot(pre_restore_id)
            restored = restore_snapshot_data(
                repository, snapshot, self.config, self.context.directory, self.context.environment, pre_restore=False
            )
        record.data_restored = False
        self.data_put_back_from = pre_restore_id
        names = ", ".join(item.name for item in restored.restored)
        self.reporter.info(
            f"the data is back as it was before the rollback ({names}, from snapshot {snapshot.short_id})"
        )

    def _bring_back(self, target: OperationRecord, status: dict[str, object], record: OperationRecord) -> str:
        """Traffic to the target release: its warm slot if it runs, else start it in the idle slot."""
        slots = status["slots"]
        assert isinstance(slots, dict)
        active = str(status["active_slot"])
        idle = other_slot(active)
        record.slot = idle
        self.history.save(record)  # killed from here on, the clean-up knows which slot was ours
        component = traffic_component(self.config)
        release_dir = Path(self.context.layout.release_directory(target.release_id or ""))
        is_warm = warm_in(slots[idle], target.release_id, component)
        plans = plan_components(self.config, release_dir, self.context.layout.shared, idle)
        if is_warm:
            assert component is not None  # warm_in finds no traffic component otherwise
            self._check_before_switch(idle, [component], self.decided_at_event, WARM_WINDOW)
            started = time.monotonic()
            self.agent.switch(idle)
            switched = time.monotonic() - started
            self._switched()
            if self.joined_lock is not None:  # the other hosts may fail: until they all switched, undoable
                self.steps.on_undo("switch", lambda: self._switch_back(active))
                self._wait_at_retire_barrier(record, active)
            self._mark_retire_left(record, active)
            kill_point("rollback switched")  # tests: killed between its switch and its retire
            missing = [plan for plan in plans if plan.name != component]
            if missing:  # workers were stopped when the slot was retired
                self._restart_components(idle, release_dir, [plan.name for plan in missing])
            self._retire(active, component)
            record.retire_left = None
            return f"slot {idle} was warm: traffic moved in {switched * 1000:.0f} ms"
        rebuilt = not release_dir.is_dir()
        if rebuilt:
            self._rebuild(target, release_dir)
        self.agent.start_slot(
            idle, target.release_id or "", release_dir, target.commit, [plan.launch_document() for plan in plans]
        )
        self.steps.on_undo("code", lambda: self.agent.stop_slot(idle))
        gated_from = self._last_event()
        health_gate(self.agent, idle, plans)
        self._check_before_switch(idle, [plan.name for plan in plans], gated_from)
        self.agent.switch(idle)
        self.steps.on_undo("switch", lambda: self._switch_back(active))
        self._switched()
        self._wait_at_retire_barrier(record, active)
        self._mark_retire_left(record, active)
        kill_point("rollback switched")  # tests: killed between its switch and its retire
        self._retire(active, component)
        record.retire_left = None
        return f"started in slot {idle}" + (" (release directory rebuilt)" if rebuilt else "")

    def _last_event(self) -> int:
        return int(self.agent.status()["last_event_id"])

    def _check_before_switch(
        self, slot: str, components: list[str], since: int | None, window: str = GATE_WINDOW
    ) -> None:
        """Right before the traffic moves to `slot`, as a deploy checks (pipeline/slot_exits.py):
        every component still runs, with no more exits than the watch allows since `since`. For
        a started slot that is the start of its health gate, which checks one component after
        the other: one that exits once its own gate passed, while the next one's runs, counts.
        For a warm slot it is when this rollback read the slots and judged it warm. Fails the
        rollback before the switch, so it is undone."""
        exits = SlotExits(self.agent, slot, self.config.deploy.watch_max_exits, since=since)
        self.steps.run(
            PRE_SWITCH_CHECK_STEP,
            f"slot {slot}",
            lambda: check_before_switch(self.agent, slot, components, exits, self.reporter, window),
            lambda detail: detail,
        )

    def _wait_at_retire_barrier(self, record: OperationRecord, left: str) -> None:
        """In a coordinated rollback, switched: every host must have switched before any retires."""
        if self.joined_lock is None or self.request.coordinated is None:
            return
        from lockstep.pipeline.coordination import check_joined_lock, wait_at_barrier

        self.reporter.info("switched; waiting for every host at the retire barrier")
        kill_point("rollback before the retire go")  # tests: a host killed between its switch and the go
        wait_at_barrier("retire", self.request.coordinated)
        self.past_retire_go = True  # from here on this host keeps the release, as every host does
        record.retire_go = True  # and so does its clean-up if it is killed (clean_up_abandoned)
        self.history.save(record)
        self._mark_retire_left(record, left)
        kill_point("rollback past the retire go")  # tests: a host's rollback killed past the point of no return
        check_joined_lock(self.joined_lock, self.request.coordinated)
        self._release_past_undoing()  # every host switched: the held requests go to the older release

    def _mark_retire_left(self, record: OperationRecord, left: str) -> None:
        """Past undoing with the data restored, until the slot left is retired: marked in the record
        (pipeline/unfinished_retire.py), whole. Killed (kill -9) from here on, the clean-up keeps
        the release with the traffic and stops only the workers of the slot left, keeping its
        traffic component warm: that of the newer release, which expects the data the restore
        replaced (it then answers errors, and a rollback to it would switch to it instantly). The
        mark makes the agent stop all of it."""
        from lockstep.pipeline.unfinished_retire import retire_left

        # Past undoing: told "go" at the retire barrier, or on one machine switched (_switched).
        past_undoing = self.past_retire_go or (self.joined_lock is None and self.serves_restored_data)
        if not self.request.with_data or not past_undoing or record.retire_left is not None:
            return
        record.retire_left = retire_left(left, record.previous_release_id, whole_slot=True)
        self.history.save(record)

    def _keep_release(self, record: OperationRecord, failure: tuple[str | None, str]) -> DeployFailed:
        """A coordinated rollback failing after its retire barrier's "go" (restarting the warm
        slot's workers, retiring the slot it left, its last lock check): every host switched and
        was told to keep the release, so undoing here alone would leave the hosts on different
        releases (pipeline/multi_host_retire.py). Nothing is undone; held traffic goes to it."""
        from lockstep.pipeline.multi_host_retire import keep_release
        from lockstep.pipeline.unfinished_retire import retire_left

        if self.traffic_hold is not None:
            self.traffic_hold.release_quietly()
        left = other_slot(record.slot) if record.slot else None
        return keep_release(
            record,
            self.steps,
            failure,
            (self.history, self.redactor),
            retire_left(left, record.previous_release_id, whole_slot=self.request.with_data),
            "the slot it left may not be retired, or this release's workers not restarted (workers of both "
            "releases may run, or neither's)",
        )

    def _restart_components(self, slot: str, release_dir: Path, names: list[str]) -> None:
        """Start the warm slot's stopped components (workers) again, next to its traffic component."""
        plans = [plan for plan in plan_components(self.config, release_dir, self.context.layout.shared, slot)]
        selected = [plan for plan in plans if plan.name in names]
        self.agent.start_components(slot, [plan.launch_document() for plan in selected])
        health_gate(self.agent, slot, selected)

    def _retire(self, slot: str, component: str | None) -> None:
        """The slot we left keeps its traffic component warm, unless the data went back under it
        or the app has none (workers only): then all of it stops.

        After a data rollback the release we left expects a schema the database no longer has:
        keeping it warm would offer a roll-forward that cannot work, so all of it stops.
        """
        self.agent.wait_drained(slot, self.config.traffic.drain_timeout)
        if self.request.with_data or component is None:  # workers only: nothing to keep warm either
            self.agent.stop_slot(slot)
            return
        others = [name for name in self.config.app.components if name != component]
        if others:
            self.agent.stop_slot(slot, others)

    def _rebuild(self, target: OperationRecord, release_dir: Path) -> None:
        """The release directory is gone: bring it back from its code snapshot, or from git.

        The pre-deploy snapshot of the deploy that replaced a release holds that release's
        directory (tag release:<id>), so the code comes back even without the git repository.
        """
        if self._restore_release_from_snapshot(target, release_dir):
            return
        code = self.config.code
        if code.kind != "git" or code.path is None or target.commit is None:
            raise UsageError(
                f"release directory {release_dir} is gone, no snapshot holds it "
                "and there is no commit to rebuild it from"
            )
        self.reporter.info(f"release directory {release_dir.name} is gone; rebuilding it from {target.commit[:12]}")
        build_release_directory(code.path, self.config.app, self.context.layout, target.release_id or "", target.commit)

    def _restore_release_from_snapshot(self, target: OperationRecord, release_dir: Path) -> bool:
        tag = f"{RELEASE_TAG_PREFIX}{target.release_id}"
        with self.context.project.access.session(exclusive=False) as repository:
            # Only this project's: another project sharing the repository may have a release of that ID.
            holding = [
                snapshot
                for snapshot in repository.list_snapshots(skip_unreadable=True)
                if tag in snapshot.tags and is_of_project(snapshot, self.context.project.name)
            ]
            if not holding:
                return False
            snapshot = max(holding, key=lambda item: item.time_ns)
            manifest = load_manifest(repository, snapshot)
            if manifest.code is None or manifest.code.commit is not None:
                return False
            staging = release_dir.with_name(f".{release_dir.name}.restoring")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                restored = restore_code(repository, snapshot, manifest, None, staging)
                staging.rename(release_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self.reporter.info(
            f"release directory {release_dir.name} is gone; restored it from snapshot {snapshot.short_id}"
        )
        for warning in restored.warnings:
            self.reporter.warn(f"release directory {release_dir.name}: {warning}")
        return True


def confirm_data_restore(reporter: Reporter, environment: str, *, yes: bool) -> None:
    """Ask before a data restore that discards writes (the caller has shown which); production
    wants its name typed. Refused, nothing has changed yet."""
    if yes:
        return
    expected = environment if environment == "production" else None
    if not reporter.confirm("Restore the databases and lose those writes?", expected):
        answer = f" by typing {expected}" if expected else " with y"
        raise UsageError(
            "the data restore was not confirmed; nothing was changed",
            f"confirm on a terminal{answer}, or pass --yes (CI)",
        )
