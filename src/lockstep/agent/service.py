"""What the agent does: start and stop releases in the blue and green slots, keep them running,
and move traffic between them. The HTTP server (server.py) is only a way to call these methods.

Every method holds one lock, so a deploy's `start_slot` and the supervision loop never act on
the same process at once. Processes and the proxy are started detached: stopping the agent
stops neither, and a new agent adopts them from agent.db.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockstep.agent.state import SLOTS, AgentState, SlotRecord
from lockstep.config import ProjectConfig
from lockstep.errors import LockstepError, UsageError
from lockstep.fault_injection import kill_point
from lockstep.layout import EnvironmentLayout
from lockstep.runtimes.local import ProcessSpec, RunningProcess, is_running, start_process, stop_process
from lockstep.runtimes.supervisor import Supervisor
from lockstep.traffic.base import HoldUnsupported, TrafficSwitch
from lockstep.traffic.factory import switch_for
from lockstep.traffic.hold import HoldOwner

# How often the agent checks that the traffic switch runs, and the longest wait between two
# attempts to start it again.
PROXY_CHECK_INTERVAL = 2.0
PROXY_BACKOFF_MAX = 30.0


class AgentError(LockstepError):
    """A request the agent cannot carry out; the message says why and what to do."""


@dataclass(frozen=True)
class ComponentLaunch:
    """One component of a release as a deploy asks the agent to run it."""

    component: str
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int | None
    stop_timeout: float

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ComponentLaunch:
        return cls(
            component=str(document["component"]),
            argv=tuple(str(argument) for argument in document["argv"]),
            env={str(key): str(value) for key, value in dict(document.get("env") or {}).items()},
            port=None if document.get("port") is None else int(document["port"]),
            stop_timeout=float(document.get("stop_timeout", 10.0)),
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "argv": list(self.argv),
            "env": self.env,
            "port": self.port,
            "stop_timeout": self.stop_timeout,
        }


def _check_slot(slot: str) -> str:
    if slot not in SLOTS:
        raise UsageError(f"unknown slot {slot!r}", "the slots are blue and green")
    return slot


class AgentService:
    """The agent's behaviour for one environment of one project."""

    def __init__(
        self,
        config: ProjectConfig,
        layout: EnvironmentLayout,
        supervisor: Supervisor | None = None,
        traffic: TrafficSwitch | None = None,
    ) -> None:
        self.config = config
        self.layout = layout
        layout.create()
        self.state = AgentState(layout.agent_database)
        self.traffic = traffic if traffic is not None else switch_for(config.traffic, layout.proxy)
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self._lock = threading.RLock()
        self._slot_of: dict[str, tuple[str, str]] = {}  # process name -> (slot, component)
        self.started_at = time.time()
        self._closed = False
        self._next_proxy_check = 0.0
        self._proxy_failures = 0

    # -- start-up ------------------------------------------------------------------------------

    def adopt(self) -> int:
        """Take over the processes a previous agent started, and make sure traffic flows again."""
        with self._lock:
            records = self.state.process_records()
            # The records carry the supervision state too (restart times, crash loop), so a new
            # agent neither resets a backoff nor restarts what was given up on.
            self.supervisor = Supervisor.from_records(records)
            for record in records:
                process = RunningProcess.from_record(record)
                self._slot_of[process.spec.name] = (str(record.get("slot", "")), str(record.get("component", "")))
            adopted = len(records)
            active = self.state.active_slot
            port = self._traffic_port(active) if active else None
            if port is not None:
                self.traffic.ensure_running(port)
            if adopted:
                self.state.add_event("adopted", "agent", f"{adopted} running processes adopted")
            return adopted

    # -- slots ---------------------------------------------------------------------------------

    def start_slot(
        self, slot: str, release_id: str, release_directory: Path, version: str | None, launches: list[ComponentLaunch]
    ) -> dict[str, Any]:
        """Start every component of a release in `slot` (which must not have traffic)."""
        _check_slot(slot)
        with self._lock:
            self._refuse_when_closed()
            if self.state.active_slot == slot:
                raise AgentError(
                    f"slot {slot} has the traffic: a new release starts in the other slot",
                    "this is a bug in the caller; nothing was changed",
                )
            if not release_directory.is_dir():
                raise AgentError(f"release directory {release_directory} does not exist")
            self._stop_slot_locked(slot)
            self._launch(slot, release_id, release_directory, launches)
            self.state.save_slot(
                SlotRecord(
                    slot=slot,
                    release_id=release_id,
                    release_directory=str(release_directory),
                    version=version,
                    started_at=time.time(),
                    components=[launch.to_document() for launch in launches],
                )
            )
            self._persist_processes()
            self.state.add_event("slot-started", slot, f"release {release_id} started in slot {slot}")
            return self._slot_document(slot)

    def start_components(
        self,
        slot: str,
        launches: list[ComponentLaunch],
        release_id: str | None = None,
        release_directory: Path | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Start more components in `slot`: of its own release (its workers, on a rollback), or of
        another release (`release_id`, `release_directory`: one component rolled back alone).

        With `replace`, a running process of the same component is stopped first (a worker, which
        has no traffic to lose).
        """
        _check_slot(slot)
        with self._lock:
            self._refuse_when_closed()
            record = self.state.slot(slot)
            if record is None:
                raise AgentError(f"slot {slot} runs no release", "start one with a deploy")
            if replace:
                self._stop_slot_locked(slot, [launch.component for launch in launches])
            running = {component for owner, component in self._slot_of.values() if owner == slot}
            wanted = [launch for launch in launches if launch.component not in running]
            self._launch(
                slot,
                release_id or record.release_id,
                release_directory or Path(record.release_directory),
                wanted,
            )
            self._persist_processes()
            return self._slot_document(slot)

    def _launch(self, slot: str, release_id: str, release_directory: Path, launches: list[ComponentLaunch]) -> None:
        """Start `launches` in order; on any failure stop the ones this call started, then raise."""
        started: list[RunningProcess] = []
        logs = self.layout.logs / release_id
        logs.mkdir(parents=True, exist_ok=True)
        try:
            for launch in launches:
                spec = ProcessSpec(
                    name=f"{launch.component}@{slot}",
                    argv=launch.argv,
                    cwd=release_directory,
                    env=launch.env,
                    port=launch.port,
                    log_path=logs / f"{launch.component}.log",
                    stop_timeout=launch.stop_timeout,
                )
                process = start_process(spec)
                started.append(process)
                self.supervisor.add(process)
                self._slot_of[spec.name] = (slot, launch.component)
        except BaseException:
            for process in reversed(started):
                self.supervisor.remove(process.spec.name)
                self._slot_of.pop(process.spec.name, None)
                stop_process(process)
            raise

    def stop_slot(self, slot: str, components: list[str] | None = None) -> None:
        """Stop a slot's processes (all, or only `components`), last started first."""
        _check_slot(slot)
        with self._lock:
            if components is None and self.state.active_slot == slot:
                raise AgentError(
                    f"slot {slot} has the traffic: switch traffic away before stopping it",
                    "nothing was stopped",
                )
            self._stop_slot_locked(slot, components)

    def _stop_slot_locked(self, slot: str, components: list[str] | None = None) -> None:
        names = [
            name
            for name, (owner, component) in self._slot_of.items()
            if owner == slot and (components is None or component in components)
        ]
        record = self.state.slot(slot)
        order = [launch["component"] for launch in record.components] if record else []
        names.sort(key=lambda name: -order.index(name.split("@")[0]) if name.split("@")[0] in order else 0)
        for name in names:
            process = self.supervisor.remove(name)
            self._slot_of.pop(name, None)
            if process is not None:
                stop_process(process)
        if components is None:
            self.state.clear_slot(slot)
        self._persist_processes()
        if names:
            self.state.add_event("slot-stopped", slot, f"stopped {', '.join(sorted(names))}")

    # -- traffic -------------------------------------------------------------------------------

    def _traffic_port(self, slot: str) -> int | None:
        record = self.state.slot(slot)
        if record is None:
            return None
        wanted = self.config.traffic.component
        for launch in record.components:
            if launch.get("port") is not None and (wanted is None or launch["component"] == wanted):
                return int(launch["port"])
        return None

    def _runs_workers_only(self, slot: str) -> bool:
        """Whether `slot` runs a release none of whose components has a port: an app of workers
        only, as the deploy that started it planned it (its launch documents, not this agent's
        config, which may be older than the deploy's)."""
        record = self.state.slot(slot)
        return (
            record is not None
            and bool(record.components)
            and all(launch.get("port") is None for launch in record.components)
        )

    def switch(self, slot: str) -> dict[str, Any]:
        """Send traffic to `slot`'s release, atomically.

        A release of workers only has no traffic to move, but still becomes the active slot: so
        the next deploy starts beside it in the other slot and the old workers run until the new
        ones pass their checks, and a failed deploy or a rollback switches back to them. The
        proxy is left alone."""
        _check_slot(slot)
        with self._lock:
            port = self._traffic_port(slot)
            if port is None and self._runs_workers_only(slot):
                started = time.monotonic()
                self.state.set_setting("active_slot", slot)
                elapsed = time.monotonic() - started
                self.state.add_event("switched", slot, f"slot {slot} is active (workers only: no traffic to move)")
                return {"slot": slot, "port": None, "seconds": elapsed}
            if port is None:
                raise AgentError(
                    f"slot {slot} runs no component with a port, so it cannot take traffic",
                    "start a release in it first (lockstep deploy)",
                )
            started = time.monotonic()
            self.traffic.ensure_running(port)
            self.traffic.switch_to(port)
            self.state.set_setting("active_slot", slot)
            elapsed = time.monotonic() - started
            self.state.add_event("switched", slot, f"traffic to slot {slot} (port {port}) in {elapsed * 1000:.0f} ms")
            return {"slot": slot, "port": port, "seconds": elapsed}

    def withdraw_traffic(self, slot: str) -> None:
        """Take the traffic role from `slot` without giving it to another: the undo of a first
        deploy's switch, when no earlier release exists to switch back to. Requests then fail
        at the proxy (as they did before that deploy) until the next deploy switches again."""
        _check_slot(slot)
        with self._lock:
            if self.state.active_slot == slot:
                self.state.set_setting("active_slot", None)
                self.state.add_event("traffic-withdrawn", slot, f"slot {slot} no longer has the traffic")

    def wait_drained(self, slot: str, timeout: float) -> bool:
        # Tests: the agent dies as a deploy or rollback starts to retire `slot`, after its switch.
        kill_point(f"drain {slot}")
        port = self._traffic_port(_check_slot(slot))
        if port is None:
            return True
        return self.traffic.wait_drained(port, timeout)

    def hold(self, owner: HoldOwner, timeout: float) -> dict[str, Any]:
        """Hold new requests for a data rollback, then wait (up to the drain timeout) until none is
        in flight anywhere: from then on no request meets the databases being replaced."""
        with self._lock:
            active = self.state.active_slot
            port = self._traffic_port(active) if active else None
            if port is None:
                return {"held": False, "mode": None, "drained": True, "reason": "no slot has the traffic"}
            self.traffic.ensure_running(port)
            try:
                mode = self.traffic.hold(owner, timeout)
            except HoldUnsupported as error:
                return {"held": False, "mode": None, "drained": True, "reason": error.message}
            self.state.add_event(
                "traffic-held", "traffic", f"traffic held for pid {owner.pid} ({mode}, deadline {timeout:g} s)"
            )
        started = time.monotonic()
        deadline = started + self.config.traffic.drain_timeout
        drained = all(
            self.traffic.wait_drained(upstream.port, max(0.0, deadline - time.monotonic()))
            for upstream in self.traffic.state().upstreams
        )
        return {"held": True, "mode": mode, "drained": drained, "drain_seconds": time.monotonic() - started}

    def release(self) -> dict[str, Any]:
        """End a hold: waiting and new requests go to the slot that has the traffic now."""
        with self._lock:
            summary = self.traffic.release()
            if summary is not None:
                self.state.add_event(
                    "traffic-released",
                    "traffic",
                    f"traffic released after {summary.get('seconds', '?')} s"
                    + (f", to slot {self.state.active_slot}" if self.state.active_slot else ""),
                )
            return {"released": summary is not None, "hold": summary}

    # -- supervision ---------------------------------------------------------------------------

    def poll(self) -> None:
        """One round of supervision: restart what died, the traffic switch included, and record
        what happened."""
        with self._lock:
            events = self.supervisor.poll()
            for event in events:
                self.state.add_event(event.kind, event.name, event.detail, at=event.at)
            if events:  # a restart changes a PID and the supervision state: keep both on disk
                self._persist_processes()
            self._keep_traffic_switch_up()
            self._end_orphaned_hold()

    def _end_orphaned_hold(self) -> None:
        """A switch that cannot watch the hold's owner itself (nginx, HAProxy) is checked here."""
        try:
            reason = self.traffic.check_hold()
        except LockstepError as error:
            self.state.add_event("traffic-hold-check-failed", "traffic", str(error))
            return
        if reason is not None:
            self.state.add_event("traffic-released", "traffic", f"traffic released: {reason}")

    def _keep_traffic_switch_up(self, now: float | None = None) -> None:
        """Start the proxy again when it died (kill -9, the OOM killer) while a slot has the traffic:
        nothing else would until the next deploy or agent restart, and the site is down meanwhile.

        Only a proxy lockstep runs (built-in, managed nginx or HAProxy); a user's own server in
        system mode is theirs to restart. Checked every PROXY_CHECK_INTERVAL seconds; a failed
        start is retried with the same backoff as the app's processes, each failure an event.
        """
        moment = time.monotonic() if now is None else now
        if moment < self._next_proxy_check or self._closed:
            return
        self._next_proxy_check = moment + PROXY_CHECK_INTERVAL
        traffic = self.config.traffic
        active = self.state.active_slot
        if active is None or (traffic.kind != "builtin" and traffic.mode != "managed"):
            return
        if self.traffic.state().running:
            self._proxy_failures = 0
            return
        port = self._traffic_port(active)
        if port is None:
            return
        try:
            self.traffic.ensure_running(port)
        except LockstepError as error:
            self._proxy_failures += 1
            delay = min(PROXY_BACKOFF_MAX, PROXY_CHECK_INTERVAL * 2**self._proxy_failures)
            self._next_proxy_check = moment + delay
            self.state.add_event(
                "proxy-restart-failed",
                "traffic",
                f"the {traffic.kind} traffic switch is not running and did not start: {error}; "
                f"trying again in {delay:g} s",
            )
            return
        self._proxy_failures = 0
        self.state.add_event(
            "proxy-restarted",
            "traffic",
            f"the {traffic.kind} traffic switch was not running: started it again, "
            f"traffic to slot {active} (port {port})",
        )

    def _persist_processes(self) -> None:
        records = []
        for record in self.supervisor.records():
            name = str(record["name"])
            slot, component = self._slot_of.get(name, ("", name.split("@")[0]))
            records.append((slot, component, {**record, "slot": slot, "component": component}))
        self.state.save_processes(records)

    # -- reporting -----------------------------------------------------------------------------

    def _slot_document(self, slot: str) -> dict[str, Any]:
        record = self.state.slot(slot)
        processes = []
        for name, (owner, component) in sorted(self._slot_of.items()):
            if owner != slot:
                continue
            process = self.supervisor.get(name)
            processes.append(
                {
                    "component": component,
                    "pid": None if process is None else process.pid,
                    "port": None if process is None else process.spec.port,
                    "running": process is not None and is_running(process),
                    "crash_looped": self.supervisor.is_crash_looped(name),
                    "log": None if process is None else str(process.spec.log_path),
                    "release": None if process is None else process.spec.cwd.name,
                    "started_at": None if process is None else process.started_at,
                }
            )
        return {
            "slot": slot,
            "release": None if record is None else record.to_document(),
            "processes": processes,
        }

    def status(self) -> dict[str, Any]:
        with self._lock:
            traffic_state = self.traffic.state()
            return {
                "environment": self.layout.environment,
                "agent": {"pid": os.getpid(), "started_at": self.started_at},
                "active_slot": self.state.active_slot,
                "slots": {slot: self._slot_document(slot) for slot in SLOTS},
                "traffic": {
                    "kind": self.config.traffic.kind,
                    "listen": traffic_state.listen,
                    "running": traffic_state.running,
                    "active_port": traffic_state.active_port,
                    "upstreams": [
                        {
                            "port": counters.port,
                            "requests": counters.requests,
                            "errors": counters.errors,
                            "in_flight": counters.in_flight,
                        }
                        for counters in traffic_state.upstreams
                    ],
                    "hold": traffic_state.hold,
                },
                "last_event_id": self.state.last_event_id(),
            }

    def events(self, since_id: int) -> list[dict[str, Any]]:
        return [event.to_document() for event in self.state.events(since_id)]

    def shutdown_everything(self) -> None:
        """Stop every slot and the traffic switch (for `lockstep agent stop --apps`)."""
        with self._lock:
            self.state.set_setting("active_slot", None)
            for slot in SLOTS:
                self._stop_slot_locked(slot)
            self.traffic.stop()

    def _refuse_when_closed(self) -> None:
        if self._closed:
            raise AgentError("the agent is stopping", "try again once the next agent runs")

    def close(self) -> None:
        """Close the state once no request is changing it.

        A request thread may be half-way through starting a release when the agent is told to stop
        (SIGTERM, `agent stop`): its processes are started but not yet recorded. The lock makes
        close() wait until they are recorded in agent.db, so the next agent adopts them instead of
        leaving them running unknown, holding the slot's port; later requests are refused.
        """
        with self._lock:
            self._closed = True
            self.state.close()
