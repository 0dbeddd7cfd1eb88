"""Prune: what it deletes and repacks, that it stops before damage, and that a crash at any
step leaves a repository that lockstep and restic both read."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockstep.errors import IntegrityError, UsageError
from lockstep.repository.blobs import BlobType
from lockstep.repository.gojson import MODE_DIR
from lockstep.repository.index import parse_index_document
from lockstep.repository.pack import PackWriter, expected_pack_size
from lockstep.repository.pruner import (
    PruneOptions,
    UnusedLimit,
    execute_prune,
    parse_size,
    plan_prune,
    prune,
)
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node, Tree
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, require_binary, run_restic

CHUNK = 256 * 1024
MEBIBYTE = 1024 * 1024


# --- building repositories ------------------------------------------------------------------


def new_repository(path: Path) -> Repository:
    return Repository.init(LocalBackend(str(path)), TEST_PASSWORD)


def open_repository(path: Path) -> Repository:
    repository = Repository.open(LocalBackend(str(path)), TEST_PASSWORD)
    repository.load_index()
    return repository


def _save_tree(repository: Repository, files: dict[str, bytes]) -> bytes:
    nodes = []
    directories: dict[str, dict[str, bytes]] = {}
    for path, content in files.items():
        head, _, rest = path.partition("/")
        if rest:
            directories.setdefault(head, {})[rest] = content
            continue
        blob_ids = [
            repository.save_blob(BlobType.DATA, content[at : at + CHUNK]) for at in range(0, len(content), CHUNK)
        ]
        nodes.append(Node(name=head.encode(), type="file", mode=0o644, size=len(content), content=blob_ids))
    for name, children in directories.items():
        subtree = _save_tree(repository, children)
        nodes.append(Node(name=name.encode(), type="dir", mode=MODE_DIR | 0o755, subtree=subtree))
    return repository.save_tree(Tree(nodes))


def add_snapshot(
    repository: Repository, files: dict[str, bytes], time: str = "2024-01-01T00:00:00Z", flush: bool = True
) -> Snapshot:
    """A snapshot of `files` ("dir/name" → content); flush=False leaves its blobs in open packs."""
    tree_id = _save_tree(repository, files)
    if flush:
        repository.flush()
    snapshot = Snapshot(time=time, tree=tree_id, paths=["/data"], hostname="host")
    if flush:
        repository.save_snapshot(snapshot)
    return snapshot


def read_files(repository: Repository, snapshot: Snapshot) -> dict[str, bytes]:
    """Every file of a snapshot, read blob by blob (each blob verified on the way)."""
    files = {}
    for path, node in repository.walk(snapshot.tree):
        if node.type == "file":
            content = b"".join(repository.load_blob(BlobType.DATA, blob_id) for blob_id in node.content or [])
            files[path.decode().lstrip("/")] = content
    return files


def forget_snapshot(repository: Repository, snapshot: Snapshot) -> None:
    repository.backend.remove(FileType.SNAPSHOT, snapshot.id)


def listing(path: Path) -> dict[str, int]:
    """Every file under the repository (locks aside) with its size."""
    return {
        str(file.relative_to(path)): file.stat().st_size
        for file in sorted(path.rglob("*"))
        if file.is_file() and not str(file.relative_to(path)).startswith("locks")
    }


def names(path: Path, folder: str) -> set[str]:
    return {file.name for file in (path / folder).rglob("*") if file.is_file()}


def index_blob_counts(path: Path) -> dict[bytes, int]:
    """How many index entries each blob ID has across all index files."""
    repository = Repository.open(LocalBackend(str(path)), TEST_PASSWORD)
    counts: dict[bytes, int] = {}
    try:
        for name, _ in repository.backend.list(FileType.INDEX):
            for _, blobs in parse_index_document(repository.load_unpacked(FileType.INDEX, name)):
                for blob in blobs:
                    counts[blob.blob_id] = counts.get(blob.blob_id, 0) + 1
    finally:
        repository.close()
    return counts


def assert_consistent(path: Path, expected: dict[str, dict[str, bytes]]) -> None:
    """Every index entry's pack exists with the size the index implies, and every snapshot that
    remains reads back exactly (expected: snapshot ID → files)."""
    repository = open_repository(path)
    try:
        stored = dict(repository.backend.list(FileType.PACK))
        per_pack: dict[str, int] = {}
        for name, _ in repository.backend.list(FileType.INDEX):
            for pack_id, blobs in parse_index_document(repository.load_unpacked(FileType.INDEX, name)):
                per_pack[pack_id.hex()] = expected_pack_size(blobs)
        for pack_name, size in per_pack.items():
            assert stored.get(pack_name) == size, f"index lists pack {pack_name[:8]} that is missing or differs"
        remaining = {snapshot.id: snapshot for snapshot in repository.list_snapshots()}
        assert set(remaining) == set(expected)
        for snapshot_id, files in expected.items():
            assert read_files(repository, remaining[snapshot_id]) == files
    finally:
        repository.close()


def restic_check(path: Path, read_data: bool = True) -> None:
    require_binary("restic", "apt-get install restic")
    completed = run_restic(str(path), ["check", *(["--read-data"] if read_data else [])])
    assert completed.returncode == 0, completed.out + completed.err
    assert "no errors were found" in completed.out


@pytest.fixture
def two_snapshots(tmp_path: Path) -> Iterator[tuple[Path, Snapshot, Snapshot, dict[str, bytes]]]:
    """`old` with unique data in its own packs, `new` with its own data plus a shared file."""
    path = tmp_path / "repository"
    repository = new_repository(path)
    shared = os.urandom(100_000)
    old = add_snapshot(repository, {"old.bin": os.urandom(3 * MEBIBYTE), "shared.bin": shared}, "2024-01-01T00:00:00Z")
    new_files = {"new.bin": os.urandom(MEBIBYTE), "deep/er/shared.bin": shared, "empty": b""}
    new = add_snapshot(repository, new_files, "2024-01-02T00:00:00Z")
    repository.close()
    yield path, old, new, new_files


# --- options --------------------------------------------------------------------------------


def test_sizes_and_unused_limits_parse_like_restic() -> None:
    assert parse_size("500") == 500
    assert parse_size("64k") == 64 * 1024
    assert parse_size("10M") == 10 * MEBIBYTE
    assert parse_size("2g") == 2 * 1024**3
    assert parse_size("7b") == 7
    assert UnusedLimit.parse("5%").bytes_allowed(95) == 5  # 5 % of the repository after pruning
    assert UnusedLimit.parse("0%").bytes_allowed(10**9) == 0
    assert UnusedLimit.parse("1M").bytes_allowed(1) == MEBIBYTE
    assert UnusedLimit.parse("unlimited").bytes_allowed(1) is None
    for invalid in ("", "100%", "-1%", "abc%", "12x", "-5"):
        with pytest.raises(UsageError):
            UnusedLimit.parse(invalid)


# --- what prune does ------------------------------------------------------------------------


def test_a_repository_with_nothing_unused_is_left_untouched(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, *_ = two_snapshots
    before = listing(path)
    repository = open_repository(path)
    report = prune(repository, PruneOptions())
    repository.close()
    assert listing(path) == before
    assert report.packs_deleted == report.packs_repacked == report.bytes_freed == 0
    assert report.stats.unused_blobs == 0


def test_forgetting_a_snapshot_with_unique_data_frees_its_space(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, old, new, new_files = two_snapshots
    before = sum(listing(path)[name] for name in listing(path) if name.startswith("data/"))
    repository = open_repository(path)
    forget_snapshot(repository, old)
    report = prune(repository, PruneOptions())
    repository.close()
    after = sum(listing(path)[name] for name in listing(path) if name.startswith("data/"))
    assert before - after == report.bytes_freed
    assert report.bytes_freed > 3 * MEBIBYTE  # old.bin's blobs are gone
    assert report.bytes_remaining == after
    assert report.packs_deleted >= 2  # old's data pack and its tree pack
    assert_consistent(path, {new.id: new_files})
    restic_check(path)


def test_a_partly_used_data_pack_is_repacked_only_above_max_unused(tmp_path: Path) -> None:
    """One pack holds 768 KiB used and 768 KiB unused: with --max-unused unlimited it stays;
    with the default 5 % it is rewritten without the unused blobs. (Packs under 1/25 of the
    pack size are repacked whatever the limit, so these are large enough not to be.)"""
    path = tmp_path / "repository"
    repository = new_repository(path)
    keep_files = {"keep.bin": os.urandom(3 * CHUNK)}
    gone = add_snapshot(repository, {"gone.bin": os.urandom(3 * CHUNK)}, flush=False)
    kept = add_snapshot(repository, keep_files, flush=False)
    repository.flush()
    repository.save_snapshot(kept)
    gone_blob = read_tree_blob_ids(repository, gone)
    repository.close()

    repository = open_repository(path)
    data_packs_before = {location.pack_id for _, location in repository.index.blobs(BlobType.DATA)}
    assert len(data_packs_before) == 1
    prune(repository, PruneOptions(max_unused=UnusedLimit.parse("unlimited")))
    repository.close()
    assert all(index_blob_counts(path).get(blob_id) == 1 for blob_id in gone_blob)  # still there, unused
    assert names(path, "data") >= {pack_id.hex() for pack_id in data_packs_before}

    repository = open_repository(path)
    report = prune(repository, PruneOptions())
    repository.close()
    assert report.packs_repacked >= 1
    assert report.stats.repack_removed_bytes >= 3 * CHUNK
    assert not any(blob_id in index_blob_counts(path) for blob_id in gone_blob)
    assert not names(path, "data") & {pack_id.hex() for pack_id in data_packs_before}
    assert_consistent(path, {kept.id: keep_files})
    restic_check(path)


def read_tree_blob_ids(repository: Repository, snapshot: Snapshot) -> list[bytes]:
    """The data blob IDs of a snapshot that is not saved (its tree is in the open packs' index)."""
    return [blob_id for _, node in repository.walk(snapshot.tree) for blob_id in node.content or []]


def test_duplicate_blobs_keep_one_copy(tmp_path: Path) -> None:
    """A second writer that did not know the index stored the same blob again in its own pack;
    prune keeps exactly one copy of each blob and deletes the pack of copies."""
    path = tmp_path / "repository"
    repository = new_repository(path)
    files = {"data.bin": os.urandom(2 * CHUNK)}
    first = add_snapshot(repository, files)
    repository.close()
    unaware = Repository.open(LocalBackend(str(path)), TEST_PASSWORD)  # index not loaded
    second = add_snapshot(unaware, files, "2024-01-02T00:00:00Z")
    unaware.close()
    assert max(index_blob_counts(path).values()) == 2

    repository = open_repository(path)
    report = prune(repository, PruneOptions())
    repository.close()
    assert report.stats.duplicate_blobs == 3  # two data chunks and the root tree
    assert set(index_blob_counts(path).values()) == {1}
    assert report.packs_deleted == 2
    assert_consistent(path, {first.id: files, second.id: files})
    restic_check(path)


def test_a_pack_no_index_lists_is_deleted_without_touching_the_index(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, *_ = two_snapshots
    repository = open_repository(path)
    writer = PackWriter()
    sealed = repository.prepare_blob(BlobType.DATA, b"left behind by an interrupted backup")
    assert sealed is not None
    writer.add(BlobType.DATA, sealed.blob_id, sealed.sealed, sealed.uncompressed_length)
    data, pack_id, _ = writer.finish(repository.key)
    repository.backend.save(FileType.PACK, pack_id.hex(), data)
    index_before = names(path, "index")
    report = prune(repository, PruneOptions())
    repository.close()
    assert report.stats.packs_unreferenced == 1
    assert report.bytes_freed == len(data)
    assert pack_id.hex() not in names(path, "data")
    assert names(path, "index") == index_before
    restic_check(path, read_data=False)


def test_a_missing_needed_pack_stops_prune_before_it_deletes_anything(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, old, new, _ = two_snapshots
    repository = open_repository(path)
    forget_snapshot(repository, old)
    needed = repository.lookup_blob(BlobType.TREE, new.tree).pack_id.hex()
    repository.backend.remove(FileType.PACK, needed)
    before = listing(path)
    with pytest.raises(IntegrityError):
        prune(repository, PruneOptions())
    repository.close()
    assert listing(path) == before


def test_a_missing_unneeded_pack_is_dropped_from_the_index(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, old, new, new_files = two_snapshots
    repository = open_repository(path)
    forget_snapshot(repository, old)
    unneeded = repository.lookup_blob(BlobType.TREE, old.tree).pack_id
    repository.backend.remove(FileType.PACK, unneeded.hex())
    report = prune(repository, PruneOptions())
    repository.close()
    assert report.stats.packs_missing_dropped == 1
    assert_consistent(path, {new.id: new_files})
    restic_check(path)


def test_a_snapshot_whose_tree_is_not_indexed_stops_prune(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, old, *_ = two_snapshots
    repository = open_repository(path)
    forget_snapshot(repository, old)
    repository.save_snapshot(Snapshot(time="2024-02-01T00:00:00Z", tree=b"\x07" * 32, paths=["/x"]))
    before = listing(path)
    with pytest.raises(IntegrityError, match="not in the index"):
        prune(repository, PruneOptions())
    repository.close()
    assert listing(path) == before


def test_a_damaged_blob_that_must_be_copied_stops_prune_with_the_old_index_intact(tmp_path: Path) -> None:
    path = tmp_path / "repository"
    repository = new_repository(path)
    gone = add_snapshot(repository, {"gone.bin": os.urandom(CHUNK)}, flush=False)
    kept = add_snapshot(repository, {"keep.bin": os.urandom(CHUNK)}, flush=False)
    repository.flush()
    repository.save_snapshot(kept)
    assert gone.tree
    location = repository.lookup_blob(BlobType.DATA, read_tree_blob_ids(repository, kept)[0])
    repository.close()
    pack_file = path / "data" / location.pack_id.hex()[:2] / location.pack_id.hex()
    damaged = bytearray(pack_file.read_bytes())
    damaged[location.offset + 40] ^= 0xFF
    pack_file.chmod(0o644)
    pack_file.write_bytes(bytes(damaged))
    before = listing(path)
    repository = open_repository(path)
    with pytest.raises(IntegrityError, match="damaged"):
        prune(repository, PruneOptions())
    repository.close()
    assert listing(path) == before


def test_dry_run_reports_the_plan_and_changes_nothing(
    two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]],
) -> None:
    path, old, *_ = two_snapshots
    repository = open_repository(path)
    forget_snapshot(repository, old)
    before = listing(path)
    report = prune(repository, PruneOptions(dry_run=True))
    repository.close()
    assert listing(path) == before
    assert report.dry_run and report.packs_deleted >= 2 and report.bytes_freed > 3 * MEBIBYTE


def test_ignored_snapshots_count_as_forgotten(two_snapshots: tuple[Path, Snapshot, Snapshot, dict[str, bytes]]) -> None:
    """forget --prune --dry-run plans as if the snapshots it would forget were gone."""
    path, old, *_ = two_snapshots
    repository = open_repository(path)
    plan = plan_prune(repository, PruneOptions(dry_run=True), ignore_snapshots=[old.id])
    repository.close()
    assert plan.stats.snapshots == 1 and plan.remove_packs


# --- crash safety ---------------------------------------------------------------------------


class RecordingBackend:
    """Wraps a backend: records every change, and after `crash_after` changes acts like a
    process that died (that change and every later one fail, nothing more reaches storage)."""

    def __init__(self, backend: Any, crash_after: int | None = None) -> None:
        self.backend = backend
        self.crash_after = crash_after
        self.changes: list[tuple[str, FileType, str]] = []
        self.pack_reads: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def _change(self, kind: str, file_type: FileType, name: str) -> None:
        if self.crash_after is not None and len(self.changes) >= self.crash_after:
            raise SimulatedCrash(f"crash before {kind} {file_type.value}/{name[:8]}")
        self.changes.append((kind, file_type, name))

    def save(self, file_type: FileType, name: str, data: bytes) -> None:
        self._change("save", file_type, name)
        self.backend.save(file_type, name, data)

    def remove(self, file_type: FileType, name: str) -> None:
        self._change("remove", file_type, name)
        self.backend.remove(file_type, name)

    def load(self, file_type: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = self.backend.load(file_type, name, offset, length)
        if file_type is FileType.PACK:
            self.pack_reads.append((name, len(data)))
        return data


class SimulatedCrash(Exception):
    pass


def messy_repository(path: Path) -> dict[str, dict[str, bytes]]:
    """Old snapshots forgotten, a kept one sharing packs with them, and an orphan pack: prune
    has every kind of work to do (delete, repack data and trees, drop an orphan)."""
    repository = new_repository(path)
    repository.pack_size = 2 * MEBIBYTE
    kept_files = {"app/kept.bin": os.urandom(3 * CHUNK), "app/small.txt": b"small\n"}
    first = add_snapshot(repository, {"old/a.bin": os.urandom(MEBIBYTE)}, "2024-01-01T00:00:00Z")
    add_snapshot(repository, {"old/b.bin": os.urandom(5 * CHUNK)}, flush=False)
    kept = add_snapshot(repository, kept_files, flush=False)
    repository.flush()
    repository.save_snapshot(kept)
    forget_snapshot(repository, first)
    writer = PackWriter()
    sealed = repository.prepare_blob(BlobType.DATA, os.urandom(1000))
    assert sealed is not None
    writer.add(BlobType.DATA, sealed.blob_id, sealed.sealed, sealed.uncompressed_length)
    data, pack_id, _ = writer.finish(repository.key)
    repository.backend.save(FileType.PACK, pack_id.hex(), data)
    repository.close()
    return {kept.id: {name: content for name, content in kept_files.items()}}


def test_prune_writes_in_the_crash_safe_order(tmp_path: Path) -> None:
    """Orphans first; new packs, then their index, then the rewritten index; then old index
    files go; only then the obsolete packs. Each repacked pack is read once, in one range."""
    path = tmp_path / "repository"
    expected = messy_repository(path)
    repository = open_repository(path)
    recorder = RecordingBackend(repository.backend)
    repository.backend = recorder  # type: ignore[assignment]
    old_index = names(path, "index")
    plan = plan_prune(repository, PruneOptions())
    recorder.pack_reads.clear()  # planning read trees; count only what repacking reads
    report = execute_prune(repository, plan)
    repository.close()
    assert report.packs_repacked >= 2 and report.stats.packs_unreferenced == 1
    kinds = [(kind, file_type) for kind, file_type, _ in recorder.changes]
    assert kinds[0] == ("remove", FileType.PACK)  # the orphan
    first_index_removal = kinds.index(("remove", FileType.INDEX))
    last_save = max(position for position, (kind, _) in enumerate(kinds) if kind == "save")
    assert last_save < first_index_removal
    first_obsolete_pack_removal = kinds.index(("remove", FileType.PACK), 1)
    index_removals = [position for position, change in enumerate(kinds) if change == ("remove", FileType.INDEX)]
    last_index_removal = max(index_removals)
    assert last_index_removal < first_obsolete_pack_removal
    removed_index = {
        name for kind, file_type, name in recorder.changes if (kind, file_type) == kinds[first_index_removal]
    }
    assert removed_index == old_index
    read_packs = [name for name, _ in recorder.pack_reads]
    assert len(read_packs) == len(set(read_packs)) == report.packs_repacked
    assert_consistent(path, expected)
    restic_check(path)


def count_changes(path: Path) -> int:
    scratch = path.parent / "count"
    shutil.copytree(path, scratch)
    repository = open_repository(scratch)
    recorder = RecordingBackend(repository.backend)
    repository.backend = recorder  # type: ignore[assignment]
    prune(repository, PruneOptions())
    repository.close()
    return len(recorder.changes)


def test_a_crash_at_any_step_leaves_a_repository_restic_and_lockstep_read(tmp_path: Path) -> None:
    """Stop prune before each of its changes in turn (as kill -9 would): every time, the index
    names only packs that exist, the kept snapshot reads back, restic check passes, and a
    second prune finishes the job."""
    pristine = tmp_path / "pristine"
    expected = messy_repository(pristine)
    total = count_changes(pristine)
    assert total >= 8
    for crash_after in range(total):
        path = tmp_path / f"crash-{crash_after}"
        shutil.copytree(pristine, path)
        repository = open_repository(path)
        repository.backend = RecordingBackend(repository.backend, crash_after)  # type: ignore[assignment]
        with pytest.raises(SimulatedCrash):
            prune(repository, PruneOptions())
        repository.close()
        assert_consistent(path, expected)
        restic_check(path, read_data=False)
        repository = open_repository(path)
        prune(repository, PruneOptions())
        repository.close()
        assert_consistent(path, expected)
        shutil.rmtree(path)
