"""Rebuilding the index from pack headers: what is read, what is written, in which order, and
that a crash at any step leaves every pack that was indexed still indexed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lockstep.errors import IntegrityError
from lockstep.repository.blobs import PackedBlob
from lockstep.repository.index import index_document, parse_index_document
from lockstep.repository.pack import EAGER_TAIL
from lockstep.repository.repair import repair_index
from lockstep.repository.repository import REPAIR_INDEX_HINT, Repository
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD
from tests.repository.test_pruner import (
    CHUNK,
    RecordingBackend,
    SimulatedCrash,
    add_snapshot,
    new_repository,
    open_repository,
    read_files,
    restic_check,
)


def flip_bit(path: Path, offset: int = 40) -> None:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def unopened(path: Path) -> Repository:
    """Opened without loading the index, as the repair command opens it."""
    return Repository.open(LocalBackend(str(path)), TEST_PASSWORD)


def index_entries(path: Path) -> dict[bytes, set[PackedBlob]]:
    """Pack → blobs, over every index file that still decodes."""
    repository = unopened(path)
    packs: dict[bytes, set[PackedBlob]] = {}
    try:
        for name, _ in repository.backend.list(FileType.INDEX):
            try:
                document = repository.load_unpacked(FileType.INDEX, name)
            except IntegrityError:
                continue
            for pack_id, blobs in parse_index_document(document):
                packs.setdefault(pack_id, set()).update(blobs)
    finally:
        repository.close()
    return packs


def three_backups(path: Path) -> dict[str, dict[str, bytes]]:
    """Three snapshots, each flushed on its own (three index files, several packs each)."""
    repository = new_repository(path)
    repository.pack_size = 512 * 1024
    expected = {}
    for number in range(3):
        files = {f"dir{number}/data.bin": os.urandom(5 * CHUNK), "common.txt": b"the same in every snapshot\n"}
        snapshot = add_snapshot(repository, files, f"2024-01-0{number + 1}T00:00:00Z")
        expected[snapshot.id] = files
    repository.close()
    return expected


def assert_snapshots_read_back(path: Path, expected: dict[str, dict[str, bytes]]) -> None:
    repository = open_repository(path)
    try:
        snapshots = {snapshot.id: snapshot for snapshot in repository.list_snapshots()}
        assert set(snapshots) == set(expected)
        for snapshot_id, files in expected.items():
            assert read_files(repository, snapshots[snapshot_id]) == files
    finally:
        repository.close()


def index_names(path: Path) -> list[str]:
    return sorted(file.name for file in (path / "index").iterdir())


def test_loading_a_damaged_index_names_the_repair_command(tmp_path: Path) -> None:
    path = tmp_path / "repository"
    three_backups(path)
    flip_bit(path / "index" / index_names(path)[1])
    repository = unopened(path)
    with pytest.raises(IntegrityError) as raised:
        repository.load_index()
    assert raised.value.hint == REPAIR_INDEX_HINT and "lockstep repo repair index" in str(raised.value)
    repository.close()


def test_an_index_file_that_is_not_an_index_is_an_integrity_error(tmp_path: Path) -> None:
    path = tmp_path / "repository"
    three_backups(path)
    repository = unopened(path)
    repository.save_unpacked(FileType.INDEX, {"packs": [{"id": "00" * 32, "blobs": [{"type": "data"}]}]})
    with pytest.raises(IntegrityError) as raised:
        repository.load_index()
    assert raised.value.hint == REPAIR_INDEX_HINT
    report = repair_index(repository)
    assert len(report.damaged_index_files) == 1 and report.ok
    repository.close()


def test_new_index_first_then_damaged_files_then_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "repository"
    expected = three_backups(path)
    before = index_names(path)
    damaged = before[2]
    flip_bit(path / "index" / damaged)
    repository = unopened(path)
    recorder = RecordingBackend(repository.backend)
    repository.backend = recorder  # type: ignore[assignment]
    report = repair_index(repository)
    repository.close()

    assert recorder.pack_reads and all(length <= EAGER_TAIL for _, length in recorder.pack_reads)
    read_packs = {name for name, _ in recorder.pack_reads}
    assert read_packs == set(report.added_packs), "only the packs the damaged file listed are read"
    assert [(kind, file_type) for kind, file_type, _ in recorder.changes] == [
        ("save", FileType.INDEX),
        ("remove", FileType.INDEX),
        ("remove", FileType.INDEX),
        ("remove", FileType.INDEX),
    ]
    assert recorder.changes[1][2] == damaged
    assert index_names(path) == report.index_files_written
    assert report.damaged_index_files.keys() == {damaged} and report.index_files_loaded == 2
    assert report.packs == len(list((path / "data").rglob("*"))) - len(list((path / "data").iterdir()))
    assert_snapshots_read_back(path, expected)
    restic_check(path)


def test_a_crash_at_any_step_keeps_every_indexed_pack_indexed(tmp_path: Path) -> None:
    """Stop the repair before each of its changes in turn (as kill -9 would): every pack a
    readable index listed before is still listed, identically, and a second repair finishes."""
    pristine = tmp_path / "pristine"
    expected = three_backups(pristine)
    flip_bit(pristine / "index" / index_names(pristine)[0])
    (pristine / "index" / index_names(pristine)[1]).unlink()
    indexed_before = index_entries(pristine)
    total = 3  # one new index file, then the two old ones deleted, the damaged one first
    for crash_after in range(total + 1):
        path = tmp_path / f"crash-{crash_after}"
        shutil.copytree(pristine, path)
        repository = unopened(path)
        repository.backend = RecordingBackend(repository.backend, crash_after)  # type: ignore[assignment]
        if crash_after < total:
            with pytest.raises(SimulatedCrash):
                repair_index(repository)
        else:
            repair_index(repository)  # no crash: the control case
        repository.close()
        indexed_now = index_entries(path)
        for pack_id, blobs in indexed_before.items():
            assert indexed_now.get(pack_id) == blobs, f"crash after {crash_after}: pack {pack_id.hex()[:8]} lost"
        repository = unopened(path)
        report = repair_index(repository)
        repository.close()
        assert report.ok and len(index_names(path)) == 1
        assert_snapshots_read_back(path, expected)
    restic_check(path)


def test_a_header_longer_than_the_first_read_takes_a_second_read(tmp_path: Path) -> None:
    """A pack of many small blobs has a header longer than restic's eager tail read."""
    path = tmp_path / "repository"
    repository = new_repository(path)
    files = {f"small-{number}.txt": os.urandom(200) for number in range(60)}
    expected = {add_snapshot(repository, files).id: files}
    repository.close()
    original = index_entries(path)
    assert any(len(blobs) > 15 for blobs in original.values())
    for name in index_names(path):
        (path / "index" / name).unlink()

    repository = unopened(path)
    recorder = RecordingBackend(repository.backend)
    repository.backend = recorder  # type: ignore[assignment]
    report = repair_index(repository)
    repository.close()
    assert any(length > EAGER_TAIL for _, length in recorder.pack_reads)
    assert index_entries(path) == original, "the header must give back exactly what the writer indexed"
    assert report.packs_read == len(original) and report.blobs_indexed == sum(map(len, original.values()))
    assert_snapshots_read_back(path, expected)
    restic_check(path)


def test_missing_packs_are_dropped_and_wrongly_sized_packs_are_read_again(tmp_path: Path) -> None:
    path = tmp_path / "repository"
    repository = new_repository(path)
    repository.pack_size = 256 * 1024
    add_snapshot(repository, {"a.bin": os.urandom(4 * CHUNK)})
    repository.close()
    entries = index_entries(path)
    (gone, wrong, truncated, *_) = sorted(entries)
    (path / "data" / gone.hex()[:2] / gone.hex()).unlink()
    truncated_file = path / "data" / truncated.hex()[:2] / truncated.hex()
    truncated_file.chmod(0o600)
    truncated_file.write_bytes(truncated_file.read_bytes()[:-100])
    # An index (readable, yet wrong) that gives one blob of `wrong` a different length.
    repository = unopened(path)
    listed = []
    for pack_id, blobs in sorted(entries.items()):
        ordered = sorted(blobs, key=lambda blob: blob.offset)
        if pack_id == wrong:
            ordered[0] = ordered[0]._replace(length=ordered[0].length + 1)
        listed.append((pack_id, ordered))
    for name in index_names(path):
        (path / "index" / name).unlink()
    repository.save_unpacked(FileType.INDEX, index_document(listed))

    report = repair_index(repository)
    repository.close()
    assert report.missing_packs == [gone.hex()]
    assert sorted(report.reindexed_packs) == sorted([wrong.hex(), truncated.hex()])
    assert list(report.unreadable_packs) == [truncated.hex()] and not report.ok
    assert truncated_file.exists(), "an unreadable pack is left in place"
    rebuilt = index_entries(path)
    assert rebuilt[wrong] == entries[wrong], "the header's lengths replace the wrong ones"
    assert gone not in rebuilt and truncated not in rebuilt
    assert set(rebuilt) == set(entries) - {gone, truncated}
