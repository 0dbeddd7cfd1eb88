"""A multi-host deploy or rollback after its retire "go": every host keeps the release it
switched to, and says so.

Once every host has switched (a deploy: and watched its window) and been told "go" at its retire
barrier, that release serves everywhere and some hosts may have retired the slot they left
already. Undoing one host then (its retire step failing, its lock check failing, a rollback's
workers not restarting) would leave the hosts on different releases, and an unwind's data step
would restore the data under the others' release, losing what they wrote since. Undoing every
host is another deploy or rollback, of a release that every host switched to. So past that "go"
the way is forward only: a host that fails keeps the release (keep_release, shared by
pipeline/deploy.py and pipeline/rollback.py) and says what it left unfinished; the orchestrator
(pipeline/multi_host.py, HostFanOut) waits for every host, asks a host that did not confirm (its
connection dropped: did the "go" reach it?) what it serves now, and reports each host's state
(exit 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockstep.pipeline.deploy import DeployFailed
from lockstep.pipeline.history import RedactedRecord

if TYPE_CHECKING:
    from lockstep.pipeline.history import History, OperationRecord
    from lockstep.pipeline.multi_host import HostRun
    from lockstep.pipeline.steps import StepRunner
    from lockstep.redaction import Redactor

# A host whose retire step failed after the "go": it kept the new release (pipeline/deploy.py).
KEPT = "kept, retire unfinished"


def keep_release(
    record: OperationRecord,
    steps: StepRunner,
    failure: tuple[str | None, str],
    saved_in: tuple[History, Redactor],
    retire_left: dict[str, Any] | None,
    unfinished: str,
) -> DeployFailed:
    """A host's part failing past its retire barrier's "go": nothing is undone, the host keeps
    the release every host was told to keep, its record says so, and the failure to raise (exit
    1). `failure` is the failed step and why (redacted); `retire_left` the slot it left, for the
    agent to finish its retire (pipeline/unfinished_retire.py); `unfinished` what may be left."""
    step, reason = failure
    history, redactor = saved_in
    release = record.release_id or record.id
    steps.settle()
    record.outcome = "succeeded"  # its release serves, here as on every host: rollbacks count it
    record.failed_step = step
    record.reason = f"{reason}; nothing was undone: every host was told to keep release {release}"
    record.retire_left = retire_left
    record.finished_at = time.time()
    record.steps = [item.to_document() for item in steps.records]
    history.save(record)
    finishing = (
        "; this host's agent finishes its retire within seconds (stops the workers of the slot it left)"
        if retire_left
        else ""
    )
    return DeployFailed(
        f"{record.operation} {record.id} failed at {step or 'its end'} after every host was told to keep release "
        f"{release}: {reason}; nothing was undone: release {release} serves here",
        f"{unfinished}{finishing}: see `lockstep status` here",
        result=RedactedRecord(record, redactor),
    )


def retire_outcome(run: HostRun, outcome_of_exit: str) -> str:
    """What a host did with the retire "go": succeeded, KEPT, or its exit's outcome (lost...)."""
    if outcome_of_exit == "failed" and (run.result or {}).get("outcome") == "succeeded":
        return KEPT
    return outcome_of_exit


@dataclass
class RetireReport:
    """Each unfinished host's state after the retire "go", and what it means for the fleet."""

    operation_id: str
    environment: str
    operation: str = "deploy"  # or "rollback"
    release_id: str | None = None  # the release every host was told to keep; a deploy's is its ID
    lines: list[str] = field(default_factory=list)
    every_host_serves: bool = True  # every host serves the release, as far as it said
    agents_down: list[str] = field(default_factory=list)  # hosts whose agent, asked again, did not run

    def __post_init__(self) -> None:
        self.release_id = self.release_id or self.operation_id

    def add(self, run: HostRun, status: dict[str, Any] | None) -> None:
        """One host that did not succeed; `status` its `lockstep status` now, when it was asked."""
        if run.outcome == KEPT:
            line = f"{run.name} serves it, but its retire did not finish ({run.failure()})"
            if status is not None and (status.get("agent") or {}).get("running") is False:
                # Its agent would finish the retire: say that nothing will until it runs again.
                self.agents_down.append(run.name)
                line += "; ITS AGENT IS NOT RUNNING, so nothing finishes its retire until it runs again"
            self.lines.append(line)
            return
        self.every_host_serves = self.every_host_serves and self._serves(status)
        self.lines.append(f"{run.name} did not confirm ({run.failure()}); {self._describe_status(status)}")

    def reason(self) -> str:
        return "after every host was told to keep the release: " + "; ".join(self.lines)

    def failure(self, result: RedactedRecord | None = None) -> DeployFailed:
        deploy = self.operation == "deploy"
        if self.every_host_serves:
            subject = (
                f"deploy {self.operation_id}" if deploy else f"rollback {self.operation_id}: release {self.release_id}"
            )
            undo = (
                f"`lockstep rollback --env {self.environment}` takes every host back if the release should not stay"
                if deploy
                else f"`lockstep deploy --env {self.environment}` takes every host forward if it should not stay"
            )
            start = (
                f"start the agent on {', '.join(self.agents_down)} (`lockstep agent --env {self.environment}` there, "
                "or its service): it finishes the retire there; "
                if self.agents_down
                else ""
            )
            return DeployFailed(
                f"{subject} serves on every host, but did not finish everywhere: {self.reason()}; "
                "nothing was undone: past the retire barrier every host keeps the release it switched to",
                f"{start}each host's agent finishes its retire within seconds (stops the workers of the slot it "
                "left), as `lockstep status` there does; " + undo,
                result=result,
            )
        again = (
            "deploy again to bring every host to the same release"
            if deploy
            else f"bring every host to release {self.release_id} (`lockstep rollback --to {self.release_id}` on each "
            "host that serves another), or deploy again"
        )
        return DeployFailed(
            f"{self.operation} {self.operation_id}: THE HOSTS MAY SERVE DIFFERENT RELEASES: {self.reason()}",
            f"`lockstep status --env {self.environment}` shows what each host serves; {again}",
            result=result,
        )

    def _serves(self, status: dict[str, Any] | None) -> bool:
        """Whether the host's status says its part is over and the release serves there.

        A part that is still running may yet undo itself (a host that lost its connection before
        the "go" unwinds at its barrier): not over. One that was killed is "interrupted" once
        the clean-up ran (the status that answered runs it): that clean-up keeps the release
        when it has the traffic, so an interrupted part whose release serves is over too."""
        if status is None or status.get("error") or status.get("release") != self.release_id:
            return False
        last = status.get("last_operation") or {}
        return last.get("id") != self.operation_id or last.get("outcome") in ("succeeded", "interrupted")

    def _describe_status(self, status: dict[str, Any] | None) -> str:
        if status is None:
            return "its state is unknown"
        if status.get("error"):
            return f"asked again, it did not answer: {status['error']}"
        release = status.get("release")
        last = status.get("last_operation") or {}
        part = (
            f" (its part of this {self.operation}: {last.get('outcome')})"
            if last.get("id") == self.operation_id
            else ""
        )
        if release == self.release_id:
            return f"asked again, it serves this release{part}"
        return f"asked again, it serves release {release or 'none'}, NOT this one{part}"
