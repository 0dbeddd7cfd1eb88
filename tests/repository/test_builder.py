"""SnapshotBuilder: several sources under one snapshot ID, readable by restic, and all-or-nothing."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from lockstep.errors import SourceError, UsageError
from lockstep.repository.blobs import BlobType
from lockstep.repository.builder import SnapshotBuilder, blob_list_sha256
from lockstep.repository.locks import locked
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import find_node
from lockstep.storage.base import FileType
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_restic


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    repository = Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD)
    repository.pack_size = 1 << 20  # small packs, so a failed source has really written some
    return repository


def pack_names(repository: Repository) -> set[str]:
    return {name for name, _ in repository.backend.list(FileType.PACK)}


def test_sources_land_in_one_snapshot_that_restic_restores(
    repository: Repository, tmp_path: Path, restic_binary: str
) -> None:
    source = tmp_path / "config"
    (source / "nested").mkdir(parents=True)
    (source / "app.env").write_text("DEBUG=0\n")
    (source / "nested" / "big.bin").write_bytes(os.urandom(2_500_000))
    dump = os.urandom(3_000_000) + b"-- end of dump\n"
    with locked(repository), SnapshotBuilder(repository) as builder:
        stored = builder.add_stream("databases/main.dump", io.BytesIO(dump))
        builder.add_bytes("code/commit", b"0123abcd\n")
        builder.add_path("files/config", source)
        builder.add_bytes("manifest.json", b'{"format": 1}')
        snapshot = builder.commit(["/lockstep/demo"], tags=["lockstep", "kind:manual"])

    assert stored.size == len(dump)
    assert stored.sha256 == hashlib.sha256(dump).hexdigest()
    # The blob list's SHA-256 pins the same bytes: each ID is the SHA-256 of one piece.
    node = find_node(repository, snapshot, "/databases/main.dump")
    assert node.content is not None and len(node.content) > 1
    pieces = b"".join(repository.load_blob(BlobType.DATA, blob_id) for blob_id in node.content)
    assert pieces == dump
    assert stored.blobs_sha256 == hashlib.sha256(b"".join(node.content)).hexdigest()
    assert stored.blobs_sha256 == blob_list_sha256(node.content)
    assert [item.path for item in builder.stored] == ["/databases/main.dump", "/code/commit", "/manifest.json"]
    location = str(repository.backend.location).removeprefix("local:")
    check = run_restic(location, ["check", "--read-data"])
    assert check.returncode == 0, check.err
    listing = run_restic(location, ["ls", snapshot.id])
    for path in ("/databases/main.dump", "/code/commit", "/files/config/nested/big.bin", "/manifest.json"):
        assert path in listing.out.splitlines()
    target = tmp_path / "restored"
    restore = run_restic(location, ["restore", snapshot.id, "--target", str(target)])
    assert restore.returncode == 0, restore.err
    assert (target / "databases" / "main.dump").read_bytes() == dump
    assert (target / "files" / "config" / "nested" / "big.bin").read_bytes() == (
        source / "nested" / "big.bin"
    ).read_bytes()
    assert (target / "manifest.json").read_bytes() == b'{"format": 1}'


def test_a_source_that_fails_leaves_no_snapshot_and_no_packs(repository: Repository) -> None:
    before = pack_names(repository)

    def dump_tool_failed() -> None:
        raise SourceError("pg_dump exited with code 1")

    with pytest.raises(SourceError), locked(repository), SnapshotBuilder(repository) as builder:
        builder.add_stream("databases/ok.dump", io.BytesIO(os.urandom(3_000_000)))
        builder.add_stream(
            "databases/broken.dump", io.BytesIO(os.urandom(3_000_000)), finished_cleanly=dump_tool_failed
        )
        builder.commit(["/x"])
    assert repository.list_snapshots() == []
    assert pack_names(repository) == before


def test_an_empty_stream_fails_unless_allowed(repository: Repository) -> None:
    with pytest.raises(SourceError, match="empty"), SnapshotBuilder(repository) as builder:
        builder.add_stream("databases/main.dump", io.BytesIO(b""))
    with SnapshotBuilder(repository) as builder:
        assert builder.add_stream("notes/empty", io.BytesIO(b""), allow_empty=True).size == 0
        assert builder.commit(["/x"]).id


def test_the_same_path_twice_and_unsafe_paths_are_refused(repository: Repository) -> None:
    with SnapshotBuilder(repository) as builder:
        builder.add_bytes("manifest.json", b"{}")
        with pytest.raises(UsageError, match="twice"):
            builder.add_bytes("/manifest.json", b"{}")
        for unsafe in ("", "/", "../escape", "files/./x"):
            with pytest.raises(UsageError, match="invalid path"):
                builder.add_bytes(unsafe, b"x")


def test_an_unreadable_path_is_a_source_error(repository: Repository, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot be read"), SnapshotBuilder(repository) as builder:
        builder.add_path("files/missing", tmp_path / "does-not-exist")


def test_a_stream_stored_without_hashing_its_bytes_still_has_its_blob_list_checksum(
    repository: Repository,
) -> None:
    """Database dumps skip the second full pass over their bytes; the blob list still pins them."""
    dump = os.urandom(2_000_000)
    with locked(repository), SnapshotBuilder(repository) as builder:
        hashed = builder.add_stream("a.dump", io.BytesIO(dump))
        unhashed = builder.add_stream("b.dump", io.BytesIO(dump), hash_bytes=False)
        builder.commit(["/test"])
    assert unhashed.sha256 is None
    assert hashed.sha256 == hashlib.sha256(dump).hexdigest()
    assert unhashed.blobs_sha256 == hashed.blobs_sha256 != hashed.sha256
