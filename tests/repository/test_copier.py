"""restic's rule for "this snapshot was copied already" (cmd_copy.go, similarSnapshots), and how a
copy reads the source's packs."""

from __future__ import annotations

import io
import random
from collections.abc import Generator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from lockstep.repository import copier as copier_module
from lockstep.repository.archiver import Archiver
from lockstep.repository.blobs import BlobLocation, BlobType
from lockstep.repository.copier import CopiedSnapshot, Copier, find_copy, index_by_original, similar_snapshots
from lockstep.repository.pack_runs import plan_runs
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD

BASE = Snapshot(
    time="2026-11-24T01:02:03.123456789+01:00",
    tree=bytes(32),
    paths=["/srv/app", "/etc/app"],
    hostname="web1",
    username="root",
    uid=0,
    gid=0,
    excludes=["*.tmp", "cache"],
    tags=["nightly", "shop"],
    id="aa" * 32,
)


def test_parent_original_and_order_of_paths_and_tags_do_not_count() -> None:
    other = replace(BASE, parent=b"\x01" * 32, original=b"\x02" * 32, paths=BASE.paths[::-1], tags=BASE.tags[::-1])
    assert similar_snapshots(BASE, other)
    # The same instant written in another zone is the same time (Go's Time.Equal).
    assert similar_snapshots(BASE, replace(BASE, time="2026-11-24T00:02:03.123456789Z"))


def test_any_other_field_makes_a_different_snapshot() -> None:
    for change in (
        {"time": "2026-11-24T01:02:03.123456788+01:00"},
        {"tree": b"\x01" * 32},
        {"hostname": "web2"},
        {"username": "app"},
        {"uid": 1000},
        {"gid": 1000},
        {"paths": ["/srv/app"]},
        {"excludes": BASE.excludes[::-1]},  # restic compares excludes in order
        {"tags": ["nightly"]},
        {"tags": ["nightly", "other"]},
    ):
        assert not similar_snapshots(BASE, replace(BASE, **change)), change


def test_a_copy_is_found_by_the_original_it_records_or_by_its_own_id() -> None:
    copy = replace(BASE, original=bytes.fromhex(BASE.id), id="bb" * 32)
    assert find_copy(BASE, index_by_original([copy])) is copy
    # A copy of a copy records the first original: copying the middle one again finds it too.
    middle = replace(BASE, original=bytes.fromhex("cc" * 32), id="dd" * 32)
    onward = replace(middle, id="ee" * 32)
    assert find_copy(middle, index_by_original([onward])) is onward
    # The destination holding the very snapshot (same ID) counts as well.
    assert find_copy(BASE, index_by_original([BASE])) is BASE
    assert find_copy(BASE, index_by_original([replace(copy, hostname="other")])) is None


class CountingBackend(LocalBackend):
    """A real local backend that counts the ranged reads of packs, whole or streamed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pack_reads = 0

    def load(self, file_type: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if file_type is FileType.PACK:
            self.pack_reads += 1
        return super().load(file_type, name, offset, length)

    def load_pieces(
        self, file_type: FileType, name: str, offset: int, lengths: Sequence[int]
    ) -> Generator[bytes | memoryview, None, None]:
        if file_type is FileType.PACK:
            self.pack_reads += 1
        return super().load_pieces(file_type, name, offset, lengths)


def test_a_copy_reads_the_data_blobs_of_a_pack_with_one_request(tmp_path: Path) -> None:
    """restic's copy reads a pack's wanted blobs together; one GET per blob is slow on S3."""
    backend = CountingBackend(tmp_path / "source")
    source = Repository.init(backend, TEST_PASSWORD)
    data = random.Random(7).randbytes(12_000_000)
    summary = Archiver(source).backup_stream(io.BytesIO(data), "db.sql")
    destination = Repository.init(LocalBackend(tmp_path / "destination"), TEST_PASSWORD)
    source.load_index()
    data_blobs = dict(source.index.blobs(BlobType.DATA))
    data_packs = {location.pack_id for location in data_blobs.values()}
    assert len(data_blobs) >= 6 > len(data_packs)
    backend.pack_reads = 0

    copied = Copier(source, destination).copy_snapshot(source.load_snapshot(summary.snapshot_id))

    assert backend.pack_reads == len(data_packs) + 1  # and one for the single tree
    assert copied.blobs_added == len(data_blobs) + 1
    restored = b"".join(destination.load_blob(BlobType.DATA, blob_id) for blob_id in _content(destination, copied))
    assert restored == data
    source.close()
    destination.close()


def test_a_copy_of_many_files_plans_its_reads_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs are planned every BLOBS_PER_PLAN missing blobs during the walk, not once at its end."""
    monkeypatch.setattr(copier_module, "BLOBS_PER_PLAN", 3)
    monkeypatch.setattr(copier_module, "TREE_BATCH", 2)
    tree = tmp_path / "tree"
    contents: dict[str, bytes] = {}
    for number in range(12):
        directory = tree / f"d{number % 4}" / f"e{number % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        contents[f"d{number % 4}/e{number % 3}/f{number}"] = random.Random(number).randbytes(20_000 + number)
        (directory / f"f{number}").write_bytes(contents[f"d{number % 4}/e{number % 3}/f{number}"])
    source = Repository.init(LocalBackend(tmp_path / "source"), TEST_PASSWORD)
    summary = Archiver(source).backup_paths([str(tree)])
    destination = Repository.init(LocalBackend(tmp_path / "destination"), TEST_PASSWORD)
    source.load_index()

    copied = Copier(source, destination).copy_snapshot(source.load_snapshot(summary.snapshot_id))

    assert copied.blobs_added == len(list(source.index.blobs(BlobType.DATA))) + len(
        list(source.index.blobs(BlobType.TREE))
    )
    found = {
        path.decode()[len(str(tree)) + 1 :]: node
        for path, node in destination.walk(destination.load_snapshot(copied.destination_id).tree)
        if node.type == "file"
    }
    assert {
        name: b"".join(destination.load_blob(BlobType.DATA, blob) for blob in found[name].content or ())
        for name in found
    } == contents
    source.close()
    destination.close()


def _content(repository: Repository, copied: CopiedSnapshot) -> list[bytes]:
    root = repository.load_tree(repository.load_snapshot(copied.destination_id).tree)
    (node,) = root.nodes
    return list(node.content or ())


def _located(pack: int, offset: int, length: int) -> tuple[BlobType, bytes, BlobLocation]:
    return BlobType.DATA, bytes([pack, offset % 256]) * 16, BlobLocation(bytes([pack]) * 32, offset, length, 0)


def test_runs_are_split_by_pack_by_gaps_and_by_size() -> None:
    blobs = [
        _located(2, 0, 100),
        _located(1, 500, 100),  # a gap of 300 from the blob before it: read through
        _located(1, 100, 100),
        _located(1, 5000, 100),  # a gap over max_gap: a new run
        _located(1, 5100, 900),  # would make the run 1000 bytes long: a new run
    ]
    runs = plan_runs(blobs, max_gap=300, max_bytes=999)
    assert [(run.pack_id[0], run.start, run.end) for run in runs] == [
        (1, 100, 600),
        (1, 5000, 5100),
        (1, 5100, 6000),
        (2, 0, 100),
    ]
