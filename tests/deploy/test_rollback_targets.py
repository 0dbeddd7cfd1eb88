"""Which release `lockstep rollback` goes back to, and which snapshot its data comes from, after
histories with rollbacks and failed deploys in them: the notes app, a real agent, real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.conftest import NotesProject, make_project

pytestmark = pytest.mark.slow


def bump(project: NotesProject, version: str) -> None:
    """A release that differs only in its VERSION file."""
    (project.directory / "VERSION").write_text(version + "\n")
    project.commit(f"notes {version}")


def deploy(project: NotesProject, *arguments: str, expect: int = 0) -> dict[str, object]:
    completed = project.lockstep("deploy", "--json", *arguments)
    assert completed.returncode == expect, completed.err
    document: dict[str, object] = json.loads(completed.out)
    return document


def test_a_rollback_after_a_rollback_and_a_new_deploy_goes_to_what_served_before(
    notes_project: NotesProject,
) -> None:
    """1.0.1 replaced 1.0.0 and was rolled back; 1.0.2 followed 1.0.0. Rolling 1.0.2 back must bring
    back 1.0.0, which served before it, not 1.0.1, which the user had already rolled back from."""
    deploy(notes_project)
    bump(notes_project, "1.0.1")
    deploy(notes_project)
    rolled_back = notes_project.lockstep("rollback")
    assert rolled_back.returncode == 0, rolled_back.err
    assert notes_project.version() == "1.0.0"

    bump(notes_project, "1.0.2")
    deploy(notes_project)
    assert notes_project.version() == "1.0.2"
    again = notes_project.lockstep("rollback")
    assert again.returncode == 0, again.err
    assert notes_project.version() == "1.0.0"


def test_rolling_back_twice_walks_back_through_the_releases(notes_project: NotesProject) -> None:
    """1.0.0, 1.0.1, 1.0.2; rollback, rollback: 1.0.0 (not forward to 1.0.2); a third has nowhere to go."""
    deploy(notes_project)
    for version in ("1.0.1", "1.0.2"):
        bump(notes_project, version)
        deploy(notes_project)
    assert notes_project.lockstep("rollback").returncode == 0
    assert notes_project.version() == "1.0.1"
    assert notes_project.lockstep("rollback").returncode == 0
    assert notes_project.version() == "1.0.0"
    nowhere = notes_project.lockstep("rollback")
    assert nowhere.returncode == 13, nowhere.err
    assert notes_project.version() == "1.0.0"


def test_data_rollback_uses_the_snapshot_of_the_deploy_that_replaced_the_release(
    notes_project: NotesProject,
) -> None:
    """v2 serves; a broken v3 fails (its pre-deploy snapshot is taken, then it rolls back); users
    keep writing under v2; v4 replaces v2. Rolling back to v2 with its data must restore the data
    as it was when v4 replaced v2, keeping the notes written after the failed deploy."""
    deploy(notes_project)
    notes_project.apply("v2", "notes 2.0.0")
    deploy(notes_project)
    notes_project.add_note("before the broken deploy")
    v2_files = {name: (notes_project.directory / name).read_bytes() for name in ("notes.py", "VERSION")}

    notes_project.apply("v3-broken", "notes 3.0.0 (broken)")
    failed = deploy(notes_project, expect=3)
    assert "error" in failed
    notes_project.add_note("after the broken deploy")

    for name, content in v2_files.items():
        (notes_project.directory / name).write_bytes(content)
    bump(notes_project, "4.0.0")
    v4 = deploy(notes_project)
    notes_project.add_note("under v4 #lost")

    completed = notes_project.lockstep("rollback", "--with-data", "--yes", "--json")
    assert completed.returncode == 0, completed.err
    record = json.loads(completed.out)
    assert record["snapshot_id"] == v4["snapshot_id"]
    assert notes_project.version() == "2.0.0"
    assert notes_project.notes() == ["before the broken deploy", "after the broken deploy"]


def test_a_rollback_with_nothing_deployed_says_so(tmp_path: Path) -> None:
    """Never deployed, no agent: the rollback said "agent not running", a problem the user does not
    have; it says nothing is deployed, without starting anything, and exits 13 (NOT_FOUND), as
    after the first deploy: there is no earlier release either way (it exited 2 here). Its dry run
    refuses alike."""
    project = make_project(tmp_path)
    for arguments in (["--yes"], ["--dry-run"], ["--to", "abc123"]):
        completed = project.lockstep("rollback", *arguments)
        assert completed.returncode == 13, (arguments, completed.err)
        assert "nothing is deployed in test, so there is no release to roll back to" in completed.err, completed.err
        assert "deploy first with `lockstep deploy`" in completed.err, completed.err
        assert "agent" not in completed.err, completed.err


def test_a_rollback_after_the_first_deploy_exits_as_with_nothing_deployed(notes_project: NotesProject) -> None:
    """One deploy: nothing before it, exit 13 as where nothing is deployed, for the rollback and its
    dry run, with a message in the same words that says what to do."""
    deploy(notes_project)
    for arguments in (["--yes"], ["--dry-run"]):
        completed = notes_project.lockstep("rollback", *arguments)
        assert completed.returncode == 13, (arguments, completed.err)
        assert "is the first release deployed in test, so there is no release to roll back to" in completed.err
        assert "`lockstep deploy`" in completed.err, completed.err
    too_far = notes_project.lockstep("rollback", "--dry-run", "2")
    assert too_far.returncode == 13, too_far.err
    assert "is the first release deployed in test" in too_far.err, too_far.err
    assert notes_project.version() == "1.0.0"
