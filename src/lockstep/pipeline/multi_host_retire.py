"""A multi-host deploy after its retire "go": every host keeps the new release, and says so.

Once every host has switched, watched its window and been told "go" at its retire barrier, the
new release serves everywhere and some hosts may have retired their old slot already. Undoing one
host then (its retire step failing, its lock check failing) would leave the hosts on different
releases, and the primary's unwind would restore the data under the others' new release, losing
what they wrote since. Undoing every host is a rollback of a release that passed every check on
every host. So past that "go" the way is forward only: a host whose retire fails keeps the new
release (pipeline/deploy.py, _keep_release) and says what it left unfinished; the orchestrator
waits for every host, asks a host that did not confirm (its connection dropped: did the "go"
reach it?) what it serves now, and reports each host's state (exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lockstep.pipeline.deploy import DeployFailed

if TYPE_CHECKING:
    from lockstep.pipeline.history import RedactedRecord
    from lockstep.pipeline.multi_host import HostRun

# A host whose retire step failed after the "go": it kept the new release (pipeline/deploy.py).
KEPT = "kept, retire unfinished"


def retire_outcome(run: HostRun, outcome_of_exit: str) -> str:
    """What a host did with the retire "go": succeeded, KEPT, or its exit's outcome (lost...)."""
    if outcome_of_exit == "failed" and (run.result or {}).get("outcome") == "succeeded":
        return KEPT
    return outcome_of_exit


@dataclass
class RetireReport:
    """Each unfinished host's state after the retire "go", and what it means for the fleet."""

    deploy_id: str
    environment: str
    lines: list[str] = field(default_factory=list)
    every_host_serves: bool = True  # every host serves the new release, as far as it said

    def add(self, run: HostRun, status: dict[str, Any] | None) -> None:
        """One host that did not succeed; `status` its `lockstep status` now, when it was asked."""
        if run.outcome == KEPT:
            self.lines.append(f"{run.name} serves it, but its retire did not finish ({run.failure()})")
            return
        self.every_host_serves = self.every_host_serves and _serves(status, self.deploy_id)
        self.lines.append(f"{run.name} did not confirm ({run.failure()}); {_describe_status(status, self.deploy_id)}")

    def reason(self) -> str:
        return "after every host was told to keep the release: " + "; ".join(self.lines)

    def failure(self, result: RedactedRecord | None = None) -> DeployFailed:
        if self.every_host_serves:
            return DeployFailed(
                f"deploy {self.deploy_id} serves on every host, but did not finish everywhere: {self.reason()}; "
                "nothing was undone: past the retire barrier every host keeps the new release",
                "see `lockstep status` on those hosts (the old slot's workers may still run there); "
                f"`lockstep rollback --env {self.environment}` takes every host back if the release should not stay",
                result=result,
            )
        return DeployFailed(
            f"deploy {self.deploy_id}: THE HOSTS MAY SERVE DIFFERENT RELEASES: {self.reason()}",
            f"`lockstep status --env {self.environment}` shows what each host serves; deploy again to bring every "
            "host to the same release",
            result=result,
        )


def _serves(status: dict[str, Any] | None, deploy_id: str) -> bool:
    """Whether the host's status says its part of the deploy is over and its release serves."""
    if status is None or status.get("error") or status.get("release") != deploy_id:
        return False
    last = status.get("last_operation") or {}
    return last.get("id") != deploy_id or last.get("outcome") == "succeeded"


def _describe_status(status: dict[str, Any] | None, deploy_id: str) -> str:
    if status is None:
        return "its state is unknown"
    if status.get("error"):
        return f"asked again, it did not answer: {status['error']}"
    release = status.get("release")
    last = status.get("last_operation") or {}
    part = f" (its part of this deploy: {last.get('outcome')})" if last.get("id") == deploy_id else ""
    if release == deploy_id:
        return f"asked again, it serves this release{part}"
    return f"asked again, it serves release {release or 'none'}, NOT this one{part}"
