"""A full disk under the repository during `lockstep snapshot create` (and `lockstep backup`):
exit 14 with a message about space, no snapshot, no pack, lock or temporary file left behind, the
live database byte-for-byte untouched, and the same command succeeding once there is room.

The repository lives on a small tmpfs (tests run as root: only a real size limit makes the
kernel refuse writes), as in test_full_disk.py, whose helpers this reuses."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from lockstep.databases import adapter_for
from lockstep.exit_codes import ExitCode
from tests.conftest import TEST_PASSWORD, Completed, require_binary, run_lockstep, run_restic
from tests.faults import assert_clean_error, remount, tmpfs
from tests.faults.test_full_disk import assert_no_leftovers, orphaned_packs


def fingerprint(path: Path) -> tuple[str, dict[str, tuple[int, str]]]:
    """The file's SHA-256 and the adapter's per-table row counts and checksums."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = adapter_for("sqlite:///x").inspect(f"sqlite:///{path}", None)
    return digest, {table.name: (table.rows, table.checksum) for table in info.tables}


def snapshot_ids(repository: Path, environment: dict[str, str]) -> list[str]:
    listed = run_lockstep(["repo", "snapshots", "--json", "-r", str(repository)], env=environment)
    assert listed.returncode == 0, listed.err
    return [snapshot["id"] for snapshot in json.loads(listed.out)]


def test_snapshot_create_on_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    """Exit 14, nothing left behind, the database untouched; a retry with room succeeds."""
    require_binary("restic", "apt-get install restic")
    project = tmp_path / "project"
    project.mkdir()
    database = project / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE documents (id INTEGER PRIMARY KEY, body BLOB)")
        connection.executemany(
            "INSERT INTO documents (body) VALUES (?)", [(os.urandom(1024 * 1024),) for _ in range(24)]
        )
    before = fingerprint(database)
    environment = {"LOCKSTEP_PASSWORD": TEST_PASSWORD, "LOCKSTEP_SCRYPT_N": "1024"}

    with tmpfs(tmp_path / "disk", "8m") as disk:
        repository = disk / "repository"
        (project / "lockstep.toml").write_text(
            f'[repository]\nurl = "{repository}"\n\n[databases.main]\nurl = "sqlite:///{database}"\n\n'
            "[backup]\nmin_free_disk_mb = 1\n"
        )

        def lockstep(*arguments: str) -> Completed:
            return run_lockstep(list(arguments), cwd=project, env=environment)

        assert lockstep("repo", "init", "-r", str(repository)).returncode == 0

        failed = lockstep("snapshot", "create")
        assert_clean_error(failed, ExitCode.STORAGE, "no space left")
        assert snapshot_ids(repository, environment) == []
        assert_no_leftovers(repository)
        assert orphaned_packs(repository) == [], "the failed snapshot left packs behind"
        assert fingerprint(database) == before, "the live database changed"

        # `backup` passes its 1 MiB preflight here, then meets the same full disk.
        failed_backup = lockstep("backup")
        assert_clean_error(failed_backup, ExitCode.STORAGE, "no space left")
        assert snapshot_ids(repository, environment) == []
        assert_no_leftovers(repository)
        assert orphaned_packs(repository) == []

        remount(disk, "size=96m")
        retried = lockstep("snapshot", "create", "--json")
        assert retried.returncode == 0, retried.err
        created = json.loads(retried.out)
        assert snapshot_ids(repository, environment) == [created["id"]]
        assert {
            table["name"]: (table["rows"], table["checksum"]) for table in created["databases"]["main"]["tables"]
        } == (before[1])
        checked = run_restic(str(repository), ["check", "--read-data"])
        assert checked.returncode == 0, checked.out + checked.err
        assert fingerprint(database) == before
