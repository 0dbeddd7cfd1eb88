"""The checker against real repositories written by the real CLI, then damaged on disk.

Each test builds a repository with `lockstep repo init` and two backups (a directory tree and
standard input), breaks one thing the way a disk, a bad copy or a bug would, and asserts that
the check names what broke, and nothing that did not.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from lockstep.actions.repo.check import run_check
from lockstep.actions.repo.session import RepositoryAccess
from lockstep.errors import UsageError
from lockstep.repository.blobs import BlobLocation, BlobType
from lockstep.repository.checker import PackSelection
from lockstep.repository.gojson import MODE_DIR, format_time_ns
from lockstep.repository.index import index_document
from lockstep.repository.pack import PackWriter
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tree import Node, Tree
from lockstep.storage.base import FileType, relative_path
from lockstep.storage.location import open_backend
from tests.conftest import TEST_PASSWORD, run_lockstep

STDIN_DATA = b"CREATE TABLE shop (id int);\n" * 5000


# --- helpers shared with tests/cli/test_check_cli.py ------------------------------------------


@dataclass(frozen=True)
class BuiltRepository:
    """A repository written by the CLI: a backup of `awkward_tree`, then one of standard input."""

    env: dict[str, str]
    source: Path
    tree_snapshot: str
    stdin_snapshot: str

    @property
    def location(self) -> str:
        return self.env["LOCKSTEP_REPOSITORY"]

    @property
    def root(self) -> Path:
        """The repository directory (local repositories only)."""
        return Path(self.location)

    def file(self, file_type: FileType, name: str) -> Path:
        return self.root / relative_path(file_type, name)


def backup_json(arguments: list[str], env: dict[str, str], input: bytes | None = None) -> str:
    """Run `lockstep repo backup --json …` and return the new snapshot's ID."""
    completed = run_lockstep(["repo", "backup", "--json", *arguments], env=env, input=input)
    assert completed.returncode == 0, completed.err
    snapshot_id: str = json.loads(completed.out)["snapshot_id"]
    return snapshot_id


def build_repository(env: dict[str, str], source: Path) -> BuiltRepository:
    """init + a directory backup + a --stdin backup, all through the real CLI."""
    completed = run_lockstep(["repo", "init"], env=env)
    assert completed.returncode == 0, completed.err
    tree_snapshot = backup_json([str(source)], env)
    stdin_snapshot = backup_json(["--stdin", "--stdin-filename", "shop.sql"], env, input=STDIN_DATA)
    return BuiltRepository(env, source, tree_snapshot, stdin_snapshot)


def open_repository(location: str) -> Repository:
    """The engine's view of a repository, index loaded; the caller closes it."""
    repository = Repository.open(open_backend(location), TEST_PASSWORD)
    repository.load_index()
    return repository


def locate_file(repository: Repository, snapshot_id: str, path_suffix: bytes) -> tuple[Node, list[BlobLocation]]:
    """A file node in a snapshot (by the end of its path) and where each of its blobs is stored."""
    snapshot = repository.find_snapshot(snapshot_id)
    for path, node in repository.walk(snapshot.tree):
        if path.endswith(path_suffix):
            locations = [repository.lookup_blob(BlobType.DATA, blob_id) for blob_id in node.content or []]
            return node, locations
    raise AssertionError(f"{path_suffix!r} is not in snapshot {snapshot_id}")


def flip_bit(path: Path, offset: int) -> None:
    """Flip the lowest bit of one byte, as a failing disk would."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def damage_big_file_blob(built: BuiltRepository) -> tuple[bytes, bytes]:
    """Flip a bit inside the first data blob of sub/big.bin; returns (pack ID, blob ID)."""
    repository = open_repository(built.location)
    try:
        node, locations = locate_file(repository, built.tree_snapshot, b"/sub/big.bin")
    finally:
        repository.close()
    assert node.content
    location = locations[0]
    flip_bit(built.file(FileType.PACK, location.pack_id.hex()), location.offset + location.length // 2)
    return location.pack_id, node.content[0]


def add_snapshot_with_wrong_uncompressed_length(location: str) -> tuple[bytes, bytes, str]:
    """A pack whose one blob says (in header *and* index) it decompresses to 5 bytes more than it
    does, with a snapshot of a file made of that blob. restic 0.14's `check --read-data` passes
    this repository (verified by hand: "no errors were found") and `restic restore` then writes a
    file 5 bytes too long, because it never compares the real length (§15.3).
    Returns (pack ID, blob ID, snapshot ID)."""
    repository = open_repository(location)
    try:
        plaintext = b"restic's check never compares this length\n" * 50
        blob_id = hashlib.sha256(plaintext).digest()
        compressed = zstandard.ZstdCompressor().compress(plaintext)
        writer = PackWriter()
        writer.add(BlobType.DATA, blob_id, repository.key.seal(compressed), len(plaintext) + 5)
        data, pack_id, blobs = writer.finish(repository.key)  # seals the (consistent, wrong) header
        repository.backend.save(FileType.PACK, pack_id.hex(), data)
        repository.save_unpacked(FileType.INDEX, index_document([(pack_id, blobs)]))
        repository.index.add_pack(pack_id, blobs)
        node = Node(name=b"trap.txt", type="file", mode=0o644, size=len(plaintext) + 5, content=[blob_id])
        tree_id = repository.save_tree(Tree([node]))
        repository.flush()
        snapshot = Snapshot(time=format_time_ns(time.time_ns()), tree=tree_id, paths=["/trap.txt"], hostname="test")
        snapshot_id = repository.save_snapshot(snapshot)
    finally:
        repository.close()
    return pack_id, blob_id, snapshot_id


def write_orphan_pack(location: str) -> bytes:
    """A valid pack that no index names, as an interrupted backup leaves behind."""
    repository = open_repository(location)
    try:
        writer = PackWriter()
        plaintext = os.urandom(1000)
        writer.add(BlobType.DATA, hashlib.sha256(plaintext).digest(), repository.key.seal(plaintext), 0)
        data, pack_id, _ = writer.finish(repository.key)
        repository.backend.save(FileType.PACK, pack_id.hex(), data)
    finally:
        repository.close()
    return pack_id


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def built(repository_env: dict[str, str], awkward_tree: Path) -> BuiltRepository:
    return build_repository(repository_env, awkward_tree)


@pytest.fixture
def access(built: BuiltRepository, monkeypatch: pytest.MonkeyPatch) -> Iterator[RepositoryAccess]:
    monkeypatch.setenv("LOCKSTEP_PASSWORD", TEST_PASSWORD)
    yield RepositoryAccess(location=built.location)


def pack_files(built: BuiltRepository) -> list[Path]:
    return sorted((built.root / "data").glob("*/*"))


def joined(messages: list[str]) -> str:
    return "\n".join(messages)


# --- a sound repository ---------------------------------------------------------------------


def test_a_sound_repository_has_no_errors_and_every_pack_and_blob_is_read(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    """Counts prove the work was done: every pack and every indexed blob was read."""
    repository = open_repository(built.location)
    try:
        indexed_blobs = sum(1 for _ in repository.index.blobs(BlobType.DATA))
        indexed_blobs += sum(1 for _ in repository.index.blobs(BlobType.TREE))
    finally:
        repository.close()
    read: list[int] = []
    report = run_check(access, read_data=True, progress=read.append)
    assert report.errors == []
    assert report.hints == []
    assert report.snapshots == 2
    assert report.index_files == 2
    assert report.packs == len(pack_files(built))
    assert report.packs_read == report.packs
    assert report.blobs_read == indexed_blobs
    # root + the source's ancestors + sub, sub/deeper, empty-dir, sticky, and the stdin snapshot's root
    assert report.trees >= 6
    assert sum(read) == report.bytes_read == sum(path.stat().st_size for path in pack_files(built))
    # No lock is left behind, and none was needed beyond a shared one.
    assert list((built.root / "locks").iterdir()) == []


def test_without_read_data_no_pack_is_read(access: RepositoryAccess) -> None:
    report = run_check(access)
    assert report.ok
    assert report.packs_read == report.blobs_read == report.bytes_read == 0


# --- damage in packs ----------------------------------------------------------------------------


def test_a_flipped_bit_in_a_data_blob_is_found_only_by_reading_data(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    pack_id, blob_id = damage_big_file_blob(built)
    assert run_check(access).ok  # sizes and structure are intact: only the bytes are wrong

    report = run_check(access, read_data=True)
    errors = joined(report.errors)
    assert f"pack {pack_id.hex()[:8]} does not match its name" in errors
    assert f"data blob {blob_id.hex()[:8]} in pack {pack_id.hex()[:8]} failed authentication" in errors
    assert blob_id.hex() in errors
    assert f"snapshot {built.tree_snapshot[:8]}: " in errors and "/sub/big.bin: 1 of its" in errors
    # The stdin snapshot does not share the damaged blob.
    assert built.stdin_snapshot[:8] not in errors
    assert len(report.errors) == 3


def test_a_flipped_bit_in_a_pack_header_is_found_by_reading_data(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    repository = open_repository(built.location)
    try:
        _, locations = locate_file(repository, built.tree_snapshot, b"/sub/big.bin")
    finally:
        repository.close()
    pack_id = locations[0].pack_id
    path = built.file(FileType.PACK, pack_id.hex())
    flip_bit(path, path.stat().st_size - 20)  # inside the sealed header, before the length field
    assert run_check(access).ok

    report = run_check(access, read_data=True)
    errors = joined(report.errors)
    assert f"pack {pack_id.hex()[:8]}: its header failed authentication" in errors
    assert f"pack {pack_id.hex()[:8]} does not match its name" in errors
    # Every blob still decrypts and hashes: no file is reported as lost.
    assert "/sub/big.bin" not in errors
    assert len(report.errors) == 2


def test_a_truncated_pack_is_found_without_reading_data(built: BuiltRepository, access: RepositoryAccess) -> None:
    repository = open_repository(built.location)
    try:
        _, locations = locate_file(repository, built.tree_snapshot, b"/sub/big.bin")
    finally:
        repository.close()
    pack_id = locations[-1].pack_id
    path = built.file(FileType.PACK, pack_id.hex())
    size = path.stat().st_size
    os.truncate(path, size // 2)

    errors = joined(run_check(access).errors)
    assert f"pack {pack_id.hex()[:8]} has {size // 2} bytes, the index implies {size}" in errors
    assert "/sub/big.bin: " in errors and f"damaged pack {pack_id.hex()[:8]}" in errors

    errors = joined(run_check(access, read_data=True).errors)
    assert f"pack {pack_id.hex()[:8]}: its header" in errors
    assert "lies past the end of the pack (the file is truncated)" in errors
    assert "/sub/big.bin: " in errors and " data blobs are damaged" in errors


def test_a_deleted_pack_names_the_pack_and_the_files_it_held(built: BuiltRepository, access: RepositoryAccess) -> None:
    repository = open_repository(built.location)
    try:
        _, locations = locate_file(repository, built.tree_snapshot, b"/sub/big.bin")
    finally:
        repository.close()
    pack_id = locations[0].pack_id
    in_pack = sum(1 for location in locations if location.pack_id == pack_id)
    built.file(FileType.PACK, pack_id.hex()).unlink()

    for read_data in (False, True):
        report = run_check(access, read_data=read_data)
        errors = joined(report.errors)
        assert f"pack {pack_id.hex()[:8]} is named in the index but missing from storage" in errors
        assert f"snapshot {built.tree_snapshot[:8]}: " in errors
        assert f"/sub/big.bin: {in_pack} of its data blobs are in missing pack {pack_id.hex()[:8]}" in errors
        assert report.packs_read == (report.packs - 1 if read_data else 0)


def test_an_orphan_pack_is_a_hint_not_an_error(built: BuiltRepository, access: RepositoryAccess) -> None:
    pack_id = write_orphan_pack(built.location)
    report = run_check(access, read_data=True)
    assert report.ok
    assert report.hints == [
        f"pack {pack_id.hex()[:8]} is not referenced in any index; `lockstep repo prune` removes them"
    ]
    assert report.packs_read == report.packs == len(pack_files(built)) - 1


def test_a_wrong_uncompressed_length_in_header_and_index_is_an_error(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    """The §15.3 trap: header and index agree, so restic's check passes; the real length differs."""
    pack_id, blob_id, snapshot_id = add_snapshot_with_wrong_uncompressed_length(built.location)
    assert run_check(access).ok  # structurally consistent: node size = index length

    errors = joined(run_check(access, read_data=True).errors)
    real_length = len(b"restic's check never compares this length\n" * 50)
    assert (
        f"data blob {blob_id.hex()[:8]} in pack {pack_id.hex()[:8]} has {real_length} bytes, "
        f"the index says {real_length + 5}"
    ) in errors
    assert f"snapshot {snapshot_id[:8]}: /trap.txt: 1 of its 1 data blobs are damaged" in errors


# --- damage in index and snapshot files ------------------------------------------------------


def index_file_holding(built: BuiltRepository, pack_id: bytes) -> str:
    """The index file that lists a pack."""
    repository = open_repository(built.location)
    try:
        for name, _ in repository.backend.list(FileType.INDEX):
            document = repository.load_unpacked(FileType.INDEX, name)
            if any(pack["id"] == pack_id.hex() for pack in document["packs"]):
                return name
    finally:
        repository.close()
    raise AssertionError("no index file lists the pack")


def test_a_deleted_index_file_names_the_snapshot_whose_blobs_are_gone(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    repository = open_repository(built.location)
    try:
        tree_id = repository.find_snapshot(built.tree_snapshot).tree
        tree_pack = repository.lookup_blob(BlobType.TREE, tree_id).pack_id
    finally:
        repository.close()
    built.file(FileType.INDEX, index_file_holding(built, tree_pack)).unlink()

    report = run_check(access, read_data=True)
    errors = joined(report.errors)
    assert f"snapshot {built.tree_snapshot[:8]}: tree {tree_id.hex()[:8]} for / is unreadable" in errors
    assert "is not in the index" in errors
    assert built.stdin_snapshot[:8] not in errors
    assert report.index_files == 1
    # The packs that index described are still there, now unreferenced.
    assert any(hint.startswith(f"pack {tree_pack.hex()[:8]} is not referenced in any index") for hint in report.hints)


def test_an_index_without_a_pack_names_the_files_whose_blobs_are_gone(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    """Rewrite the index without the data pack of sub/big.bin: trees still load, the file cannot."""
    repository = open_repository(built.location)
    try:
        node, locations = locate_file(repository, built.tree_snapshot, b"/sub/big.bin")
        pack_id = locations[0].pack_id
        name = index_file_holding(built, pack_id)
        document = repository.load_unpacked(FileType.INDEX, name)
        document["packs"] = [pack for pack in document["packs"] if pack["id"] != pack_id.hex()]
        repository.save_unpacked(FileType.INDEX, document)
        repository.backend.remove(FileType.INDEX, name)
    finally:
        repository.close()
    assert node.content

    report = run_check(access)
    errors = joined(report.errors)
    assert f"snapshot {built.tree_snapshot[:8]}: " in errors
    assert f"/sub/big.bin: {len(node.content)} of its {len(node.content)} data blobs are not in the index" in errors
    assert node.content[0].hex() in errors
    assert any(hint.startswith(f"pack {pack_id.hex()[:8]} is not referenced") for hint in report.hints)


def test_a_damaged_index_file_is_named_and_the_rest_still_checked(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    names = sorted(path.name for path in (built.root / "index").iterdir())
    flip_bit(built.file(FileType.INDEX, names[0]), 40)
    report = run_check(access)
    assert f"index {names[0][:8]} is unreadable: index/{names[0][:8]} does not match its name" in joined(report.errors)
    assert report.index_files == 1
    assert report.snapshots == 2
    assert report.hints[0] == (
        "1 index file cannot be read: `lockstep repo repair index` rebuilds the index from the packs"
    )


def test_a_damaged_snapshot_file_is_named_and_the_others_still_checked(
    built: BuiltRepository, access: RepositoryAccess
) -> None:
    path = built.file(FileType.SNAPSHOT, built.stdin_snapshot)
    flip_bit(path, path.stat().st_size // 2)
    report = run_check(access)
    assert report.errors == [
        f"snapshot {built.stdin_snapshot[:8]} is unreadable: "
        f"snapshots/{built.stdin_snapshot[:8]} does not match its name: the file is damaged"
    ]
    assert report.snapshots == 1


def test_a_damaged_tree_blob_is_found_without_reading_data(built: BuiltRepository, access: RepositoryAccess) -> None:
    repository = open_repository(built.location)
    try:
        snapshot = repository.find_snapshot(built.tree_snapshot)
        sub_tree = next(node.subtree for path, node in repository.walk(snapshot.tree) if path.endswith(b"/sub"))
        assert sub_tree is not None
        location = repository.lookup_blob(BlobType.TREE, sub_tree)
    finally:
        repository.close()
    flip_bit(built.file(FileType.PACK, location.pack_id.hex()), location.offset + 20)

    errors = joined(run_check(access).errors)
    assert f"snapshot {built.tree_snapshot[:8]}: tree {sub_tree.hex()[:8]} for " in errors
    assert f"/sub is unreadable: tree blob {sub_tree.hex()[:8]} in pack" in errors
    assert "failed authentication" in errors


def test_a_pack_listed_in_two_index_files_is_a_hint(built: BuiltRepository, access: RepositoryAccess) -> None:
    name = sorted(path.name for path in (built.root / "index").iterdir())[0]
    repository = open_repository(built.location)
    try:
        document = repository.load_unpacked(FileType.INDEX, name)
        repository.save_unpacked(FileType.INDEX, document)  # a new file (new nonce) with the same packs
    finally:
        repository.close()
    report = run_check(access, read_data=True)
    assert report.ok
    assert report.hints and all("is listed in 2 index files" in hint for hint in report.hints)


# --- node rules -------------------------------------------------------------------------------


def test_node_rules_and_file_sizes_are_checked(built: BuiltRepository, access: RepositoryAccess) -> None:
    """restic's node rules, plus lockstep's own: a file's size is the sum of its blobs."""
    repository = open_repository(built.location)
    try:
        data = b"twelve bytes"
        blob_id = repository.save_blob(BlobType.DATA, data)
        nodes = [
            Node(name=b"wrong-size", type="file", size=len(data) + 1, content=[blob_id]),
            Node(name=b"right-size", type="file", size=len(data), content=[blob_id]),
            Node(name=b"no-content", type="file", content=None),
            Node(name=b"null-blob", type="file", content=[bytes(32)]),
            Node(name=b"no-subtree", type="dir", mode=MODE_DIR | 0o755),
            Node(name=b"odd", type="irregular"),
            Node(name=b"", type="symlink", linktarget="x"),
        ]
        tree_id = repository.save_tree(Tree(nodes))
        repository.flush()
        snapshot = Snapshot(time=format_time_ns(time.time_ns()), tree=tree_id, paths=["/"], hostname="test")
        snapshot_id = repository.save_snapshot(snapshot)[:8]
    finally:
        repository.close()

    report = run_check(access, read_data=True)
    assert sorted(report.errors) == sorted(
        [
            f"snapshot {snapshot_id}: /wrong-size: its size says 13 bytes, its blobs hold 12",
            f"snapshot {snapshot_id}: /no-content is a file without a content list",
            f"snapshot {snapshot_id}: /null-blob refers to the null blob ID",
            f"snapshot {snapshot_id}: /no-subtree is a directory without a subtree",
            f"snapshot {snapshot_id}: /odd has the invalid type 'irregular'",
            f"snapshot {snapshot_id}: tree {tree_id.hex()[:8]} for / has an entry without a name",
        ]
    )


# --- pack selection -----------------------------------------------------------------------------


def test_subset_groups_partition_packs_by_first_byte() -> None:
    pack_ids = [bytes([first]) + bytes(31) for first in range(256)]
    groups = [PackSelection.parse(f"{group}/5").select(pack_ids) for group in range(1, 6)]
    assert sorted(pack_id for group in groups for pack_id in group) == pack_ids
    assert all(pack_id[0] % 5 == 0 for pack_id in groups[0])
    assert PackSelection.parse("1/1").select(pack_ids) == pack_ids


def test_subset_percentages_pick_at_least_one_pack() -> None:
    pack_ids = [os.urandom(32) for _ in range(10)]
    assert len(PackSelection.parse("50%").select(pack_ids)) == 5
    assert len(PackSelection.parse("1%").select(pack_ids)) == 1
    assert len(PackSelection.parse("100%").select(pack_ids)) == 10
    assert len(PackSelection.parse("2.5%").select(pack_ids)) == 1
    assert set(PackSelection.parse("30%").select(pack_ids)) <= set(pack_ids)
    assert PackSelection.parse("50%").select([]) == []


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "1/257", "0%", "101%", "half", "1/2/3", "-5%", ""])
def test_invalid_subsets_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        PackSelection.parse(text)
