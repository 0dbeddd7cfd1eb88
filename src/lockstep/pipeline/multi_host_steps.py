"""Where a host's lockstep was, as its step events said, for when it dies without saying more.

A host's lockstep killed outright (kill -9, the OOM killer) writes no result: the orchestrator
has only the SSH session's end, an exit signal and no exit status (asyncssh's exit_status -1).
Reported as "exit code -1", at whatever step its history record last stored (a step nested in
another, e.g. a rollback's pre-switch check inside its code step, stays stored as running after
it finished), it read as a step failing. What it was doing is in the step events it wrote on
stderr (`--log-format json`), which the orchestrator reads anyway: the innermost step started
and not ended.
"""

from __future__ import annotations

from typing import Any

from lockstep.remote.ssh import ended_by


class RunningSteps:
    """The steps a host's lockstep has started and not yet ended, innermost last, and the first
    that failed (a host killed while it unwinds failed before it was killed)."""

    def __init__(self) -> None:
        self._running: list[str] = []
        self.first_failed: tuple[str, str] | None = None  # the step, why

    def seen(self, event: dict[str, Any]) -> None:
        """One event of the host's stderr (cli/reporting.py: step-started, -finished, -failed)."""
        step = event.get("step")
        if not isinstance(step, str):
            return
        kind = event.get("event")
        if kind == "step-started":
            self._running.append(step)
        elif kind in ("step-finished", "step-failed") and step in self._running:
            del self._running[len(self._running) - 1 - self._running[::-1].index(step)]
        if kind == "step-failed" and self.first_failed is None:
            self.first_failed = (step, str(event.get("reason") or "no reason given"))

    @property
    def current(self) -> str | None:
        return self._running[-1] if self._running else None


def died_by_signal(signal: str, steps: RunningSteps, waiting_at: str | None) -> str:
    """What happened to a host's lockstep ended by `signal`, where its step events left it (or
    the barrier it waited at outside any step, as an unwind does)."""
    where = (
        f" during its {steps.current} step"
        if steps.current
        else f" while it waited at its {waiting_at} barrier"
        if waiting_at
        else ""
    )
    died = f"its lockstep process {ended_by(signal)}{where}"
    if steps.first_failed is None:
        return died
    step, reason = steps.first_failed
    return f"failed at {step}: {reason}; then {died}"
