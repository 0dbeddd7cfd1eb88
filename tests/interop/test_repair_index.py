"""`lockstep repo repair index` recovers from a damaged or lost index file, as restic's does.

One flipped bit in one index file used to stop every lockstep command that loads the index; the
only way out was restic's `rebuild-index`. Each test damages a real repository (written by lockstep
or by restic, on disk or on the loopback S3 server), repairs it with lockstep, and lets the real
restic binary judge the result: `restic check --read-data` passes and both tools restore every
snapshot byte for byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockstep.exit_codes import ExitCode
from lockstep.storage.base import Backend, FileType
from lockstep.storage.location import open_backend
from tests.conftest import run_lockstep
from tests.interop import describe_tree, lockstep, lockstep_backup_summary, mixed_data, restic, restored_copy

pytestmark = pytest.mark.usefixtures("restic_binary")


@pytest.fixture
def backend_of(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Opens the repository's storage in this process (S3 credentials from the environment)."""
    opened: list[Backend] = []

    def open_storage(environment: dict[str, str]) -> Backend:
        for name, value in environment.items():
            if name.startswith("AWS_"):
                monkeypatch.setenv(name, value)
        backend = open_backend(environment["LOCKSTEP_REPOSITORY"])
        opened.append(backend)
        return backend

    yield open_storage
    for backend in opened:
        backend.close()


def flip_bit(backend: Backend, file_type: FileType, name: str, offset: int = 40) -> None:
    data = bytearray(backend.load(file_type, name))
    data[offset] ^= 0x10
    backend.save(file_type, name, bytes(data))


def make_sources(tmp_path: Path) -> list[Path]:
    """Two small directories; the second shares a file with the first (so packs are shared)."""
    first = tmp_path / "first"
    second = tmp_path / "second"
    for directory in (first, second):
        (directory / "sub").mkdir(parents=True)
    shared = mixed_data(400_000, seed=7)
    (first / "shared.bin").write_bytes(shared)
    (first / "sub" / "one.bin").write_bytes(os.urandom(250_000))
    (first / "notes.txt").write_text("first\n")
    (second / "shared.bin").write_bytes(shared)
    (second / "sub" / "two.bin").write_bytes(mixed_data(300_000, seed=8))
    (second / "notes.txt").write_text("second\n")
    return [first, second]


def lockstep_backups(environment: dict[str, str], sources: list[Path]) -> dict[str, Path]:
    """One lockstep backup per source (each writes its own index file); snapshot ID → source."""
    snapshots = {}
    for source in sources:
        summary = lockstep_backup_summary(lockstep(environment, ["repo", "backup", "--json", str(source)]))
        snapshots[summary["snapshot_id"]] = source
    return snapshots


def restic_backups(environment: dict[str, str], sources: list[Path]) -> dict[str, Path]:
    snapshots = {}
    for source in sources:
        lines = restic(environment, ["backup", "--json", str(source)]).out.splitlines()
        summary = [json.loads(line) for line in lines if '"summary"' in line][-1]
        snapshots[summary["snapshot_id"]] = source
    return snapshots


def assert_everything_restores(environment: dict[str, str], snapshots: dict[str, Path], tmp_path: Path) -> None:
    """restic finds no error reading every byte, and both tools restore every snapshot exactly."""
    checked = restic(environment, ["check", "--read-data"])
    assert "no errors were found" in checked.out, checked.out
    for number, (snapshot_id, source) in enumerate(sorted(snapshots.items())):
        by_lockstep = tmp_path / f"lockstep-restore-{number}"
        lockstep(environment, ["repo", "restore", snapshot_id[:8], "--target", str(by_lockstep)])
        assert describe_tree(restored_copy(by_lockstep, source)) == describe_tree(source)
        by_restic = tmp_path / f"restic-restore-{number}"
        restic(environment, ["restore", snapshot_id, "--target", str(by_restic)])
        assert describe_tree(restored_copy(by_restic, source)) == describe_tree(source)


def repair(environment: dict[str, str], *arguments: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(lockstep(environment, ["repo", "repair", "index", "--json", *arguments]).out)
    assert document["ok"] is True, document
    return document


def test_a_bit_flipped_lockstep_index_file_is_repaired(
    repository_env: dict[str, str], tmp_path: Path, backend_of: Any
) -> None:
    environment = repository_env
    lockstep(environment, ["repo", "init"])
    snapshots = lockstep_backups(environment, make_sources(tmp_path))
    backend = backend_of(environment)
    index_files = sorted(name for name, _ in backend.list(FileType.INDEX))
    assert len(index_files) == 2
    packs = {name for name, _ in backend.list(FileType.PACK)}
    damaged = index_files[0]
    flip_bit(backend, FileType.INDEX, damaged)

    refused = run_lockstep(["repo", "restore", "latest", "--target", str(tmp_path / "x")], env=environment)
    assert refused.returncode == ExitCode.INTEGRITY, refused.err
    assert f"index/{damaged[:8]}" in refused.err and "lockstep repo repair index" in refused.err

    shown = lockstep(environment, ["repo", "repair", "index"])
    assert f"removed damaged index {damaged[:8]}" in shown.out, shown.out
    assert "added pack" in shown.out and "deleted 2 old index files (1 damaged)" in shown.out, shown.out

    after = sorted(name for name, _ in backend.list(FileType.INDEX))
    assert len(after) == 1 and not set(after) & set(index_files)
    assert {name for name, _ in backend.list(FileType.PACK)} == packs, "a repair must not add or delete packs"
    assert_everything_restores(environment, snapshots, tmp_path)

    again = repair(environment)  # nothing left to fix: the index is rewritten from itself
    assert again["damaged_index_files"] == [] and again["added_packs"] == [] and again["packs_read"] == 0
    assert again["packs"] == len(packs)


def test_a_deleted_index_file_is_rebuilt_from_the_pack_headers(
    repository_env: dict[str, str], tmp_path: Path, backend_of: Any
) -> None:
    environment = repository_env
    lockstep(environment, ["repo", "init"])
    snapshots = lockstep_backups(environment, make_sources(tmp_path))
    backend = backend_of(environment)
    index_files = sorted(name for name, _ in backend.list(FileType.INDEX))
    packs = {name for name, _ in backend.list(FileType.PACK)}
    backend.remove(FileType.INDEX, index_files[1])

    document = repair(environment)
    assert document["damaged_index_files"] == []
    assert document["added_packs"] and set(document["added_packs"]) <= packs
    assert document["packs_read"] == len(document["added_packs"])
    assert document["packs"] == len(packs) and document["index_files_deleted"] == 1
    checked = restic(environment, ["check"])
    assert "not referenced in any index" not in checked.out + checked.err
    assert_everything_restores(environment, snapshots, tmp_path)

    from_scratch = repair(environment, "--read-all-packs")
    assert from_scratch["packs_read"] == len(packs) == from_scratch["packs"]
    assert from_scratch["index_files_loaded"] == 0
    assert_everything_restores(environment, snapshots, tmp_path / "scratch")


def test_a_restic_repository_with_a_damaged_index_file_is_repaired_by_lockstep(
    repository_env: dict[str, str], tmp_path: Path, backend_of: Any
) -> None:
    environment = repository_env
    restic(environment, ["init", "--repository-version", "2"])
    snapshots = restic_backups(environment, make_sources(tmp_path))
    backend = backend_of(environment)
    index_files = sorted(name for name, _ in backend.list(FileType.INDEX))
    assert len(index_files) == 2
    flip_bit(backend, FileType.INDEX, index_files[0], offset=100)
    broken = run_lockstep(["repo", "restore", "latest", "--target", str(tmp_path / "x")], env=environment)
    assert broken.returncode == ExitCode.INTEGRITY and "lockstep repo repair index" in broken.err

    document = repair(environment)
    assert [entry["id"] for entry in document["damaged_index_files"]] == [index_files[0]]
    assert document["added_packs"] and document["index_files_deleted"] == 2
    assert_everything_restores(environment, snapshots, tmp_path)


def test_an_index_file_damaged_on_s3_is_repaired(s3_env: dict[str, str], tmp_path: Path, backend_of: Any) -> None:
    environment = s3_env
    lockstep(environment, ["repo", "init"])
    snapshots = lockstep_backups(environment, make_sources(tmp_path))
    backend = backend_of(environment)
    index_files = sorted(name for name, _ in backend.list(FileType.INDEX))
    flip_bit(backend, FileType.INDEX, index_files[1])
    # and a truncated upload of another: only its first half arrived
    data = backend.load(FileType.INDEX, index_files[0])
    backend.save(FileType.INDEX, index_files[0], data[: len(data) // 2])

    document = repair(environment)
    assert sorted(entry["id"] for entry in document["damaged_index_files"]) == index_files
    assert document["packs_read"] == document["packs"] == len(list(backend.list(FileType.PACK)))
    assert_everything_restores(environment, snapshots, tmp_path)


def test_a_pack_whose_header_cannot_be_read_is_reported_and_left_in_place(
    repository_env: dict[str, str], tmp_path: Path, backend_of: Any
) -> None:
    environment = repository_env
    lockstep(environment, ["repo", "init"])
    lockstep_backups(environment, make_sources(tmp_path))
    backend = backend_of(environment)
    for name, _ in list(backend.list(FileType.INDEX)):
        backend.remove(FileType.INDEX, name)
    packs = dict(backend.list(FileType.PACK))
    victim = sorted(packs)[0]
    flip_bit(backend, FileType.PACK, victim, offset=packs[victim] - 10)  # inside the sealed header

    result = run_lockstep(["repo", "repair", "index"], env=environment)
    assert result.returncode == ExitCode.INTEGRITY, result.err
    assert f"pack {victim[:8]}: its header failed authentication" in result.err
    assert "1 pack could not be read" in result.err
    assert dict(backend.list(FileType.PACK)) == packs, "an unreadable pack must be left in place"

    as_json = run_lockstep(["repo", "repair", "index", "--json"], env=environment)
    assert as_json.returncode == ExitCode.INTEGRITY
    document = json.loads(as_json.out)
    assert document["ok"] is False and [entry["id"] for entry in document["unreadable_packs"]] == [victim]
    assert document["packs"] == len(packs) - 1
