"""`lockstep agent`: one per environment, a private socket, a systemd unit, clean errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.deploy.conftest import NotesProject, make_project


@pytest.fixture
def project(tmp_path: Path) -> NotesProject:
    return make_project(tmp_path)


def test_a_second_agent_for_the_same_environment_is_refused(project: NotesProject) -> None:
    """Two agents would fight over the same processes: the second says one runs, and exits."""
    project.start_agent()
    try:
        second = project.lockstep("agent", timeout=60)
        assert second.returncode == 1
        assert "already running" in second.err and "lockstep agent stop" in second.err
        assert project.status()["agent"]["running"]
    finally:
        assert project.lockstep("agent", "stop", "--apps").returncode == 0
        assert project.agent is not None
        project.agent.wait(timeout=30)


def test_the_socket_is_private_and_a_stale_one_is_replaced(project: NotesProject) -> None:
    """Only the user can talk to the agent; a socket left by a killed agent does not block the next."""
    from lockstep.actions.environment import load_environment

    socket_path = load_environment(project.directory, None, None).layout.agent_socket
    project.start_agent()
    assert project.agent is not None
    project.agent.kill()  # kill -9 leaves the socket file behind
    project.agent.wait()
    assert socket_path.exists()
    project.start_agent()
    try:
        mode = socket_path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        project.lockstep("agent", "stop", "--apps")
        project.agent.wait(timeout=30)


def test_print_systemd_unit_runs_this_agent(project: NotesProject) -> None:
    """The unit names the config and environment, and leaves the app running when the agent stops."""
    completed = project.lockstep("agent", "print-systemd-unit")
    assert completed.returncode == 0, completed.err
    unit = completed.out
    assert "ExecStart=" in unit and "agent --env test" in unit
    assert str(project.directory / "lockstep.toml") in unit
    assert "KillMode=process" in unit and "Restart=always" in unit


def test_agent_stop_without_an_agent_says_how_to_start_one(project: NotesProject) -> None:
    """The CLI needing an agent that is not there gets a one-line error with the command to run."""
    completed = project.lockstep("agent", "stop")
    assert completed.returncode == 1
    assert "not running" in completed.err and "lockstep agent --env test" in completed.err
    status = project.lockstep("status")
    assert status.returncode == 0 and "agent: not running" in status.out
