"""Backups of streams: a failed or empty source leaves nothing behind, and repeats deduplicate.

The engine tests run in-process against a local repository; the CLI tests run the real
`lockstep repo backup` to check the exit code (ExitCode.SOURCE) users and scripts see.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.actions.repo.backup import backup
from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import SourceError, UsageError
from lockstep.exit_codes import ExitCode
from lockstep.repository import archiver as archiver_module
from lockstep.repository import repository as repository_module
from lockstep.repository.archiver import Archiver
from lockstep.repository.blobs import BlobType
from lockstep.repository.repository import PreparedBlob, Repository
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_lockstep, run_restic

FAILING_PRODUCER = ["sh", "-c", "head -c 5000000 /dev/urandom; exit 3"]


class CountingBackend(LocalBackend):
    """A local backend that remembers which packs were written, to prove cleanup removed them."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.packs_saved: list[str] = []

    def save(self, file_type: FileType, name: str, data: bytes) -> None:
        super().save(file_type, name, data)
        if file_type is FileType.PACK:
            self.packs_saved.append(name)


@pytest.fixture
def backend(tmp_path: Path) -> CountingBackend:
    return CountingBackend(tmp_path / "repository")


@pytest.fixture
def repository(backend: CountingBackend) -> Iterator[Repository]:
    repository = Repository.init(backend, TEST_PASSWORD)
    repository.pack_size = 1024 * 1024  # small packs, so a 5 MB stream uploads several before it fails
    yield repository
    repository.close()


def names(backend: LocalBackend, file_type: FileType) -> list[str]:
    return [name for name, _ in backend.list(file_type)]


def test_failed_producer_leaves_no_snapshot_and_no_packs(repository: Repository, backend: CountingBackend) -> None:
    def producer_failed() -> None:
        raise SourceError("pg_dump exited with code 3; no snapshot was written")

    archiver = Archiver(repository)
    with pytest.raises(SourceError) as raised:
        archiver.backup_stream(io.BytesIO(random.randbytes(5_000_000)), "db.sql", finished_cleanly=producer_failed)
    repository.discard_unindexed_packs()  # what the backup action does on any failure

    assert raised.value.exit_code == ExitCode.SOURCE
    assert backend.packs_saved, "the stream should have filled packs before it failed"
    assert names(backend, FileType.PACK) == []
    assert names(backend, FileType.SNAPSHOT) == []
    assert names(backend, FileType.INDEX) == []
    assert list(repository.index.blobs(BlobType.DATA)) == []


def test_backup_action_cleans_up_after_a_failing_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: CountingBackend
) -> None:
    """The real action with a real producer process that writes 5 MB and exits 3."""
    Repository.init(backend, TEST_PASSWORD).close()
    monkeypatch.setattr(repository_module, "DEFAULT_PACK_SIZE", 1024 * 1024)
    monkeypatch.setattr("lockstep.actions.repo.session.open_backend", lambda location: backend)
    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)

    with pytest.raises(SourceError, match="exited with code 3") as raised:
        backup(RepositoryAccess(location=str(backend.root)), stdin_command=FAILING_PRODUCER, stdin_filename="db.sql")

    assert raised.value.exit_code == ExitCode.SOURCE
    assert backend.packs_saved, "the command's output should have filled packs before it failed"
    assert names(backend, FileType.PACK) == []
    assert names(backend, FileType.SNAPSHOT) == []
    assert names(backend, FileType.LOCK) == []


def test_empty_stream_is_refused_unless_allowed(repository: Repository, backend: CountingBackend) -> None:
    with pytest.raises(SourceError, match="empty"):
        Archiver(repository).backup_stream(io.BytesIO(b""), "db.sql")
    assert names(backend, FileType.SNAPSHOT) == []

    summary = Archiver(repository).backup_stream(io.BytesIO(b""), "empty.sql", allow_empty=True)
    snapshot = repository.load_snapshot(summary.snapshot_id)
    (node,) = repository.load_tree(snapshot.tree).nodes
    assert (node.name, node.content, node.size) == (b"empty.sql", [], 0)


def test_stream_with_a_directory_in_its_name_gets_synthetic_directories(repository: Repository) -> None:
    data = random.randbytes(3_000_000)
    summary = Archiver(repository).backup_stream(io.BytesIO(data), "/dumps/nightly/db.sql", tags=["db"])
    snapshot = repository.load_snapshot(summary.snapshot_id)
    assert snapshot.paths == ["/dumps/nightly/db.sql"]
    assert snapshot.tags == ["db"]
    walked = {path: node for path, node in repository.walk(snapshot.tree)}
    assert sorted(walked) == [b"/dumps", b"/dumps/nightly", b"/dumps/nightly/db.sql"]
    assert walked[b"/dumps"].mode == walked[b"/dumps/nightly"].mode == 2147484141
    file_node = walked[b"/dumps/nightly/db.sql"]
    assert (file_node.mode, file_node.size) == (0o644, len(data))
    assert b"".join(repository.load_blob(BlobType.DATA, blob_id) for blob_id in file_node.content or []) == data


@pytest.mark.parametrize("filename", ["", "/", "a/../b", "a//b", "."])
def test_unsafe_stdin_filenames_are_refused(repository: Repository, filename: str) -> None:
    with pytest.raises(UsageError):
        Archiver(repository).backup_stream(io.BytesIO(b"data"), filename)


# --- the real command line --------------------------------------------------------------


@pytest.fixture
def cli_repository(repository_env: dict[str, str]) -> dict[str, str]:
    completed = run_lockstep(["repo", "init"], env=repository_env)
    assert completed.returncode == 0, completed.err
    return repository_env


def repository_files(environment: dict[str, str], file_type: FileType) -> list[str]:
    return names(LocalBackend(environment["LOCKSTEP_REPOSITORY"]), file_type)


def test_cli_failing_command_exits_15_and_leaves_no_packs(cli_repository: dict[str, str]) -> None:
    completed = run_lockstep(
        ["repo", "backup", "--stdin-from-command", "--stdin-filename", "db.sql", "--", *FAILING_PRODUCER],
        env=cli_repository,
    )
    assert completed.returncode == ExitCode.SOURCE, completed.err
    assert "exited with code 3" in completed.err
    assert "Traceback" not in completed.err
    for file_type in (FileType.PACK, FileType.INDEX, FileType.SNAPSHOT, FileType.LOCK):
        assert repository_files(cli_repository, file_type) == [], file_type


def test_cli_empty_stdin_exits_15_without_a_snapshot(cli_repository: dict[str, str]) -> None:
    completed = run_lockstep(["repo", "backup", "--stdin", "--stdin-filename", "db.sql"], env=cli_repository, input=b"")
    assert completed.returncode == ExitCode.SOURCE, completed.err
    assert "empty" in completed.err
    assert repository_files(cli_repository, FileType.SNAPSHOT) == []
    assert repository_files(cli_repository, FileType.PACK) == []


def test_cli_second_backup_of_the_same_stream_adds_almost_nothing(cli_repository: dict[str, str]) -> None:
    data = random.Random(20).randbytes(20_000_000)

    def backup_once() -> dict[str, int]:
        completed = run_lockstep(
            ["repo", "backup", "--stdin", "--stdin-filename", "db.sql", "--json"], env=cli_repository, input=data
        )
        assert completed.returncode == 0, completed.err
        summary: dict[str, int] = json.loads(completed.out.strip().splitlines()[-1])
        return summary

    first, second = backup_once(), backup_once()
    assert first["bytes_read"] == second["bytes_read"] == len(data)
    assert first["bytes_added"] > len(data)  # random data: stored raw, plus crypto overhead
    assert second["blobs_added"] == 1  # only the new tree (its node carries a new mtime)
    assert second["bytes_added"] < 4096
    assert len(repository_files(cli_repository, FileType.SNAPSHOT)) == 2


def compressible(seed: int, size: int) -> bytes:
    """Text that compresses like a dump: words drawn from a small vocabulary."""
    generator = random.Random(seed)
    words = [generator.randbytes(generator.randrange(2, 9)).hex().encode() for _ in range(3000)]
    text = b" ".join(generator.choice(words) for _ in range(size // 8))
    return text[:size]


def test_new_data_in_a_repository_holding_data_is_compressed_harder(
    repository: Repository, monkeypatch: pytest.MonkeyPatch, restic_binary: str
) -> None:
    """A first backup compresses at the default level; the next one's new chunks, an increment,
    at INCREMENT_COMPRESSION_LEVEL, up to its budget; restic reads both."""
    levels: list[int | None] = []
    prepare_blob = Repository.prepare_blob

    def recording(
        self: Repository, blob_type: BlobType, data: bytes, blob_id: bytes, level: int | None = None
    ) -> PreparedBlob | None:
        if blob_type is BlobType.DATA:
            levels.append(level)
        return prepare_blob(self, blob_type, data, blob_id, level)

    monkeypatch.setattr(Repository, "prepare_blob", recording)
    Archiver(repository).backup_stream(io.BytesIO(compressible(1, 6_000_000)), "first.sql")
    assert levels and set(levels) == {None}

    levels.clear()
    Archiver(repository).backup_stream(io.BytesIO(compressible(2, 6_000_000)), "second.sql")
    assert levels and set(levels) == {repository_module.INCREMENT_COMPRESSION_LEVEL}

    # A "second" backup that is all new pays the harder level on its allowance only.
    levels.clear()
    monkeypatch.setattr(archiver_module, "INCREMENT_ALLOWANCE", 2_000_000)
    Archiver(repository).backup_stream(io.BytesIO(compressible(3, 12_000_000)), "third.sql")
    assert levels[0] == repository_module.INCREMENT_COMPRESSION_LEVEL and levels[-1] is None

    location = str(repository.backend.location).removeprefix("local:")
    check = run_restic(location, ["check", "--read-data"])
    assert check.returncode == 0, check.err
