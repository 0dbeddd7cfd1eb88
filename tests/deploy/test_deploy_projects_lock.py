"""Projects sharing one repository deploy their own `test` environment without locking each other
out (the environment lock is the project's), while a lock an older lockstep took under the old
key, which may be any project's, still holds every project's deploy of that environment back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lockstep.fault_injection import WAIT_AT_VARIABLE, WAIT_FOR_VARIABLE, WAITING_SUFFIX
from lockstep.pipeline.environment_lock import LockHolder
from lockstep.repository.documents import DocumentStore
from lockstep.repository.repository import Repository
from lockstep.storage.location import open_backend
from tests.conftest import TEST_PASSWORD
from tests.deploy.conftest import NotesProject, _stop_everything, make_project

DEFAULT_REPOSITORY = 'url = "local:.lockstep/repository"'


def _share(project: NotesProject, name: str, repository: Path) -> None:
    """Give the project its name and the shared repository, committed (deploys want a clean tree)."""
    config = project.directory / "lockstep.toml"
    text = config.read_text()
    assert DEFAULT_REPOSITORY in text
    config.write_text(f'project = "{name}"\n' + text.replace(DEFAULT_REPOSITORY, f'url = "local:{repository}"'))
    project.commit(f"project {name} in the shared repository")


@pytest.fixture
def two_projects(tmp_path: Path) -> Iterator[tuple[NotesProject, NotesProject, Path]]:
    """alpha and beta: two checkouts (both in a directory named notes) with a `test` environment
    each, their agents running, and one repository."""
    repository = tmp_path / "shared-repository"
    projects: list[NotesProject] = []
    try:
        for name in ("alpha", "beta"):
            project = make_project(tmp_path / name)
            projects.append(project)
            _share(project, name, repository)
        initialized = projects[0].lockstep("repo", "init")
        assert initialized.returncode == 0, initialized.err
        for project in projects:
            project.start_agent()
        yield projects[0], projects[1], repository
    finally:
        for project in projects:
            _stop_everything(project)


def _lock_status(project: NotesProject) -> dict[str, object]:
    completed = project.lockstep("lock", "status", "--env", "test", "--json")
    assert completed.returncode == 0, completed.err
    documents = json.loads(completed.out)
    assert [document["environment"] for document in documents] == ["test"], documents
    document: dict[str, object] = documents[0]
    return document


def test_a_deploy_of_one_project_does_not_block_another_s_environment_of_the_same_name(
    two_projects: tuple[NotesProject, NotesProject, Path], tmp_path: Path
) -> None:
    alpha, beta, _repository = two_projects
    go = tmp_path / "alpha-go"
    holding = subprocess.Popen(
        [sys.executable, "-m", "lockstep", "deploy", "--json"],
        cwd=alpha.directory,
        env={**os.environ, **alpha.env, WAIT_AT_VARIABLE: "environment locked", WAIT_FOR_VARIABLE: str(go)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        waiting = go.with_name(go.name + WAITING_SUFFIX)
        deadline = time.monotonic() + 120
        while not waiting.exists():
            assert holding.poll() is None, holding.communicate()
            assert time.monotonic() < deadline, "alpha's deploy never took its lock"
            time.sleep(0.05)
        # beta's `test` is another lock: its deploy does not wait for alpha's, and it is free.
        deployed = beta.lockstep("deploy", "--lock-wait", "0", "--json")
        assert deployed.returncode == 0, deployed.err + deployed.out
        assert beta.version() == "1.0.0"
        assert _lock_status(beta)["locked"] is False
        assert beta.status()["lock"]["state"] == "unlocked"
        held = _lock_status(alpha)
        assert held["locked"] is True and held["old_key"] is False, held
        assert isinstance(held["holder"], dict) and held["holder"]["project"] == "alpha"
        assert alpha.status()["lock"]["state"] == "locked"
        # --force on beta takes nothing of alpha's: alpha's lock is still its deploy's.
        forced = beta.lockstep("deploy", "--force", "--yes", "--json")
        assert forced.returncode == 0, forced.err + forced.out
        still = _lock_status(alpha)["holder"]
        assert isinstance(still, dict) and still["lock_id"] == held["holder"]["lock_id"], still
    finally:
        go.touch()
        out, err = holding.communicate(timeout=300)
    assert holding.returncode == 0, err.decode() + out.decode()
    assert alpha.version() == "1.0.0"
    assert _lock_status(alpha)["locked"] is False


def test_a_live_lock_of_an_older_lockstep_holds_every_project_s_deploy_back(
    two_projects: tuple[NotesProject, NotesProject, Path],
) -> None:
    """An older lockstep locked `test` at the old key (locks/test, no project): beta's deploy
    waits for it as before, --force does not take it, `lock status` shows it, and once `lock
    release` removed it (its holder gone) the deploy goes ahead."""
    _alpha, beta, repository = two_projects
    opened = Repository.open(open_backend(str(repository)), TEST_PASSWORD)
    try:
        document = replace(LockHolder.for_this_process("older-deploy", "test"), lock_id="older-lock-id").to_document()
        del document["project"]  # as an older lockstep writes it: this process is its live holder
        assert DocumentStore(opened).create("locks/test", document)
    finally:
        opened.close()
    for options in ((), ("--force", "--yes")):
        refused = beta.lockstep("deploy", "--lock-wait", "1s", "--json", *options)
        assert refused.returncode == 4, refused.err + refused.out
        error = json.loads(refused.out)
        assert "locked (waited 1 s) by an older lockstep" in error["error"] and "older-deploy" in error["error"]
        assert "--force does not take it" in error["error"], error
    assert beta.history() == [] or all(record["outcome"] != "succeeded" for record in beta.history())
    assert beta.status()["lock"]["state"] == "locked"
    completed = beta.lockstep("lock", "status", "--env", "test", "--json")
    assert completed.returncode == 0, completed.err
    own, old = json.loads(completed.out)
    assert (own["locked"], own["old_key"]) == (False, False)
    assert (old["locked"], old["old_key"], old["holder"]["deploy_id"]) == (True, True, "older-deploy")
    assert "test (old key)" in beta.lockstep("lock", "status").out
    released = beta.lockstep("lock", "release", "--env", "test", "--yes")
    assert released.returncode == 0, released.err
    assert "under the old key" in released.out and "older-deploy" in released.out
    assert not (repository / "lockstep" / "locks" / "test").exists()
    deployed = beta.lockstep("deploy", "--lock-wait", "0", "--json")
    assert deployed.returncode == 0, deployed.err + deployed.out
