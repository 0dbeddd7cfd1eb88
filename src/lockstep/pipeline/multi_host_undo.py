"""A host whose lockstep died before the retire "go": its undo is asked for, not assumed.

A host's lockstep killed (kill -9, the OOM killer) runs no unwind: its part is undone by the
clean-up of abandoned operations (pipeline/deploy.py, clean_up_abandoned), which its agent's
watch runs within seconds, as `lockstep status` there does (waiting on the history's clean-up
lock while the agent does it). With its agent down, nothing undoes it until someone runs lockstep
there. One whose SSH session was lost unwinds on its own at its next barrier, out of sight. The
orchestrator said "every host undid its part" as soon as the others had, before that was true.

So once the other hosts have undone their part, the orchestrator (pipeline/multi_host.py) runs
`lockstep status` on each such host itself: that runs the clean-up, and says what the host serves
and what became of its part. While its part is still running (unwinding, or the clean-up lock
held), it asks again, up to CONFIRM_WAIT_SECONDS. Each host's answer is an UndoCheck: `undone`
(the release it served before serves, its part is over), `kept` (the new release still serves
there) or `unconfirmed` (not reached, its agent not running, its part still running). Every host
must be `undone` for the orchestrator to say every host undid its part.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lockstep.exit_codes import ExitCode

if TYPE_CHECKING:
    from lockstep.pipeline.history import OperationRecord
    from lockstep.pipeline.multi_host import HostRun

# How long the orchestrator asks again while a host's part still runs: as long as a clean-up
# waits for the clean-up lock (pipeline/history.py, CLEAN_UP_LOCK_WAIT).
CONFIRM_WAIT_SECONDS = 60.0
ASK_AGAIN_SECONDS = 1.0

UNDONE = "undone"
KEPT = "kept"
UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class UndoCheck:
    """What a host's `lockstep status`, run by the orchestrator after its lockstep died, said of
    its part: UNDONE, KEPT or UNCONFIRMED, the release it serves (when it said), and why."""

    state: str
    detail: str
    release: str | None = None
    previous_release: str | None = None  # what it served before this operation, as its record says

    @property
    def confirmed(self) -> bool:
        return self.state == UNDONE

    def to_document(self) -> dict[str, Any]:
        return {"state": self.state, "release": self.release, "detail": self.detail}


def judge_undo(status: dict[str, Any], operation: str, operation_id: str, new_release: str) -> UndoCheck | None:
    """The host's status (pipeline/multi_host.py, ask_status: its document, or `reachable` and
    `error`) after its part of `operation_id`, which switches to `new_release`; None while its
    part still runs (ask again)."""
    if status.get("reachable") is False:
        return UndoCheck(UNCONFIRMED, f"could not reach it: {status.get('error')}")
    if status.get("error"):
        return UndoCheck(UNCONFIRMED, f"its `lockstep status` failed: {status['error']}")
    agent = status.get("agent") or {}
    if agent.get("running") is False:
        return UndoCheck(
            UNCONFIRMED,
            f"its agent is not running ({agent.get('detail')}), so nothing there undoes its part until it runs",
        )
    last = status.get("last_operation") or {}
    ours = last.get("id") == operation_id
    if ours and last.get("outcome") == "running":
        return None
    release = status.get("release")
    part = f"its part of this {operation} is {last.get('outcome')}" if ours else f"it has no record of this {operation}"
    if release == new_release:
        before = last.get("previous_release_id") if ours else None
        return UndoCheck(KEPT, f"{part}, and IT STILL SERVES release {new_release}", release, before)
    switched_back = " (its clean-up switched it back)" if "switched back to release" in str(last.get("reason")) else ""
    return UndoCheck(UNDONE, f"{part}; it serves release {release or 'none'}{switched_back}", release)


async def confirm_undo(
    ask: Callable[[], Awaitable[dict[str, Any]]],
    operation: str,
    operation_id: str,
    new_release: str,
    wait: float = CONFIRM_WAIT_SECONDS,
) -> UndoCheck:
    """Ask (`ask`: the host's `lockstep status`, which cleans up what died there) until the host's
    part is over, at most `wait` seconds; what it found."""
    deadline = time.monotonic() + wait
    while True:
        judged = judge_undo(await ask(), operation, operation_id, new_release)
        if judged is not None:
            return judged
        if time.monotonic() >= deadline:
            return UndoCheck(UNCONFIRMED, f"its part of this {operation} was still running after {wait:.0f} s")
        await asyncio.sleep(ASK_AGAIN_SECONDS)


async def confirm_host(run: HostRun, ask: Callable[[], Awaitable[dict[str, Any]]], record: OperationRecord) -> None:
    """The host's UndoCheck of its part of `record` (`ask`: its `lockstep status`), in run.undo;
    its record of it as its clean-up left it, when it said none (killed), in run.record_asked_again."""
    answers: list[dict[str, Any]] = []

    async def asked() -> dict[str, Any]:
        answers.append(await ask())
        return answers[-1]

    run.undo = await confirm_undo(asked, record.operation, record.id, switching_to(record))
    last = (answers[-1] if answers else {}).get("last_operation") or {}
    if run.result is None and last.get("id") == record.id:
        run.record_asked_again = last


def switching_to(record: OperationRecord) -> str:
    """The release every host switches to: a rollback's target, a deploy's own ID."""
    return record.release_id or record.id


def undo_uncertain(run: HostRun) -> bool:
    """Whether the host's undo is not known: its lockstep failed (exit 1), or died and its
    clean-up did not confirm it."""
    if run.undo is not None:
        return not run.undo.confirmed
    return run.lost is not None or run.exit_code == int(ExitCode.FAILED) or run.exit_signal is not None


def confirmed_lines(runs: list[HostRun]) -> list[str]:
    """What the orchestrator's clean-up confirmed on each host whose lockstep died."""
    return [
        f"{run.name}'s clean-up, run from here, confirmed its undo: {run.undo.detail}"
        for run in runs
        if run.undo is not None and run.undo.confirmed
    ]


def unconfirmed_line(run: HostRun, environment: str, new_release: str) -> str:
    """One host that did not confirm its undo, said plainly: it may serve the new release."""
    check = run.undo
    if check is None:  # its lockstep failed (exit 1), or was not asked
        return f"{run.name} ({run.outcome})"
    if check.state == KEPT:
        before = check.previous_release or "the release the other hosts serve"
        return (
            f"{run.name}: {check.detail}: `lockstep rollback --to {before} --env {environment}` there brings it to "
            "the release the other hosts serve"
        )
    return (
        f"{run.name}: {check.detail}; HOST {run.name} MAY STILL SERVE release {new_release}: run "
        f"`lockstep status --env {environment}` there (it undoes the dead part; start its agent first if it is "
        "not running)"
    )
