"""The agent keeps the traffic switch up: a proxy it runs that dies (kill -9, the OOM killer) is
started again on the active slot, whichever kind it is, with an event saying so. Started again
while a data rollback holds the traffic, it holds on until the release (or the owner's death)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.actions.environment import load_environment
from lockstep.agent.client import AgentClient
from lockstep.traffic.hold import HoldOwner, process_start_ticks
from tests.conftest import require_binary
from tests.deploy.conftest import NotesProject, _stop_everything, make_project, notes_project  # noqa: F401


@pytest.fixture(params=["builtin", "nginx", "haproxy"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotesProject]:
    kind = str(request.param)
    if kind != "builtin":
        require_binary(kind, f"apt-get install {kind}")
    project = make_project(tmp_path)
    config = project.directory / "lockstep.toml"
    config.write_text(config.read_text().replace("[traffic]\n", f'[traffic]\nkind = "{kind}"\n'))
    project.commit(f"traffic through {kind}")
    project.start_agent()
    try:
        yield project
    finally:
        _stop_everything(project)


def _proxy_pids(project: NotesProject) -> list[int]:
    """The proxy's processes: the pid in its pid file and that process's children."""
    state = project.directory / ".lockstep" / "state" / "test" / "traffic"
    (pid_file,) = [path for path in state.glob("*/*.pid") if path.name != "upstream.pid"]
    main = int(pid_file.read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == main:
                children.append(int(entry))
    return [main, *children]


def _answers(project: NotesProject) -> bool:
    try:
        return project.request("GET", "/version")[0] == 200
    except OSError:
        return False


def test_a_killed_proxy_is_started_again_on_the_active_slot(project: NotesProject) -> None:
    deployed = project.lockstep("deploy")
    assert deployed.returncode == 0, deployed.err
    assert _answers(project)
    for pid in _proxy_pids(project):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _answers(project) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _answers(project)
    deadline = time.monotonic() + 30
    while not _answers(project) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _answers(project), "the proxy was not started again"
    assert project.status()["traffic"]["running"]
    events = load_environment(project.directory, None, None).agent().events(0)
    assert any(event["kind"] == "proxy-restarted" for event in events), events


@pytest.fixture
def owner() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for the `rollback --with-data` that holds the traffic: a process we can kill."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _hold_then_kill_the_proxy(
    project: NotesProject, owner: subprocess.Popen[bytes], kill_owner: bool = False
) -> AgentClient:
    """Deploy, hold the traffic for `owner` through the agent, kill -9 the proxy (and, with
    `kill_owner`, the owner while the proxy is down) and wait until the agent started it again."""
    deployed = project.lockstep("deploy")
    assert deployed.returncode == 0, deployed.err
    agent = load_environment(project.directory, None, None).agent()
    held = agent.hold(HoldOwner(owner.pid, process_start_ticks(owner.pid)), timeout=120, drain_timeout=10)
    assert held["held"] is True, held
    restarts = sum(event["kind"] == "proxy-restarted" for event in agent.events(0))
    for pid in _proxy_pids(project):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if kill_owner:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 30
    while sum(event["kind"] == "proxy-restarted" for event in agent.events(0)) == restarts:
        assert time.monotonic() < deadline, "the agent did not start the proxy again"
        time.sleep(0.1)
    return agent


def test_a_proxy_killed_mid_hold_is_started_again_still_holding(
    project: NotesProject, owner: subprocess.Popen[bytes]
) -> None:
    """A request sent once the agent restarted the proxy waits, unanswered by the release, until
    the hold's owner releases it; then it is answered."""
    agent = _hold_then_kill_the_proxy(project, owner)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        request = pool.submit(project.request, "GET", "/version")
        time.sleep(1.5)
        assert not request.done(), f"the restarted proxy answered during the hold: {request.result()}"
        assert (project.status()["traffic"]["hold"] or {}).get("owner", {}).get("pid") == owner.pid
        released_at = time.monotonic()
        assert agent.release()["released"] is True
        status, body = request.result(timeout=10)
    assert (status, body.strip()) == (200, "1.0.0")
    assert time.monotonic() - released_at < 5
    assert project.status()["traffic"]["hold"] is None


def test_a_proxy_restarted_after_its_hold_owner_died_does_not_hold(
    project: NotesProject, owner: subprocess.Popen[bytes]
) -> None:
    """The owner died while the proxy was down: the proxy started again serves at once."""
    _hold_then_kill_the_proxy(project, owner, kill_owner=True)
    started = time.monotonic()
    deadline = started + 10
    while not _answers(project):
        assert time.monotonic() < deadline, "the restarted proxy held on for a dead owner"
        time.sleep(0.05)
    assert time.monotonic() - started < 3.0
    deadline = time.monotonic() + 10
    while project.status()["traffic"]["hold"] is not None:
        assert time.monotonic() < deadline, project.status()["traffic"]["hold"]
        time.sleep(0.2)


def test_a_proxy_that_cannot_start_again_is_reported_and_retried(notes_project: NotesProject) -> None:  # noqa: F811
    """While the listen address is taken the restart fails: an event says why, `lockstep status`
    says the switch is not running (it used to name the active port as if all was well), and
    the agent keeps trying until the address is free."""
    project = notes_project
    deployed = project.lockstep("deploy")
    assert deployed.returncode == 0, deployed.err
    agent = load_environment(project.directory, None, None).agent()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for pid in _proxy_pids(project):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                squatter.bind(("127.0.0.1", project.listen_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed proxy's port did not come free"
                time.sleep(0.01)
        squatter.listen()
        deadline = time.monotonic() + 30
        while not any(event["kind"] == "proxy-restart-failed" for event in agent.events(0)):
            assert time.monotonic() < deadline, agent.events(0)
            time.sleep(0.2)
        status = project.lockstep("status")
        assert "NOT RUNNING" in status.out, status.out
    deadline = time.monotonic() + 60
    while not _answers(project):
        assert time.monotonic() < deadline, "the proxy was not started again once the port was free"
        time.sleep(0.2)
    assert "NOT RUNNING" not in project.lockstep("status").out
