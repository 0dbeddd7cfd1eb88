"""A full disk under the repository or under a restore target: the command fails with exit 14
and a message about space, nothing the repository already held is harmed, and once there is
room again the same command succeeds.

The repository lives on a small tmpfs: tests run as root, so only a real size limit makes the
kernel refuse writes with ENOSPC."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lockstep.exit_codes import ExitCode
from lockstep.repository.repository import Repository
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_lockstep, run_restic
from tests.faults import assert_clean_error, is_storage_name, remount, repository_files, tmpfs

PAGE = 4096


def snapshot_ids(environment: dict[str, str]) -> list[str]:
    listed = run_lockstep(["repo", "snapshots", "--json"], env=environment)
    assert listed.returncode == 0, listed.err
    return [snapshot["id"] for snapshot in json.loads(listed.out)]


def assert_restic_reads_everything(repository: Path) -> None:
    checked = run_restic(str(repository), ["check", "--read-data"])
    assert checked.returncode == 0, checked.out + checked.err
    assert "no errors were found" in checked.out


def assert_no_leftovers(repository: Path) -> None:
    """No lock and no temporary file survive a failed write."""
    files = repository_files(repository)
    assert not [name for name in files if name.startswith("locks/")], files
    strays = [name for name in files if name != "config" and not is_storage_name(Path(name).name)]
    assert strays == [], f"temporary or unknown files left behind: {strays}"


def orphaned_packs(repository: Path) -> list[str]:
    """Packs that no index names: left behind by a backup that failed after uploading them."""
    opened = Repository.open(LocalBackend(repository), TEST_PASSWORD)
    try:
        opened.load_index()
        indexed = {pack_id.hex() for pack_id in opened.index.pack_ids()}
        return sorted(name for name, _ in opened.backend.list(FileType.PACK) if name not in indexed)
    finally:
        opened.close()


def fill(mount_point: Path, leave_bytes: int) -> Path:
    """Take all free space on the mount but `leave_bytes` with a filler file."""
    filler = mount_point / "filler"
    filler.unlink(missing_ok=True)
    statistics = os.statvfs(mount_point)
    free = statistics.f_bavail * statistics.f_frsize
    with open(filler, "wb") as handle:
        handle.truncate(0)
        remaining = max(0, free - leave_bytes)
        block = b"\0" * (1 << 20)
        while remaining:
            remaining -= handle.write(block[: min(len(block), remaining)])
    return filler


def test_backup_onto_a_full_disk_fails_cleanly_and_succeeds_after_space_is_freed(
    tmp_path: Path, restic_binary: str
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "random.bin").write_bytes(os.urandom(30 * 1024 * 1024))
    (source / "notes.txt").write_text("thirty megabytes of noise\n")
    small = tmp_path / "small.txt"
    small.write_text("a small file that fits\n")

    with tmpfs(tmp_path / "disk", "8m") as disk:
        repository = disk / "repository"
        environment = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
        assert run_lockstep(["repo", "init"], env=environment).returncode == 0
        first = run_lockstep(["repo", "backup", str(small)], env=environment)
        assert first.returncode == 0, first.err
        before = snapshot_ids(environment)

        result = run_lockstep(["repo", "backup", str(source)], env=environment)
        assert_clean_error(result, ExitCode.STORAGE, "no space left", "free some space")
        assert snapshot_ids(environment) == before, "a failed backup wrote a snapshot"
        assert_no_leftovers(repository)
        assert_restic_reads_everything(repository)

        remount(disk, "size=96m")
        retried = run_lockstep(["repo", "backup", str(source)], env=environment)
        assert retried.returncode == 0, retried.err
        assert len(snapshot_ids(environment)) == len(before) + 1
        assert_restic_reads_everything(repository)
        restored = tmp_path / "restored"
        done = run_restic(str(repository), ["restore", "latest", "--target", str(restored)])
        assert done.returncode == 0, done.err
        assert (restored / source.relative_to("/") / "random.bin").read_bytes() == (source / "random.bin").read_bytes()


def test_backup_with_a_few_pages_free_fails_at_any_write_without_damage(tmp_path: Path, restic_binary: str) -> None:
    """With almost no room the lock, a pack, the index or the snapshot may be the write that
    fails; whichever it is, the exit is 0 or 14 and the repository stays sound."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        repository = disk / "repository"
        environment = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
        assert run_lockstep(["repo", "init"], env=environment).returncode == 0
        outcomes: dict[int, int] = {}
        for pages in range(8):
            fill(disk, pages * PAGE)
            data = os.urandom(3000)
            result = run_lockstep(
                ["repo", "backup", "--stdin", "--stdin-filename", f"{pages}.bin"], env=environment, input=data
            )
            outcomes[pages] = result.returncode
            if result.returncode != 0:
                assert_clean_error(result, ExitCode.STORAGE, "no space left")
                # On a full disk the space a failed backup used is exactly what the user needs back.
                assert orphaned_packs(repository) == [], f"with {pages} pages free, packs were left behind"
            assert not [name for name in repository_files(repository) if name.startswith("locks/")]
        (disk / "filler").unlink()
        assert ExitCode.STORAGE in outcomes.values() and ExitCode.OK in outcomes.values(), outcomes
        assert_restic_reads_everything(repository)
        assert len(snapshot_ids(environment)) == list(outcomes.values()).count(ExitCode.OK)


def test_restore_into_a_full_disk_fails_with_exit_14(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    environment = {"LOCKSTEP_REPOSITORY": str(repository), "LOCKSTEP_PASSWORD": TEST_PASSWORD}
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    assert run_lockstep(["repo", "init"], env=environment).returncode == 0
    assert run_lockstep(["repo", "backup", str(source)], env=environment).returncode == 0

    with tmpfs(tmp_path / "small-target", "1m") as target:
        result = run_lockstep(["repo", "restore", "latest", "--target", str(target)], env=environment)
        line = assert_clean_error(result, ExitCode.STORAGE, "no space left", "--target")
        assert "big.bin" in line, line
        truncated = list(target.rglob("big.bin"))
        assert truncated == [], "a truncated file was left looking restored"

        # Full before the first byte: even creating the directories fails cleanly.
        fill(target, 0)
        again = run_lockstep(["repo", "restore", "latest", "--target", str(target / "elsewhere")], env=environment)
        assert_clean_error(again, ExitCode.STORAGE, "--target")
