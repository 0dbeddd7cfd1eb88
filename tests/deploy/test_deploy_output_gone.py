"""A deploy whose progress output goes away (`lockstep deploy 2>&1 | head`, a CI log collector
that dies, a closed terminal pipe) must still finish or undo what it started: the notes app, a
real agent and real processes."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.deploy.conftest import NotesProject

pytestmark = pytest.mark.slow


def test_a_deploy_whose_stderr_reader_goes_away_still_finishes(notes_project: NotesProject) -> None:
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v2", "notes 2.0.0")
    deploy = notes_project.deploy_until_step("migrate")
    assert deploy.stderr is not None and deploy.stdout is not None
    deploy.stderr.close()  # nobody reads the progress any more: each later write fails with EPIPE
    wait_for(deploy)
    assert deploy.returncode == 0
    record = notes_project.history()[-1]
    assert record["outcome"] == "succeeded", record
    assert notes_project.version() == "2.0.0"
    lock = json.loads(notes_project.lockstep("lock", "status", "--json").out)
    assert not any(item["locked"] for item in lock)


def test_a_failing_deploy_whose_stderr_reader_goes_away_still_undoes_and_exits_3(
    notes_project: NotesProject,
) -> None:
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v2", "notes 2.0.0")
    assert notes_project.lockstep("deploy").returncode == 0
    notes_project.apply("v3-broken", "notes 3.0.0 (broken)")
    deploy = notes_project.popen_lockstep("deploy", "--log-format", "text")  # through rich, this time
    assert deploy.stderr is not None and deploy.stdout is not None
    for raw in deploy.stderr:
        if raw.decode().startswith("→ start"):
            break
    deploy.stderr.close()
    wait_for(deploy)
    assert deploy.returncode == 3  # failed and rolled back, as documented, even with nobody listening
    record = notes_project.history()[-1]
    assert record["outcome"] == "rolled-back" and record["failed_step"] == "start", record
    assert notes_project.version() == "2.0.0"


def wait_for(deploy: subprocess.Popen[bytes]) -> None:
    """Let the deploy finish on its own, with nobody reading its progress."""
    try:
        deploy.wait(timeout=180)
    except subprocess.TimeoutExpired:
        deploy.kill()
        raise
    assert deploy.stdout is not None
    deploy.stdout.close()
