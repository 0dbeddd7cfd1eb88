"""Keeps the application's processes alive between deploys: the agent calls `poll()` periodically.

A dead process is restarted after a delay that doubles with each recent restart (1, 2, 4 ... 30 s
by default), so a process that cannot start does not burn the machine. When it has been
restarted `crash_loop_restarts` times within `crash_loop_window` seconds it is left dead and a
`crash-loop` event says so: restarting it again will not help, a person (or a rollback) must.
Restart delays are computed from restarts inside the window, so a process that has run
cleanly for a whole window starts again from the shortest delay.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lockstep.errors import LockstepError
from lockstep.runtimes.local import (
    RunningProcess,
    describe_exit,
    is_running,
    log_tail,
    reap,
    rotate_log,
    start_process,
)

EventKind = Literal["exited", "restarted", "restart-failed", "crash-loop"]


@dataclass(frozen=True)
class SupervisorEvent:
    """Something the supervisor saw or did; `detail` has the exit code when known and the log tail."""

    kind: EventKind
    name: str
    at: float
    detail: str


@dataclass
class _Supervised:
    process: RunningProcess
    restarts: list[float] = field(default_factory=list)  # when restarts were attempted (`now` values)
    next_restart_at: float | None = None  # set while it is dead and waiting for its restart
    crash_looped: bool = False


class Supervisor:
    """A set of named processes kept alive; not thread-safe (the agent polls from one thread)."""

    def __init__(
        self,
        crash_loop_restarts: int = 5,
        crash_loop_window: float = 60.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_keep: int = 5,
        settle_seconds: float = 0.3,
        log_tail_lines: int = 20,
    ) -> None:
        self.crash_loop_restarts = crash_loop_restarts
        self.crash_loop_window = crash_loop_window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.settle_seconds = settle_seconds
        self.log_tail_lines = log_tail_lines
        self._supervised: dict[str, _Supervised] = {}

    def add(self, process: RunningProcess) -> None:
        """Supervise `process` under its spec's name, replacing (not stopping) any process of that name."""
        self._supervised[process.spec.name] = _Supervised(process)

    def remove(self, name: str) -> RunningProcess | None:
        """Stop supervising `name` (call this *before* stopping it); the process is not stopped."""
        entry = self._supervised.pop(name, None)
        return None if entry is None else entry.process

    def get(self, name: str) -> RunningProcess | None:
        """The current process for `name` (a restart replaces it with a new PID)."""
        entry = self._supervised.get(name)
        return None if entry is None else entry.process

    def names(self) -> list[str]:
        return sorted(self._supervised)

    def is_crash_looped(self, name: str) -> bool:
        """Whether `name` was given up on; `add()` a new process (a deploy, a rollback) to resume."""
        entry = self._supervised.get(name)
        return entry is not None and entry.crash_looped

    def poll(self, now: float | None = None) -> list[SupervisorEvent]:
        """Rotate big logs, notice dead processes and restart those whose delay has passed."""
        moment = time.time() if now is None else now
        events: list[SupervisorEvent] = []
        for name in sorted(self._supervised):
            entry = self._supervised[name]
            rotate_log(entry.process.spec.log_path, self.log_max_bytes, self.log_keep)
            if entry.crash_looped:
                continue
            if entry.next_restart_at is None:
                if is_running(entry.process):
                    continue
                events.append(self._exited(entry, moment))
            if entry.next_restart_at is not None and moment >= entry.next_restart_at:
                events.append(self._restart(entry, moment))
        return events

    def _recent_restarts(self, entry: _Supervised, moment: float) -> int:
        entry.restarts = [at for at in entry.restarts if at > moment - self.crash_loop_window]
        return len(entry.restarts)

    def _tail(self, entry: _Supervised) -> str:
        tail = log_tail(entry.process.spec.log_path, self.log_tail_lines)
        return f"; last lines of {entry.process.spec.log_path}:\n{tail}" if tail else ""

    def _exited(self, entry: _Supervised, moment: float) -> SupervisorEvent:
        code = reap(entry.process)
        recent = self._recent_restarts(entry, moment)
        if recent >= self.crash_loop_restarts:
            entry.crash_looped = True
            plan = (
                f"not restarting: it was restarted {recent} times in the last {self.crash_loop_window:g} s; "
                "fix it and deploy (or roll back)"
            )
        else:
            delay = min(self.backoff_max, self.backoff_initial * 2**recent)
            entry.next_restart_at = moment + delay
            plan = f"restarting in {delay:g} s"
        detail = f"{describe_exit(code)}; {plan}{self._tail(entry)}"
        kind: EventKind = "crash-loop" if entry.crash_looped else "exited"
        return SupervisorEvent(kind, entry.process.spec.name, moment, detail)

    def _restart(self, entry: _Supervised, moment: float) -> SupervisorEvent:
        name = entry.process.spec.name
        entry.restarts.append(moment)
        entry.next_restart_at = None
        try:
            entry.process = start_process(entry.process.spec, self.settle_seconds)
        except LockstepError as error:
            recent = self._recent_restarts(entry, moment)
            if recent >= self.crash_loop_restarts:
                entry.crash_looped = True
                return SupervisorEvent(
                    "crash-loop",
                    name,
                    moment,
                    f"{error}; not restarting: {recent} restarts failed or crashed in the last "
                    f"{self.crash_loop_window:g} s; fix it and deploy (or roll back)",
                )
            delay = min(self.backoff_max, self.backoff_initial * 2**recent)
            entry.next_restart_at = moment + delay
            return SupervisorEvent("restart-failed", name, moment, f"{error}; trying again in {delay:g} s")
        return SupervisorEvent(
            "restarted", name, moment, f"pid {entry.process.pid} (restart {len(entry.restarts)} in this window)"
        )

    def records(self) -> list[dict[str, Any]]:
        """Each process's `RunningProcess.to_record()` plus a "supervision" key with the restart
        state, so a restarted agent neither forgets a crash loop nor resets the backoff."""
        return [
            {
                **entry.process.to_record(),
                "supervision": {
                    "restarts": list(entry.restarts),
                    "next_restart_at": entry.next_restart_at,
                    "crash_looped": entry.crash_looped,
                },
            }
            for _, entry in sorted(self._supervised.items())
        ]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], **settings: Any) -> Supervisor:
        """Rebuild from `records()` (or plain `RunningProcess.to_record()` dicts); processes that
        died while no agent ran are noticed, and restarted, by the next `poll()`."""
        supervisor = cls(**settings)
        for record in records:
            process = RunningProcess.from_record(record)
            state = record.get("supervision") or {}
            supervisor._supervised[process.spec.name] = _Supervised(
                process,
                restarts=[float(at) for at in state.get("restarts", [])],
                next_restart_at=None if state.get("next_restart_at") is None else float(state["next_restart_at"]),
                crash_looped=bool(state.get("crash_looped", False)),
            )
        return supervisor
