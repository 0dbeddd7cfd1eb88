"""Stop the serving release's workers while a deploy's unwind restores the data, then start them again.

A traffic hold keeps requests off the databases during the restore, but workers (components
without a port: queues, mailers, schedulers) take no requests, so the hold does not stop them.
They would go on writing into a database that is being replaced: those writes are thrown away
by the restore, or land half-way through it. So the release that serves again after the unwind
has its workers stopped before the restore and started again once it is over, on the restored
data. In a multi-host deploy every host does this (pipeline/coordination.py, the held barrier):
the databases are shared, so any host's workers write into them.

The operation's record says which workers are stopped (`paused_workers`) until they run again:
a deploy killed (kill -9) in between runs no `finally`, and the clean-up of the killed deploy
(`resume_paused_workers`) starts them again; without it they stayed stopped until the next
deploy or rollback, and nothing said so. When they cannot be started again (the agent refuses,
a worker exits as it starts, the agent is briefly unreachable), the mark stays, with why
(`restart_failed`), and the agent's watch and `lockstep status` try again
(pipeline/paused_workers_retry.py). In a multi-host deploy the mark names the coordinated
deploy (`coordinated`): a host killed in its unwind keeps its workers stopped while the
orchestrator still holds the environment's lock, as the primary may still be restoring the data.

A start counts once the workers stayed up RESTART_SETTLE_SECONDS, after a restore as in the
clean-up of a killed operation: the agent's own start check (0.3 s) passes a worker that exits a
second later (its database still locked), and such a restart was taken for done, its mark
cleared, and the agent's crash-loop handling was all that was left. Staying up is judged as a
deploy's watch judges it (pipeline/slot_exits.py): no `exited` or `crash-loop` event of the
agent since the start, and running, not crash-looped, at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from lockstep.agent.client import AgentClient
from lockstep.config import ProjectConfig
from lockstep.errors import LockstepError
from lockstep.fault_injection import kill_point, wait_point
from lockstep.pipeline.history import OperationRecord
from lockstep.pipeline.release_launch import ComponentPlan, plan_components
from lockstep.pipeline.slot_exits import exit_summary
from lockstep.pipeline.steps import Reporter

# How long restarted workers must stay up before their restart counts (see the module's doc).
RESTART_SETTLE_SECONDS = 5.0

# Told what is stopped ({"slot", "release_id", "components"}) before the stop, None once restarted.
Remember = Callable[[dict[str, Any] | None], None]


class WorkerPause:
    """One slot's workers, stopped for a data restore and started again after it."""

    def __init__(self, agent: AgentClient, config: ProjectConfig, shared: Path, reporter: Reporter) -> None:
        self.agent = agent
        self.config = config
        self.shared = shared
        self.reporter = reporter
        self.slot: str | None = None
        self.stopped: list[str] = []
        self._plans: list[ComponentPlan] = []
        self._paused: dict[str, Any] = {}
        self._remember: Remember = lambda paused: None

    def stop(self, slot: str, remember: Remember | None = None, coordinated: str | None = None) -> str | None:
        """Stop the workers of `slot`; None when none runs any more, else why they may still run.
        `remember` writes down what is stopped before the stop, in the operation's record;
        `coordinated` is the multi-host deploy this host takes part in, if any."""
        if self.stopped:
            return None
        wait_point("stop workers")  # tests: the agent goes away just before
        try:
            slot_status = self.agent.status()["slots"][slot]
            workers = _workers(slot_status, self.config)
            release = slot_status.get("release")
            if not workers or release is None:
                return None
            plans = plan_components(self.config, Path(release["release_directory"]), self.shared, slot, only=workers)
            self.slot, self.stopped, self._plans = slot, workers, plans  # before: a stop half done is restarted
            if remember is not None:
                self._remember = remember
            self._paused = {"slot": slot, "release_id": release["release_id"], "components": workers}
            if coordinated is not None:
                self._paused["coordinated"] = coordinated
            self._remember(self._paused)
            self.agent.stop_slot(slot, workers)
            kill_point("workers stopped")  # tests: killed before they run again
            left = _workers(self.agent.status()["slots"][slot], self.config)
        except LockstepError as error:
            return f"stopping them failed: {error}"
        if left:
            return f"{', '.join(left)} still run after the stop"
        self.reporter.info(f"stopped the workers of slot {slot} for the data restore: {', '.join(workers)}")
        return None

    def restart(self) -> None:
        """Start the stopped workers again (the data restore is over, or will not happen); a
        failure is said loudly, not raised: the unwind goes on, and the slot runs without them."""
        if not self.stopped or self.slot is None:
            return
        workers = ", ".join(self.stopped)
        try:
            since = last_event_id(self.agent)
            self.agent.start_components(self.slot, [plan.launch_document() for plan in self._plans])
            down = wait_until_up(self.agent, self.slot, self.stopped, since)
        except (LockstepError, KeyError) as error:
            self.reporter.warn(
                f"THE WORKERS {workers} OF SLOT {self.slot} DID NOT START AGAIN after the data restore: {error}; "
                "its release runs without them until the agent starts them (it tries again; see `lockstep status`)"
            )
            self._remember(restart_failed(self._paused, str(error)))
            return
        if down is not None:
            self.reporter.warn(
                f"THE WORKERS {workers} OF SLOT {self.slot} DID NOT STAY UP after the data restore: {down}; "
                "its release runs without them until they do (the agent restarts them, and tries again with a "
                "back-off; see `lockstep status`)"
            )
            self._remember(restart_failed(self._paused, down))
            return
        self.reporter.info(
            f"started the workers of slot {self.slot} again: {workers} (up {RESTART_SETTLE_SECONDS:g} s)"
        )
        self.stopped = []
        self._remember(None)


class ComponentStarter(Protocol):
    """What a clean-up needs of the agent to start workers again: the CLI's client, or the
    agent's own service (which takes launches, not documents: see `start_launches`)."""

    def status(self) -> dict[str, Any]: ...


class StartWatcher(ComponentStarter, Protocol):
    """What telling whether started workers stayed up needs of the agent: its events too."""

    def events(self, since_id: int) -> list[dict[str, Any]]: ...


def last_event_id(agent: ComponentStarter) -> int:
    """The agent's newest event: what `why_down` counts exits from."""
    return int(agent.status()["last_event_id"])


def why_down(agent: StartWatcher, slot: str, components: list[str], since: int) -> str | None:
    """Why the started `components` of `slot` are not up, else None: one exited (or was given up
    on) since the agent's event `since`, or is not running now, or is crash-looped."""
    for event in agent.events(since):
        component, _, owner = str(event["name"]).partition("@")
        if owner == slot and component in components and event["kind"] in ("exited", "crash-loop"):
            return f"{component} exited after it was started: {exit_summary(str(event['detail']))}"
    processes = {str(process["component"]): process for process in agent.status()["slots"][slot]["processes"]}
    for component in components:
        process = processes.get(component)
        if process is None or not process["running"] or process["crash_looped"]:
            state = "crash-looped" if process is not None and process["crash_looped"] else "not running"
            return f"{component} is {state} after it was started"
    return None


def wait_until_up(
    agent: StartWatcher, slot: str, components: list[str], since: int, seconds: float = RESTART_SETTLE_SECONDS
) -> str | None:
    """`why_down` once the started workers had `seconds` to stay up, or as soon as one is down."""
    deadline = time.monotonic() + seconds
    while True:
        down = why_down(agent, slot, components, since)
        if down is not None or time.monotonic() >= deadline:
            return down
        time.sleep(0.2)


def components_up(slot_status: dict[str, Any]) -> set[str]:
    """The slot's components the agent runs (not down, not given up on)."""
    return {
        str(process["component"])
        for process in slot_status.get("processes") or []
        if process["running"] and not process["crash_looped"]
    }


def resume_paused_workers(
    record: OperationRecord, agent: StartWatcher, reporter: Reporter, under_way: str | None = None
) -> str | None:
    """The clean-up of a killed deploy or rollback: start again the workers it had stopped for a
    data restore (`record.paused_workers`), when their release still is the active one. Returns
    what the record's reason should add when they stay stopped or do not stay up (said loudly
    here too), else None. They count as started once they stayed up RESTART_SETTLE_SECONDS, as
    after a restore (WorkerPause.restart); else the mark stays, with why, for the agent's retry.
    `under_way`: the coordinated deploy this host took part in goes on (its orchestrator still
    holds the lock): the workers wait for its end (the primary may be restoring the data), and
    the agent's retry starts them then (pipeline/paused_workers_retry.py)."""
    paused = record.paused_workers
    if not paused:
        return None
    slot, release_id = str(paused["slot"]), str(paused["release_id"])
    components = [str(name) for name in paused["components"]]
    named = ", ".join(components)
    why = _why_not_resumed(record)
    try:
        status = agent.status()
        slot_status = status["slots"][slot]
        release = slot_status.get("release") or {}
        running = {process["component"] for process in slot_status.get("processes") or []}
        if status.get("active_slot") != slot or release.get("release_id") != release_id:
            record.paused_workers = None  # the other slot serves: these workers are not to run
            reporter.info(f"the workers {named} it had stopped in slot {slot} stay stopped: that slot does not serve")
            return None
        if why is None and under_way is not None:
            paused["waiting_for"] = under_way
            said = (
                f"the workers {named} of slot {slot} (release {release_id}) stay stopped while the coordinated deploy "
                f"it was part of goes on ({under_way}): another host may be restoring the data; the agent starts "
                "them once its lock is released"
            )
            reporter.warn(said)
            return said
        if why is None:
            since = last_event_id(agent)
            launches = launches_not_running(release, components, running)
            if launches:
                start_launches(agent, slot, launches)
            down = wait_until_up(agent, slot, components, since)
            if down is None:
                record.paused_workers = None
                reporter.warn(
                    f"it had stopped the workers {named} of slot {slot} (release {release_id}) for a data restore: "
                    f"started them again (up {RESTART_SETTLE_SECONDS:g} s)"
                )
                return None
            record.paused_workers = restart_failed(paused, down)
            said = (
                f"THE WORKERS {named} OF SLOT {slot} (release {release_id}) DID NOT STAY UP: the {record.operation} "
                f"stopped them for a data restore and was killed before it started them again; started again by "
                f"its clean-up, {down}; its release runs without them until they do (the agent restarts them, and "
                "tries again with a back-off; see `lockstep status`)"
            )
            reporter.warn(said)
            return said
    except (LockstepError, KeyError) as error:
        why = f"starting them again failed: {error}; the agent tries again"
        record.paused_workers = restart_failed(paused, str(error))
    said = (
        f"THE WORKERS {named} OF SLOT {slot} (release {release_id}) ARE STOPPED: the {record.operation} stopped "
        f"them for a data restore and was killed before it started them again, and they were not started: {why}"
    )
    reporter.warn(said)
    return said


def restart_failed(paused: dict[str, Any], error: str) -> dict[str, Any]:
    """The mark of stopped workers whose start failed: the retry tries again at once, then backs off."""
    return {**paused, "restart_failed": error, "failed_at": time.time()}


def why_kept_stopped(record: OperationRecord) -> str | None:
    """Why the workers a finished operation stopped must stay stopped (no retry), else None: the
    operation said so in the mark (a rollback that could not put the data back), or it was killed
    where they would write into data that is not theirs (below)."""
    kept = (record.paused_workers or {}).get("kept_stopped")
    if kept:
        return str(kept)
    return _why_not_resumed(record) if record.outcome == "interrupted" else None


def _why_not_resumed(record: OperationRecord) -> str | None:
    """Why the stopped workers must stay stopped, else None. A deploy's unwind stopped the
    release that serves again: its workers go back to the data it serves on. A rollback
    --with-data stopped the newer (active) release's: once it began to replace the databases
    with the older release's data (its pre-restore snapshot is recorded just before), they would
    write into data that is not theirs; on a host of a multi-host rollback the primary restores,
    and this host cannot tell whether it began."""
    if record.operation != "rollback":
        return None
    if (record.paused_workers or {}).get("restored_elsewhere"):
        return (
            "another host (the primary) restores the older release's data in this rollback, and may have begun; "
            "finish the rollback with `lockstep rollback --with-data` where it was run"
        )
    if record.pre_restore_snapshot_id is None:
        return None
    pre_restore = record.pre_restore_snapshot_id[:8]
    return (
        "the rollback had begun to replace the databases with the older release's data, and they would write "
        "into it; finish the rollback with `lockstep rollback --with-data`, or put the data back with "
        f"`lockstep snapshot restore {pre_restore}` and start them with `lockstep deploy`"
    )


def launches_not_running(release: dict[str, Any], components: list[str], running: set[str]) -> list[dict[str, Any]]:
    """The release's own launches (as the agent's status lists them) of `components` not running."""
    return [
        launch
        for launch in release.get("components") or []
        if launch.get("component") in components and launch.get("component") not in running
    ]


def start_launches(agent: ComponentStarter, slot: str, launches: list[dict[str, Any]], replace: bool = False) -> None:
    """Start the release's own `launches` (as the agent's status lists them) in `slot`; with
    `replace`, a process of the same component (down, or given up on) is stopped first."""
    from lockstep.agent.service import AgentService, ComponentLaunch

    if isinstance(agent, AgentService):
        agent.start_components(slot, [ComponentLaunch.from_document(launch) for launch in launches], replace=replace)
    else:
        assert isinstance(agent, AgentClient)
        agent.start_components(slot, launches, replace=replace)


def _workers(slot_status: dict[str, Any], config: ProjectConfig) -> list[str]:
    """The components of the slot without a port (workers), as the agent knows them."""
    processes = slot_status.get("processes") or []
    workers = {process["component"] for process in processes if process["port"] is None}
    return sorted(workers & set(config.app.components))
