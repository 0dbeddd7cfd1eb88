"""`lockstep rollback` in an environment with `hosts`: every host goes back, or none does.

The orchestrator (pipeline/multi_host.py has the shared machinery) checks every host over SSH
(host key, lockstep version) and that every host serves the same release, picks the target
from its own history of multi-host deploys (hosts record their part under the same IDs), takes
the environment lock once, and runs `lockstep rollback --to TARGET --coordinated ID` on every
host at once. Each host waits at a barrier before it switches and again once it has switched,
before retiring the slot it left: a host failing (or its connection dropping) before every host
switched makes every other host switch back. Past the retire "go" every host keeps the release it
switched to, as in a deploy, even one that fails then (multi_host_retire.py).

With --with-data, after showing what the restore discards (the primary's `snapshot diff`) and
asking: every host holds its traffic and stops its workers; the primary alone, once every other
host waits at its switch barrier holding, is told "go" at its restore barrier and restores the
shared databases from the pre-deploy snapshot of the deploy that replaced the target; then every
host switches, and the holds end only once every host switched (the retire barrier). A failure
before that puts everything back: the others switch back and keep holding at their held barrier
while the primary puts the data back from its pre-restore snapshot (pipeline/coordination.py).

--component is refused: one component of a fleet is rarely wanted, and never with the data.
"""

from __future__ import annotations

import asyncio
import json
import time

from lockstep.actions.environment import EnvironmentContext
from lockstep.errors import UsageError
from lockstep.notify.events import ROLLBACK_DONE, ROLLBACK_FAILED
from lockstep.pipeline.coordination import GO, RESTORE_BARRIER, RETIRE_BARRIER, SWITCH_BARRIER
from lockstep.pipeline.history import History, OperationRecord
from lockstep.pipeline.multi_host import HostFanOut, HostRun, check_same_project, error_of
from lockstep.pipeline.notifications import notifier_for
from lockstep.pipeline.rollback import (
    RollbackRequest,
    RollbackTarget,
    choose_target,
    confirm_data_restore,
    refuse_if_never_deployed,
    serving_stack,
)
from lockstep.pipeline.steps import Reporter, bind_context
from lockstep.remote import ssh


class MultiHostRollback(HostFanOut):
    """One `lockstep rollback` of every host of an environment, all or none."""

    operation = "rollback"
    done_event = ROLLBACK_DONE
    failed_event = ROLLBACK_FAILED
    # The primary's put-back waits for every other host to undo its part (its older release
    # stopped), then goes on: the newer release serves again, and not on the older data.
    restore_needs_every_hold = False

    def __init__(self, context: EnvironmentContext, request: RollbackRequest, reporter: Reporter) -> None:
        super().__init__(context, reporter, request.lock_wait, request.force)
        self.request = request
        self.target_release: str | None = None

    def _run(self) -> OperationRecord:
        check_fleet_request(self.request)
        refuse_if_never_deployed(self.history, self.context.environment)  # before any host is contacted
        serving = self.steps.run(
            "preflight",
            ", ".join(run.name for run in self.runs),
            self._preflight,
            lambda release_id: f"every host serves {release_id or 'nothing'}",
        )
        # Outside the step: a refusal keeps its hint, as the dry run's does.
        target = choose_fleet_target(self.history, serving, self.request)
        release = target.release
        self.reporter.info(f"rolling back every host from {serving} to {release.release_id}")
        self.target_release = release.release_id
        if self.request.with_data:
            self._confirm_data_loss(target)
        record = OperationRecord.started_now(
            self.history.unused_id(f"{time.strftime('%Y%m%d_%H%M%S', time.gmtime())}_rollback"),
            "rollback",
            self.context.environment,
            ref=release.ref,
            commit=release.commit,
            message=f"rollback every host to {release.release_id}"
            + (" with its data" if self.request.with_data else ""),
            release_id=release.release_id,
            snapshot_id=target.data_snapshot_id if self.request.with_data else None,
            hosts=[run.summary() for run in self.runs],
        )
        bind_context(self.reporter, deploy_id=record.id, env=record.environment)
        self.steps.run("lock", self.context.environment, lambda: self._take_lock(record), lambda _: "held")
        self.steps.on_started = lambda step, detail: self._save_progress(record, step, detail)
        notifier = notifier_for(self.context, self.reporter)
        try:
            return self._run_to_the_end(record, notifier, lambda: self._run_hosts(record))
        finally:
            self._release_lock()
            notifier.close()

    def _run_hosts(self, record: OperationRecord) -> None:
        self.history.save(record)
        if self.request.with_data:
            self._hold_and_restore(record)
        else:
            self.steps.run(
                "hosts",
                "every host: checks, up to the switch barrier",
                lambda: self._wait(self._advance(self.runs, record, "start", SWITCH_BARRIER)),
                lambda _: "every host at the switch barrier",
            )
        self.steps.run(
            "switch",
            "every host",
            lambda: self._wait(self._advance(self.runs, record, GO, RETIRE_BARRIER)),
            lambda _: "every host switched",
        )
        self._retire_step()

    def _done_message(self, record: OperationRecord) -> str:
        return f"rolled every host back to {record.release_id}"

    def _hold_and_restore(self, record: OperationRecord) -> None:
        """Every host holds its traffic and stops its workers; then, and only then, the primary
        restores the data; every host then waits at its switch barrier."""
        primary, others = self.runs[0], self.runs[1:]

        async def start_all() -> None:
            started = await asyncio.gather(
                self._advance([primary], record, "start", RESTORE_BARRIER),
                self._advance(others, record, "start", SWITCH_BARRIER),
                return_exceptions=True,  # both finish before a failure unwinds: no reader left behind
            )
            for outcome in started:
                if isinstance(outcome, BaseException):
                    raise outcome

        self.steps.run(
            "hold",
            "every host: hold traffic, stop workers",
            lambda: self._wait(start_all()),
            lambda _: "every host holds its traffic",
        )
        self.steps.run(
            "restore data",
            f"{primary.name}: snapshot {(record.snapshot_id or '')[:8]}",
            lambda: self._wait(self._advance([primary], record, GO, SWITCH_BARRIER)),
            lambda _: "restored; every host at the switch barrier",
        )

    def _remote_arguments(self, run: HostRun, record: OperationRecord) -> list[str]:
        arguments = ["rollback", "--to", self.target_release or "", "--env", self.context.environment]
        arguments += ["--json", "--log-format", "json", "--yes", "--coordinated", record.id]
        if self.request.with_data:
            arguments += ["--with-data"] if run.primary else ["--with-data", "--secondary"]
        return arguments + (["--force"] if self.force else [])

    def _confirm_data_loss(self, target: RollbackTarget) -> None:
        """What the restore discards, as the primary sees it (`snapshot diff` there), and the
        question, before anything is locked or changed: the hosts run with --yes."""
        snapshot = target.data_snapshot_id
        assert snapshot is not None  # choose_fleet_target refused otherwise
        primary = self.runs[0]

        async def diff() -> ssh.RemoteResult:
            arguments = ["snapshot", "diff", snapshot, "--env", self.context.environment]
            return await ssh.run(primary.connection, ssh.shell_command(primary.target, self.ssh, arguments))

        result = self._wait(diff())
        if result.exit_status != 0:
            raise UsageError(f"host {primary.name}: `lockstep snapshot diff {snapshot[:8]}` failed: {error_of(result)}")
        shown = "\n  ".join(line for line in result.stdout.splitlines() if line.strip())
        self.reporter.info(f"restoring the data of snapshot {snapshot[:8]} on {primary.name} discards:\n  {shown}")
        confirm_data_restore(self.reporter, self.context.environment, yes=self.request.yes)

    def _preflight(self) -> str | None:
        """Every host reachable, its agent running, and every host serving the same release: that release."""
        serving: dict[str, str | None] = {}

        async def check(run: HostRun) -> None:
            await self._connect_and_check_version(run)
            arguments = ["status", "--env", self.context.environment, "--json", "--local"]
            command = ssh.shell_command(run.target, self.ssh, arguments)
            result = await ssh.run(run.connection, command, timeout=120)
            if result.exit_status != 0:
                raise UsageError(f"host {run.name}: {error_of(result)}")
            document = json.loads(result.stdout.strip().splitlines()[-1])
            check_same_project(run.name, document.get("project"), self.context.project.name)
            if not document.get("agent", {}).get("running"):
                raise UsageError(f"host {run.name}: its agent is not running", "start it there (lockstep agent)")
            serving[run.name] = document.get("release")

        self._wait(self._check_every_host(check))
        releases = set(serving.values())
        if len(releases) != 1:
            listed = ", ".join(f"{name} serves {release or 'nothing'}" for name, release in serving.items())
            raise UsageError(
                f"the hosts serve different releases ({listed})",
                "bring them together first: `lockstep deploy` or `lockstep rollback --to ID` on each host",
            )
        return releases.pop()


def check_fleet_request(request: RollbackRequest) -> None:
    """The refusals of the request itself, before any host is contacted."""
    if request.component is not None:
        raise UsageError(
            "a rollback of several hosts rolls back every component (no --component)",
            "roll the component back on each host with `lockstep rollback --component` there",
        )


def choose_fleet_target(history: History, serving: str | None, request: RollbackRequest) -> RollbackTarget:
    """The release every host goes back to, from this machine's history of multi-host operations
    (the hosts record their part under the same IDs), or the refusal the rollback ends with.

    One decision for the rollback (`serving`: what every host reported in its preflight) and its
    dry run (`serving`: what this history says, pipeline/multi_host_rollback_plan.py), so the plan
    names the target the rollback goes to and refuses where it would, with the same exit code."""
    target = choose_target(history, serving, request)
    if request.with_data and target.data_snapshot_id is None:
        raise UsageError(
            f"there is no snapshot of the data as it was under {target.release.release_id}",
            "its successor was deployed with --skip-backup (or by a lockstep that did not record it here); "
            "roll back the code only",
        )
    return target


def recorded_serving(history: History) -> OperationRecord | None:
    """The operation whose release every host serves, as this machine's history tells it (the
    top of the serving stack): what a rollback that contacts no host takes as the current one."""
    served = history.successful_deploys()
    stack = serving_stack(served)
    if not stack:
        return None
    return next(record for record in reversed(served) if record.release_id == stack[-1])
