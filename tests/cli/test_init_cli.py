"""`lockstep init` as users run it: writes lockstep.toml, refuses to overwrite, --force, --json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lockstep.config.loading import load_config
from lockstep.exit_codes import ExitCode
from tests.conftest import run_lockstep


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    """The written file is the sample, and it loads without edits."""
    completed = run_lockstep(["init"], cwd=tmp_path)
    assert completed.returncode == ExitCode.OK, completed.err
    path = tmp_path / "lockstep.toml"
    assert str(path) in completed.out
    assert "is not a git work tree" in path.read_text(encoding="utf-8")
    saved = os.environ.pop("LOCKSTEP_REPOSITORY", None)
    try:
        config = load_config(path)
    finally:
        if saved is not None:
            os.environ["LOCKSTEP_REPOSITORY"] = saved
    assert config.databases["main"].engine == "postgresql"


def test_init_notes_a_git_work_tree(tmp_path: Path) -> None:
    """In a git work tree the comments say the code is the checked-out commit."""
    (tmp_path / ".git").mkdir()
    completed = run_lockstep(["init"], cwd=tmp_path)
    assert completed.returncode == ExitCode.OK, completed.err
    assert "is a git work tree" in (tmp_path / "lockstep.toml").read_text(encoding="utf-8")


def test_init_in_a_monorepo_subdirectory_names_the_work_tree_the_config_uses(tmp_path: Path) -> None:
    """The code is the git work tree the config sits in, even from a subdirectory: the config
    loader found it, but `init` looked for .git in the directory alone and said it was not a git
    work tree. Now `init`, the sample's comment and the loaded config agree."""
    (tmp_path / ".git").mkdir()
    app = tmp_path / "apps" / "shop"
    app.mkdir(parents=True)
    completed = run_lockstep(["init"], cwd=app)
    assert completed.returncode == ExitCode.OK, completed.err
    assert f"the code is the git work tree {tmp_path}, which this directory is in" in completed.out
    assert "not a git work tree" not in completed.out
    comments = " ".join(line.removeprefix("# ") for line in (app / "lockstep.toml").read_text().splitlines())
    assert f"This directory is inside the git work tree {tmp_path}, so the code is" in comments
    assert "not a git work tree" not in comments
    saved = os.environ.pop("LOCKSTEP_REPOSITORY", None)
    try:
        config = load_config(app / "lockstep.toml")
    finally:
        if saved is not None:
            os.environ["LOCKSTEP_REPOSITORY"] = saved
    assert (config.code.kind, config.code.path) == ("git", tmp_path.resolve())


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """An existing file is kept, exit code 2, and the message names --force."""
    path = tmp_path / "lockstep.toml"
    path.write_text("# mine\n", encoding="utf-8")
    completed = run_lockstep(["init"], cwd=tmp_path)
    assert completed.returncode == ExitCode.USAGE
    assert "already exists" in completed.err
    assert "--force" in completed.err
    assert path.read_text(encoding="utf-8") == "# mine\n"


def test_init_force_replaces_and_json_names_the_path(tmp_path: Path) -> None:
    """--force writes the sample over the old file; --json prints just the path."""
    path = tmp_path / "lockstep.toml"
    path.write_text("# mine\n", encoding="utf-8")
    completed = run_lockstep(["init", "--force", "--json"], cwd=tmp_path)
    assert completed.returncode == ExitCode.OK, completed.err
    assert json.loads(completed.out) == {"path": str(path)}
    assert "[repository]" in path.read_text(encoding="utf-8")
    global_flag = run_lockstep(["--json", "init", "--force"], cwd=tmp_path)
    assert json.loads(global_flag.out) == {"path": str(path)}
