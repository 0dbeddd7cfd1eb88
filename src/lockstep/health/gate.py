"""The health gate: a release goes live only after N consecutive passing checks.

Consecutive, because an application that answers once and then falls over (a crash after
warm-up, a pool that runs dry) must not be switched to. The gate gives up early when the
process has exited (waiting out the timeout would only delay the rollback) and always says
why it failed: the process's last log lines, or the last check's failure reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lockstep.health.checks import HealthCheck, describe_check, run_check


@dataclass(frozen=True)
class GateResult:
    ok: bool
    reason: str
    attempts: int  # checks run
    elapsed: float  # seconds


def wait_until_healthy(
    check: HealthCheck,
    passes_required: int = 3,
    interval: float = 0.5,
    timeout: float = 60.0,
    process_alive: Callable[[], bool] | None = None,
    log_tail: Callable[[], str] | None = None,
) -> GateResult:
    """Run `check` every `interval` seconds until it passes `passes_required` times in a row
    (ok), the process is seen dead (fails at once) or `timeout` seconds pass (fails)."""
    started = time.monotonic()
    deadline = started + timeout
    required = max(1, passes_required)
    attempts = 0
    passes = 0
    last_failure: str | None = None
    name = describe_check(check)

    def result(ok: bool, reason: str) -> GateResult:
        return GateResult(ok, reason, attempts, time.monotonic() - started)

    def exited() -> GateResult:
        tail = log_tail() if log_tail is not None else ""
        shown = "\n".join("    " + line for line in tail.splitlines())
        return result(
            False,
            f"the process exited before it became healthy ({name}, {attempts} checks"
            + (f", last failure: {last_failure}" if last_failure else "")
            + ")"
            + (f"; its last log lines:\n{shown}" if shown else "; its log is empty"),
        )

    while True:
        if process_alive is not None and not process_alive():
            return exited()
        attempts += 1
        outcome = run_check(check)
        if outcome.ok:
            passes += 1
            if passes >= required:
                return result(True, f"healthy: {passes} consecutive passes of {name}")
        else:
            passes = 0
            last_failure = outcome.reason
            if process_alive is not None and not process_alive():
                return exited()
        now = time.monotonic()
        if now >= deadline:
            return result(
                False,
                f"not healthy after {timeout:g} s ({attempts} checks of {name}, "
                f"{passes} of {required} consecutive passes); "
                + (f"last failure: {last_failure}" if last_failure else "it never failed but passed too few times"),
            )
        time.sleep(min(interval, max(0.0, deadline - now)))
