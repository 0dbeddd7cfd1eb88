"""Release directories: git archive of the app's directory, shared paths linked, old ones pruned."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lockstep.config.deploy_model import AppConfig
from lockstep.errors import UsageError
from lockstep.layout import EnvironmentLayout
from lockstep.pipeline.releases import (
    build_release_directory,
    new_deploy_id,
    prune_releases,
    resolve_ref,
)


def git(directory: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.invalid", *arguments],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def work_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "code"
    (tree / "app" / "uploads").mkdir(parents=True)
    (tree / "app" / "main.py").write_text("print('v1')\n")
    (tree / "app" / "uploads" / "seed.txt").write_text("from the repository\n")
    (tree / "app" / ".env").write_text("MODE=release\n")
    (tree / "README").write_text("outside the app\n")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "v1")
    return tree


def test_a_release_is_the_app_directory_at_the_commit(work_tree: Path, tmp_path: Path) -> None:
    """Only app.source, at the named commit, not the work tree's uncommitted state."""
    layout = EnvironmentLayout(root=tmp_path / "state" / "production", environment="production")
    commit = resolve_ref(work_tree, "HEAD").commit
    (work_tree / "app" / "main.py").write_text("print('uncommitted')\n")
    release = build_release_directory(work_tree, AppConfig(source="app"), layout, "r1", commit)
    assert (release / "main.py").read_text() == "print('v1')\n"
    assert not (release / "README").exists()


def test_shared_paths_are_seeded_once_and_linked_into_every_release(work_tree: Path, tmp_path: Path) -> None:
    """uploads/ and .env live in shared/ and survive releases; the first release seeds them."""
    layout = EnvironmentLayout(root=tmp_path / "state" / "production", environment="production")
    app = AppConfig(source="app", shared=["uploads", ".env", "cache/tmp"])
    commit = resolve_ref(work_tree, "HEAD").commit
    first = build_release_directory(work_tree, app, layout, "r1", commit)
    assert (first / "uploads").is_symlink() and (first / ".env").is_symlink()
    (first / "uploads" / "user.png").write_text("written by the app")
    second = build_release_directory(work_tree, app, layout, "r2", commit)
    assert (second / "uploads" / "user.png").read_text() == "written by the app"
    assert (second / "uploads" / "seed.txt").exists()
    assert (layout.shared / ".env").read_text() == "MODE=release\n"
    assert (second / "cache" / "tmp").is_dir() and (layout.shared / "cache" / "tmp").is_dir()


def test_unknown_refs_and_escaping_shared_paths_are_refused(work_tree: Path, tmp_path: Path) -> None:
    """A ref that names nothing, or a shared path outside the release, is a usage error."""
    with pytest.raises(UsageError, match="no-such-branch"):
        resolve_ref(work_tree, "no-such-branch")
    layout = EnvironmentLayout(root=tmp_path / "state" / "production", environment="production")
    commit = resolve_ref(work_tree, "HEAD").commit
    with pytest.raises(UsageError, match="not a relative path"):
        build_release_directory(work_tree, AppConfig(source="app", shared=["../etc"]), layout, "r1", commit)
    assert not (layout.releases / "r1").exists()


def test_old_releases_are_pruned_but_never_a_protected_one(tmp_path: Path) -> None:
    """keep_releases counts directories; the running releases stay whatever their age."""
    layout = EnvironmentLayout(root=tmp_path / "state" / "staging", environment="staging")
    for name in ("20260101_000000_a", "20260102_000000_b", "20260103_000000_c", "20260104_000000_d"):
        (layout.releases / name).mkdir(parents=True)
    removed = prune_releases(layout, keep=2, protected={"20260101_000000_a"})
    assert removed == ["20260102_000000_b"]
    assert sorted(path.name for path in layout.releases.iterdir()) == [
        "20260101_000000_a",
        "20260103_000000_c",
        "20260104_000000_d",
    ]


def test_deploy_ids_sort_by_time_and_name_the_commit() -> None:
    """YYYYMMDD_HHMMSS_<7 hex>, in UTC."""
    from datetime import UTC, datetime

    assert new_deploy_id("abcdef0123456789", datetime(2026, 11, 22, 5, 6, 7, tzinfo=UTC)) == "20261122_050607_abcdef0"
