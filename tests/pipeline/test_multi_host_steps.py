"""Where a host's lockstep was when it died without a word (pipeline/multi_host_steps.py), from
its step events; the real kill -9 of a host is in tests/deploy/test_multi_host.py."""

from __future__ import annotations

from lockstep.config.hosts_model import HostTarget
from lockstep.pipeline.multi_host import HostRun, error_of
from lockstep.pipeline.multi_host_steps import RunningSteps, died_by_signal
from lockstep.remote import ssh


def _events(steps: RunningSteps, *events: tuple[str, str]) -> RunningSteps:
    for kind, step in events:
        steps.seen({"event": kind, "step": step, "reason": f"{step} broke"})
    return steps


def test_the_step_it_was_in_is_the_innermost_started_and_not_ended() -> None:
    steps = _events(
        RunningSteps(),
        ("step-started", "lock"),
        ("step-finished", "lock"),
        ("step-started", "code"),
        ("step-started", "pre-switch check"),
        ("step-finished", "pre-switch check"),
    )
    assert steps.current == "code" and steps.first_failed is None
    assert died_by_signal("SIGKILL", steps, None) == "its lockstep process was killed by SIGKILL during its code step"
    _events(steps, ("step-finished", "code"))
    assert steps.current is None
    said = died_by_signal("SIGSEGV", steps, "retire")
    assert said == "its lockstep process died of SIGSEGV while it waited at its retire barrier"


def test_a_host_killed_while_it_unwinds_says_what_failed_first() -> None:
    steps = _events(
        RunningSteps(),
        ("step-started", "smoke"),
        ("step-failed", "smoke"),
        ("step-started", "undo code"),
        ("step-failed", "undo code"),
        ("step-started", "undo switch"),
    )
    assert steps.first_failed == ("smoke", "smoke broke") and steps.current == "undo switch"
    assert died_by_signal("SIGKILL", steps, None) == (
        "failed at smoke: smoke broke; then its lockstep process was killed by SIGKILL during its undo switch step"
    )


def test_a_killed_host_is_reported_as_killed_at_its_step_not_by_its_exit_code() -> None:
    run = HostRun(HostTarget("web2", "127.0.0.1", 22, None, "/srv/app"), primary=False)
    run.exit_code, run.exit_signal, run.culprit = -1, ssh.signal_name(("KILL", False, "", "")), True
    run.record_asked_again = {"failed_step": "pre-switch check", "outcome": "interrupted"}
    inner = "pre-switch check"
    _events(run.steps, ("step-started", "code"), ("step-started", inner), ("step-finished", inner))
    summary = run.summary()
    assert (summary["exit_signal"], summary["failed_step"]) == ("SIGKILL", "code")
    assert summary["detail"] == run.failure() == "its lockstep process was killed by SIGKILL during its code step"


def test_a_short_remote_command_killed_says_so() -> None:
    killed = ssh.RemoteResult(-1, "", '{"event": "info", "message": "checking"}\n', "SIGKILL")
    assert error_of(killed) == "its lockstep process was killed by SIGKILL"
    assert error_of(ssh.RemoteResult(2, "", "")) == "exit status 2"
