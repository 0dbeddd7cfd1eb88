"""What the orchestrator says of the hosts after the retire "go" (pipeline/multi_host_retire.py):
the fleet serves the new release everywhere only when each host said so; a host that did not
confirm is described by what it serves when asked again. The real sessions are in
tests/deploy/test_multi_host.py."""

from __future__ import annotations

from typing import Any

from lockstep.config.hosts_model import HostTarget
from lockstep.pipeline.multi_host import HostRun
from lockstep.pipeline.multi_host_retire import KEPT, RetireReport, retire_outcome

DEPLOY = "20261123_000000_abc"


def _run(name: str, exit_code: int | None, result: dict[str, Any] | None = None, lost: str | None = None) -> HostRun:
    run = HostRun(HostTarget(name, "127.0.0.1", 22, None, "/srv/app"), primary=False)
    run.exit_code, run.result, run.lost, run.culprit = exit_code, result, lost, True
    return run


def test_a_host_that_kept_the_release_after_a_failed_retire_is_told_apart() -> None:
    kept = _run("web2", 1, {"outcome": "succeeded", "failed_step": "retire", "error": "drain failed"})
    assert retire_outcome(kept, "failed") == KEPT
    assert retire_outcome(_run("web3", 1, {"outcome": "failed"}), "failed") == "failed"
    kept.outcome = KEPT
    report = RetireReport(DEPLOY, "production")
    report.add(kept, None)
    assert report.every_host_serves
    failure = report.failure()
    assert failure.message.startswith(f"deploy {DEPLOY} serves on every host, but did not finish everywhere")
    assert "web2 serves it, but its retire did not finish (failed at retire: drain failed)" in failure.message
    assert "lockstep rollback --env production" in (failure.hint or "")


def test_a_lost_host_serving_the_old_release_is_said_loudly() -> None:
    lost = _run("web2", None, lost="connection reset")
    lost.outcome = "lost"
    report = RetireReport(DEPLOY, "production")
    report.add(
        lost,
        {"name": "web2", "release": "20261122_000000_old", "last_operation": {"id": DEPLOY, "outcome": "rolled-back"}},
    )
    assert not report.every_host_serves
    message = report.failure().message
    assert "THE HOSTS MAY SERVE DIFFERENT RELEASES" in message
    assert "web2 did not confirm (the SSH connection was lost (connection reset)" in message
    assert "it serves release 20261122_000000_old, NOT this one (its part of this deploy: rolled-back)" in message


def test_a_lost_host_that_finished_forward_counts_as_serving() -> None:
    lost = _run("web2", None, lost="connection reset")
    lost.outcome = "lost"
    report = RetireReport(DEPLOY, "production")
    report.add(lost, {"name": "web2", "release": DEPLOY, "last_operation": {"id": DEPLOY, "outcome": "succeeded"}})
    assert report.every_host_serves
    assert "asked again, it serves this release (its part of this deploy: succeeded)" in report.reason()
    unreachable = RetireReport(DEPLOY, "production")
    unreachable.add(lost, {"name": "web2", "reachable": False, "error": "connection refused"})
    assert not unreachable.every_host_serves
    assert "asked again, it did not answer: connection refused" in unreachable.reason()


def test_a_rollback_s_report_names_its_release_and_how_to_bring_the_hosts_together() -> None:
    rollback, release = "20261123_000000_rollback", "20261120_000000_target"
    kept = _run("web2", 1, {"outcome": "succeeded", "failed_step": "code", "error": "worker exited"})
    kept.outcome = KEPT
    report = RetireReport(rollback, "production", "rollback", release)
    report.add(kept, None)
    failure = report.failure()
    assert failure.message.startswith(f"rollback {rollback}: release {release} serves on every host")
    assert "lockstep deploy --env production" in (failure.hint or "")
    lost = _run("web3", None, lost="connection reset")
    lost.outcome = "lost"
    status = {"release": "20261122_000000_newer", "last_operation": {"id": rollback, "outcome": "rolled-back"}}
    report.add(lost, status)
    failure = report.failure()
    assert "THE HOSTS MAY SERVE DIFFERENT RELEASES" in failure.message
    assert "NOT this one (its part of this rollback: rolled-back)" in failure.message
    assert f"lockstep rollback --to {release}" in (failure.hint or "")
    # A host that finished the rollback forward serves its target release, not the rollback's ID.
    finished = RetireReport(rollback, "production", "rollback", release)
    finished.add(lost, {"release": release, "last_operation": {"id": rollback, "outcome": "succeeded"}})
    assert finished.every_host_serves


def test_a_host_killed_after_the_go_that_serves_the_release_counts_as_serving() -> None:
    """Its part was killed past the "go" and cleaned up ("interrupted"): the clean-up keeps the
    release with the traffic, so the hosts do not serve different releases."""
    lost = _run("web2", -1)
    lost.outcome = "failed"
    report = RetireReport(DEPLOY, "production")
    report.add(lost, {"release": DEPLOY, "last_operation": {"id": DEPLOY, "outcome": "interrupted"}})
    assert report.every_host_serves
    assert "asked again, it serves this release (its part of this deploy: interrupted)" in report.reason()
    assert "serves on every host, but did not finish everywhere" in report.failure().message
    running = RetireReport(DEPLOY, "production")  # still running: it may yet undo its part
    running.add(lost, {"release": DEPLOY, "last_operation": {"id": DEPLOY, "outcome": "running"}})
    assert not running.every_host_serves


def test_a_host_that_kept_the_release_but_whose_agent_is_down_is_said_so() -> None:
    """Its agent would finish the retire within seconds, says the hint: not one that does not run."""
    kept = _run("web2", 1, {"outcome": "succeeded", "failed_step": "code", "error": "agent is not running"})
    kept.outcome = KEPT
    report = RetireReport(DEPLOY, "production")
    report.add(kept, {"name": "web2", "agent": {"running": False, "detail": "nothing listens on its socket"}})
    assert report.every_host_serves
    failure = report.failure()
    assert "web2 serves it, but its retire did not finish (failed at code: agent is not running); ITS AGENT IS NOT" in (
        failure.message
    )
    assert (failure.hint or "").startswith("start the agent on web2 (`lockstep agent --env production` there")
    running = RetireReport(DEPLOY, "production")
    running.add(kept, {"name": "web2", "agent": {"running": True}})
    assert "AGENT" not in running.failure().message and "start the agent" not in (running.failure().hint or "")
