"""An agent stopped (a restart, an upgrade) while a deploy asks it to start a release: the processes
it had started belong to the next agent, not to nobody. The notes app, real agents, real processes."""

from __future__ import annotations

import signal
import time

import pytest

from tests.deploy.conftest import NotesProject

pytestmark = pytest.mark.slow


def test_an_agent_stopped_while_it_starts_a_release_leaves_no_orphan(notes_project: NotesProject) -> None:
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
