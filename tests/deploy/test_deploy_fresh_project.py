"""A project set up as the README says, without a .gitignore for lockstep's own directories: the
state directory the agent creates and the local repository must not count as uncommitted changes.
The notes app, a real agent, real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.conftest import _stop_everything, make_project

pytestmark = pytest.mark.slow


def test_lockstep_s_own_directories_do_not_make_the_work_tree_dirty(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    (project.directory / ".gitignore").unlink()
    project.commit("no .gitignore, as in a fresh project")
    project.start_agent()
    try:
        assert (project.directory / ".lockstep" / "repository").is_dir()
        assert (project.directory / ".lockstep" / "state").is_dir()
        completed = project.lockstep("deploy")
        assert completed.returncode == 0, completed.err
        assert project.version() == "1.0.0"

        (project.directory / "VERSION").write_text("1.0.1\n")  # a real uncommitted change still counts
        dirty = project.lockstep("deploy")
        assert dirty.returncode == 2, dirty.err
        assert "uncommitted changes" in dirty.err
    finally:
        _stop_everything(project)
