"""What a newcomer's first deploy runs into before anything changes: no agent, the traffic listen
address taken by another program. Preflight refuses both with exit 2 (nothing was changed), and
says what to do. The notes app, a real agent, real processes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.deploy.conftest import _stop_everything, make_project

pytestmark = pytest.mark.slow


def test_a_deploy_without_an_agent_is_refused_with_exit_2(tmp_path: Path) -> None:
    """It exited 1, which `deploy` documents as "failed and could not undo everything", for a
    deploy that changed nothing."""
    project = make_project(tmp_path)
    project.env["LOCKSTEP_AGENT_WAIT"] = "0"
    completed = project.lockstep("--json", "deploy")
    assert completed.returncode == ExitCode.USAGE, completed.err
    document = json.loads(completed.out)
    assert document["exit_code"] == ExitCode.USAGE
    assert "agent" in document["error"] and "not running" in document["error"]
    assert "lockstep agent --env test" in document["error"]
    assert project.history() == []


def test_a_taken_traffic_listen_address_is_refused_before_the_snapshot(tmp_path: Path) -> None:
    """It was found only at the switch, after the snapshot, the migrations and the start, which
    then had to be undone (exit 3)."""
    project = make_project(tmp_path)
    project.start_agent()
    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", project.listen_port))
        squatter.listen()
        completed = project.lockstep("deploy")
        assert completed.returncode == ExitCode.USAGE, completed.err
        assert f"the traffic listen address 127.0.0.1:{project.listen_port} is taken" in completed.err
        assert "set another [traffic] listen" in completed.err
        assert project.history() == []
        assert json.loads(project.lockstep("--json", "snapshot", "list").out) == []
    finally:
        squatter.close()
        _stop_everything(project)
