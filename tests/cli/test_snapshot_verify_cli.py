"""`lockstep snapshot verify` and the "verified" column of `snapshot list`, end to end: the real
CLI in a child process on a real git project with a SQLite database (and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lockstep.pipeline.snapshot import load_manifest
from lockstep.pipeline.verify import UNCHECKED_RELEASE_NOTE
from lockstep.repository.repository import Repository
from lockstep.storage.local import LocalBackend
from tests.cli.test_snapshot_cli import Project, git, make_sqlite
from tests.conftest import TEST_PASSWORD, require_binary
from tests.pipeline.test_code_checksum import make_release, rebuild
from tests.pipeline.test_verify import flip_bit_in_dump, postgresql_database, rewrite_manifest


def make_project(tmp_path: Path) -> Project:
    """A committed git project with a SQLite database, a config file and a secret, and an
    initialised repository next to it (as in test_snapshot_cli)."""
    require_binary("git", "apt-get install git")
    root = tmp_path / "shop"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "app.py").write_text("print('v1')\n")
    (root / "config").mkdir()
    (root / "config" / "app.yml").write_text("currency: EUR\n")
    (root / ".env").write_text("STRIPE_KEY=sk_test_restore\n")
    (root / ".gitignore").write_text("app.db\n.env\n")
    make_sqlite(root / "app.db")
    project = Project(root, tmp_path / "repository")
    project.write_config({"main": "sqlite:///app.db"})
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    assert project.repo("init").returncode == 0
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh project with a SQLite database and an initialised repository."""
    return make_project(tmp_path)


def scratch_directory(project: Project, tmp_path: Path) -> Path:
    """Point the child's TMPDIR at an empty directory, where SQLite scratch databases go."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    project.env["TMPDIR"] = str(directory)
    return directory


def test_all_levels_pass_and_list_shows_the_verification(project: Project, tmp_path: Path) -> None:
    """structure, data and restore exit 0; list shows never, then the last level, in both forms;
    no scratch database is left in TMPDIR."""
    temporary = scratch_directory(project, tmp_path)
    created = project.create("-m", "good")
    listed = json.loads(project.ok("snapshot", "list", "--json").out)
    assert listed[0]["verification"] is None
    assert "never" in project.ok("snapshot", "list").out
    for level in ("structure", "data"):
        assert f"{level} verification ok" in project.ok("snapshot", "verify", created["short_id"], "--level", level).out
    result = project.ok("snapshot", "verify", "latest")  # the default level is restore
    assert "restore verification ok" in result.out
    assert "database main (sqlite): test-restored" in result.out and "PRAGMA integrity_check: ok" in result.out
    document = json.loads(project.ok("snapshot", "verify", "latest", "--level", "data", "--json").out)
    assert document["ok"] is True and document["level"] == "data" and document["snapshot"] == created["id"]
    listed = json.loads(project.ok("snapshot", "list", "--json").out)
    assert listed[0]["verification"]["level"] == "data" and listed[0]["verification"]["ok"] is True
    assert "data, " in project.ok("snapshot", "list").out
    assert list(temporary.iterdir()) == []


@pytest.mark.slow
def test_a_flipped_bit_exits_12_naming_the_database_and_list_says_failed(project: Project, tmp_path: Path) -> None:
    """A damaged dump fails data and restore verification with exit 12, the message names the
    database and its file, --json says ok false, and list shows FAILED."""
    created = project.create("-m", "to be damaged")
    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        repository.load_index()
        flip_bit_in_dump(project.repository, repository, repository.load_snapshot(created["id"]), "main")
    finally:
        repository.close()
    assert project.lockstep("snapshot", "verify", "latest", "--level", "structure").returncode == 0
    for level in ("data", "restore"):
        failed = project.lockstep("snapshot", "verify", "latest", "--level", level)
        assert failed.returncode == 12, failed.err
        assert "database main" in failed.err and "/databases/main.sqlite3" in failed.err
    as_json = project.lockstep("snapshot", "verify", "latest", "--level", "data", "--json")
    assert as_json.returncode == 12
    document = json.loads(as_json.out)
    assert document["ok"] is False and document["findings"][0]["subject"] == "/databases/main.sqlite3"
    assert "FAILED (data" in project.ok("snapshot", "list").out
    assert json.loads(project.ok("snapshot", "list", "--json").out)[0]["verification"]["ok"] is False


def test_a_dump_whose_checksum_differs_exits_12(project: Project) -> None:
    """A manifest whose checksum for the dump (its blob list's SHA-256) is wrong fails verify."""
    created = project.create("-m", "good")
    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        repository.load_index()
        snapshot = repository.load_snapshot(created["id"])
        recorded = load_manifest(repository, snapshot).databases["main"].blobs_sha256
        assert recorded == created["databases"]["main"]["blobs_sha256"]

        def wrong(document: dict[str, object]) -> None:
            document["databases"]["main"]["blobs_sha256"] = "f" * 64  # type: ignore[index]

        bad = rewrite_manifest(repository, snapshot, wrong)
    finally:
        repository.close()
    failed = project.lockstep("snapshot", "verify", bad.id[:12], "--level", "structure")
    assert failed.returncode == 12
    assert "database main" in failed.err and "blobs_sha256" in failed.err
    assert project.ok("snapshot", "verify", created["id"][:12], "--level", "data")


def test_postgresql_restore_level_through_the_cli(project: Project) -> None:
    """The restore level test-restores a PostgreSQL database next to the live one."""
    with postgresql_database(
        "CREATE TABLE items (id serial PRIMARY KEY, label text);"
        "INSERT INTO items (label) SELECT 'item ' || g FROM generate_series(1, 500) g;"
    ) as url:
        project.write_config({"shop": url})
        project.create("--allow-dirty", "-m", "postgresql")
        result = project.ok("snapshot", "verify", "latest", "--level", "restore", "--json")
    document = json.loads(result.out)
    assert document["ok"] is True
    assert document["databases"][0]["name"] == "shop" and document["databases"][0]["rows"] == 500


def test_an_unknown_snapshot_exits_13(project: Project) -> None:
    """A reference that matches nothing is NOT_FOUND, as everywhere else."""
    project.create("-m", "one")
    missing = project.lockstep("snapshot", "verify", "zzzz")
    assert missing.returncode == 13 and "no lockstep snapshot matches" in missing.err


def release_project(tmp_path: Path) -> tuple[Project, Path]:
    """A project whose code is `current`, a symlink to a release directory; the release's path."""
    root = tmp_path / "site"
    current = make_release(root)
    project = Project(root, tmp_path / "repository")
    (root / "lockstep.toml").write_text(
        f'[repository]\nurl = "{project.repository}"\n\n[code]\nkind = "release-directory"\npath = "current"\n'
    )
    assert project.repo("init").returncode == 0
    return project, current.resolve()


def test_a_release_tree_unlike_its_manifest_exits_12_naming_the_file(tmp_path: Path) -> None:
    """A release tree that is not the one its manifest describes passed `verify --level data` and
    `restore --code`: every blob matched its own ID, and nothing else was compared."""
    project, release = release_project(tmp_path)
    created = project.create("-m", "v7")
    (release / "index.php").write_text("<?php echo 'tampered';\n")
    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        repository.load_index()
        swapped = rebuild(repository, repository.load_snapshot(created["id"]), release=release)
    finally:
        repository.close()
    assert project.ok("snapshot", "verify", swapped.id[:12], "--level", "structure")
    for level in ("data", "restore"):
        failed = project.lockstep("snapshot", "verify", swapped.id[:12], "--level", level)
        assert failed.returncode == 12, failed.err
        assert "index.php: its content differs" in failed.err and "tree_sha256" in failed.err
    as_json = project.lockstep("snapshot", "verify", swapped.id[:12], "--level", "data", "--json")
    assert as_json.returncode == 12 and json.loads(as_json.out)["findings"][0]["subject"] == "code"
    restored = project.lockstep("snapshot", "restore", swapped.id[:12], "--code", str(tmp_path / "restored"))
    assert restored.returncode == 12 and "index.php: its content differs" in restored.err
    assert not (tmp_path / "restored").exists()
    good = project.ok("snapshot", "restore", created["short_id"], "--code", str(tmp_path / "good"))
    assert "checked against its tree_sha256" in good.out
    assert "note:" not in project.ok("snapshot", "verify", created["short_id"], "--level", "data").out


def test_an_older_release_manifest_passes_and_says_the_code_was_not_checked(tmp_path: Path) -> None:
    project, release = release_project(tmp_path)
    created = project.create("-m", "v7")

    def as_before(document: dict[str, Any]) -> None:
        for key in ("tree_sha256", "listing", "release"):
            del document["code"][key]

    repository = Repository.open(LocalBackend(project.repository), TEST_PASSWORD)
    try:
        repository.load_index()
        older = rebuild(repository, repository.load_snapshot(created["id"]), as_before, release=release)
    finally:
        repository.close()
    result = project.ok("snapshot", "verify", older.id[:12], "--level", "data")
    assert "data verification ok" in result.out
    assert f"  note: {UNCHECKED_RELEASE_NOTE}" in result.out
    document = json.loads(project.ok("snapshot", "verify", older.id[:12], "--level", "data", "--json").out)
    assert document["ok"] is True and document["notes"] == [UNCHECKED_RELEASE_NOTE]
