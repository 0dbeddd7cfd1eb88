"""`lockstep agent`: one per environment, a private socket, a systemd unit, clean errors."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep
from tests.deploy.conftest import NotesProject, make_project


@pytest.fixture
def project(tmp_path: Path) -> NotesProject:
    return make_project(tmp_path)


def test_a_second_agent_for_the_same_environment_is_refused(project: NotesProject) -> None:
    """Two agents would fight over the same processes: the second says one runs, and exits 4
    (LOCKED: the environment is held by someone else), naming the running agent's PID and the
    command that stops it. It exited 1, like a failure of the agent itself."""
    project.start_agent()
    try:
        assert project.agent is not None
        second = project.lockstep("agent", timeout=60)
        assert second.returncode == ExitCode.LOCKED, second.err
        assert "already running" in second.err and f"PID {project.agent.pid}" in second.err
        assert "lockstep agent --env test stop" in second.err and f"kill {project.agent.pid}" in second.err
        as_json = project.lockstep("--json", "agent", timeout=60)
        assert as_json.returncode == ExitCode.LOCKED
        document = json.loads(as_json.out)
        assert document["exit_code"] == ExitCode.LOCKED and f"PID {project.agent.pid}" in document["error"]
        assert "lockstep agent --env test stop" in document["hint"]
        assert project.status()["agent"]["running"]
    finally:
        stopped = project.lockstep("--json", "agent", "stop", "--apps")  # it used to print text
        assert stopped.returncode == 0
        assert json.loads(stopped.out) == {"environment": "test", "stopping": True, "apps": True}
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
    assert "ExecStart=" in unit and " agent -c " in unit and "--env test" in unit
    assert str(project.directory / "lockstep.toml") in unit
    assert "KillMode=process" in unit and "Restart=always" in unit
    as_json = project.lockstep("--json", "agent", "print-systemd-unit")  # it used to print the text
    assert as_json.returncode == 0, as_json.err
    assert json.loads(as_json.out) == {"environment": "test", "unit": unit}


def test_the_systemd_units_command_starts_the_agent(project: NotesProject) -> None:
    """ExecStart, run as systemd would (from WorkingDirectory), starts this environment's agent;
    it used to put -c before `agent`, a usage error systemd would retry every 2 s, forever."""
    unit = project.lockstep("agent", "print-systemd-unit").out
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    argv = shlex.split(settings["ExecStart"])
    if argv[0].endswith("lockstep"):  # run the code under test, whichever lockstep is on PATH
        argv = [sys.executable, "-m", "lockstep", *argv[1:]]
    agent = subprocess.Popen(
        argv,
        cwd=settings["WorkingDirectory"],
        env={**os.environ, **project.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (project.lockstep("status", "--json").returncode == 0 and project.status()["agent"]["running"]):
            assert agent.poll() is None, agent.communicate()[0].decode()
            assert time.monotonic() < deadline, "the agent did not come up"
            time.sleep(0.2)
    finally:
        project.lockstep("agent", "stop", "--apps")
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def test_agent_stop_without_an_agent_says_how_to_start_one(project: NotesProject) -> None:
    """The CLI needing an agent that is not there gets a one-line error with the command to run."""
    completed = project.lockstep("agent", "stop")
    assert completed.returncode == 1
    assert "not running" in completed.err and "lockstep agent --env test" in completed.err
    status = project.lockstep("status")
    assert status.returncode == 0 and "agent: not running" in status.out


def test_the_start_hint_from_another_directory_is_a_command_that_runs(project: NotesProject, tmp_path: Path) -> None:
    """With -c from elsewhere the hint said `lockstep -c PATH agent`, which lockstep refuses
    (-c belongs to the command, not to lockstep); both suggested commands must run as shown."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = str(project.directory / "lockstep.toml")
    completed = run_lockstep(["agent", "stop", "-c", config, "--env", "test"], env=project.env, cwd=elsewhere)
    assert completed.returncode == 1
    start = f"lockstep agent -c {config} --env test"
    assert f"`{start}`" in completed.err, completed.err
    unit = run_lockstep([*shlex.split(start)[1:], "print-systemd-unit"], env=project.env, cwd=elsewhere)
    assert unit.returncode == 0, unit.err
    assert f"`{start} print-systemd-unit`" in completed.err, completed.err


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
IMPOSTOR = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("listening", flush=True)
connection, _ = server.accept()
print("connected", flush=True)
"""


def test_an_agent_socket_another_user_planted_in_tmp_is_refused(tmp_path: Path) -> None:
    """A state directory too deep for a socket path puts the agent socket in /tmp under a name
    anyone can compute. Another user binding it first made the agent refuse to start ("already
    running") and the CLI send that user its requests, release environments included; both now
    refuse a socket another user owns there, without connecting."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root, setpriv and /usr/bin/python3 to act as another user")
    from lockstep.actions.environment import load_environment

    project = make_project(tmp_path / ("deep-directory-" * 5))
    socket_path = load_environment(project.directory, None, None).layout.agent_socket
    assert socket_path.parent == Path(tempfile.gettempdir()), socket_path
    impostor = subprocess.Popen(
        [*AS_NOBODY, "/usr/bin/python3", "-c", IMPOSTOR, str(socket_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert impostor.stdout is not None and impostor.stdout.readline() == "listening\n"
        status = project.lockstep("status")
        assert "belongs to another user (uid 65534)" in status.out + status.err, status.out + status.err
        agent = project.lockstep("agent", timeout=60)
        assert agent.returncode != 0
        assert "belongs to another user (uid 65534)" in agent.err, agent.err
        assert "already running" not in agent.err
        assert impostor.poll() is None, "the impostor was connected to"
    finally:
        impostor.kill()
        impostor.wait()
        socket_path.unlink(missing_ok=True)


def test_status_of_a_fresh_environment_says_nothing_is_deployed_not_port_none(project: NotesProject) -> None:
    """Before the first deploy the proxy has no upstream: status printed "port None — NOT RUNNING:
    requests are refused", an alarm about the normal state of a new environment."""
    project.start_agent()
    try:
        status = project.lockstep("status")
        assert status.returncode == 0, status.err
        assert "nothing deployed yet" in status.out
        assert "None" not in status.out and "NOT RUNNING" not in status.out, status.out
        assert "not started: the first deploy starts it" in status.out, status.out
    finally:
        project.lockstep("agent", "stop", "--apps")
        assert project.agent is not None
        project.agent.wait(timeout=30)
