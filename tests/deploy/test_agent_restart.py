"""An agent stopped (a restart, an upgrade) while a deploy asks it to start a release: the processes
it had started belong to the next agent, not to nobody. The notes app, real agents, real processes."""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lockstep.agent.client import AgentClient, AgentUnavailable
from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep
from tests.deploy.conftest import NotesProject

pytestmark = pytest.mark.slow


def test_an_agent_stopped_while_it_starts_a_release_leaves_no_orphan(notes_project: NotesProject) -> None:
    notes_project.env["LOCKSTEP_AGENT_WAIT"] = "0"  # the undo must not wait for an agent this test restarts later
    assert notes_project.lockstep("deploy").returncode == 0
    (notes_project.directory / "VERSION").write_text("1.1.0\n")
    notes_project.commit("notes 1.1.0")
    deploy = notes_project.deploy_until_step("start")
    assert notes_project.agent is not None
    time.sleep(0.15)  # the agent is starting the web process (each start settles for 0.3 s)
    notes_project.agent.send_signal(signal.SIGTERM)
    notes_project.agent.wait(timeout=60)
    deploy.communicate(timeout=120)
    assert deploy.returncode != 0  # the agent went away mid-step: the deploy failed

    notes_project.start_agent()
    assert notes_project.version() == "1.0.0"
    # Whatever the old agent started in the idle slot is the new agent's to stop: the green port
    # is not held by a process nobody knows, and the next deploy goes through.
    again = notes_project.lockstep("deploy")
    assert again.returncode == 0, again.err
    assert notes_project.version() == "1.1.0"


def test_a_deploy_started_while_the_agent_restarts_waits_for_it(notes_project: NotesProject) -> None:
    """`lockstep deploy` run while the agent was down (systemd restarting it, an upgrade) failed at
    once with "the agent is not running"; it waits for the agent (LOCKSTEP_AGENT_WAIT, 30 s) and
    goes through, starting the release once."""
    assert notes_project.lockstep("deploy").returncode == 0
    (notes_project.directory / "VERSION").write_text("1.1.0\n")
    notes_project.commit("notes 1.1.0")
    assert notes_project.lockstep("agent", "stop").returncode == 0
    assert notes_project.agent is not None
    notes_project.agent.wait(timeout=30)
    deploy = notes_project.popen_lockstep("deploy", "--log-format", "json")
    time.sleep(2)
    assert deploy.poll() is None, deploy.communicate()
    notes_project.start_agent()
    _, err = deploy.communicate(timeout=180)
    assert deploy.returncode == 0, err.decode()
    assert notes_project.version() == "1.1.0"
    deploys = [record for record in notes_project.history() if record["operation"] == "deploy"]
    assert [record["outcome"] for record in deploys] == ["succeeded", "succeeded"]


def test_a_deploy_waits_only_as_long_as_lockstep_agent_wait_and_says_so_on_a_terminal(
    notes_project: NotesProject,
) -> None:
    assert notes_project.lockstep("deploy").returncode == 0
    assert notes_project.lockstep("agent", "stop").returncode == 0
    assert notes_project.agent is not None
    notes_project.agent.wait(timeout=30)
    primary, secondary = pty.openpty()
    started = time.monotonic()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "lockstep", "deploy"],
            cwd=notes_project.directory,
            env={**os.environ, **notes_project.env, "LOCKSTEP_AGENT_WAIT": "2"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
            timeout=120,
            check=False,
        )
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's other side is closed
            while chunk := os.read(primary, 65536):
                shown += chunk
    finally:
        os.close(primary)
    elapsed = time.monotonic() - started
    text = shown.decode("utf-8", "replace")
    assert completed.returncode == ExitCode.USAGE, text  # preflight: no agent, nothing changed
    assert "waiting up to 2 s for the agent" in text
    assert "not running" in text and "waited 2 s" in text
    assert 2 <= elapsed < 60
    # Without a terminal (cron, CI) the wait is silent; 0 does not wait.
    quiet = run_lockstep(["deploy"], env={**notes_project.env, "LOCKSTEP_AGENT_WAIT": "1"}, cwd=notes_project.directory)
    assert quiet.returncode == ExitCode.USAGE and "waiting" not in quiet.err and "waited 1 s" in quiet.err
    bad = run_lockstep(["deploy"], env={**notes_project.env, "LOCKSTEP_AGENT_WAIT": "x"}, cwd=notes_project.directory)
    assert bad.returncode == ExitCode.USAGE and "LOCKSTEP_AGENT_WAIT" in bad.err


class _SwallowingServer:
    """A socket that reads each request and hangs up without answering, as an agent killed while
    it handles one: the client cannot know whether the request was acted upon."""

    def __init__(self, path: Path) -> None:
        self.requests: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self.requests.append(connection.recv(65536).split(b"\r\n", 1)[0])

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def test_a_request_that_may_have_reached_the_agent_is_not_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = _SwallowingServer(path)
    try:
        client = AgentClient(path, "test", wait_seconds=1.5)
        with pytest.raises(AgentUnavailable, match="may have reached it"):
            client.switch("blue")
        assert server.requests == [b"POST /v1/traffic/switch HTTP/1.1"]
        server.requests.clear()
        client = AgentClient(path, "test", wait_seconds=1.5)
        with pytest.raises(AgentUnavailable, match="waited 2 s"):
            client.status()  # a GET changes nothing: asked again until the wait is over
        assert len(server.requests) > 2 and set(server.requests) == {b"GET /v1/status HTTP/1.1"}
    finally:
        server.close()
