"""Blob IDs hashed in batches (side by side in vector lanes) are the IDs hashlib gives, and a
backup made that way is the same backup, chunk for chunk, that restic checks and reads."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.errors import IntegrityError
from lockstep.repository import chunk_hashing
from lockstep.repository.archiver import Archiver
from lockstep.repository.blobs import BlobType
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import read_blobs
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD, run_restic

X86_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\n"
ARM_FEATURES = "processor\t: 0\nFeatures\t: fp asimd aes pmull {extra} crc32\n"


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD)
    repository.pack_size = 4 * 1024 * 1024
    yield repository
    repository.close()


def test_sha_instructions_are_read_from_cpuinfo() -> None:
    """hashlib is kept where the CPU hashes in hardware, and where the CPU cannot be read."""
    assert chunk_hashing.cpu_has_sha_instructions(X86_FLAGS.format(extra="sha_ni"))
    assert not chunk_hashing.cpu_has_sha_instructions(X86_FLAGS.format(extra="avx512f"))
    assert chunk_hashing.cpu_has_sha_instructions(ARM_FEATURES.format(extra="sha1 sha2"))
    assert not chunk_hashing.cpu_has_sha_instructions(ARM_FEATURES.format(extra="sha1"))
    assert chunk_hashing.cpu_has_sha_instructions("model name : something else\n")


def test_blob_ids_are_hashlib_digests_with_and_without_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = random.Random(7)
    data = bytearray(generator.randbytes(6_000_000))
    view = memoryview(data)
    chunks = [view[0:0], view[1:700_001], bytes(data[5:64]), view[700_001:2_600_000], view[2_600_000:]]
    expected = [hashlib.sha256(chunk).digest() for chunk in chunks]
    for batch in (1, 16):
        monkeypatch.setattr(chunk_hashing, "BATCH", batch)
        assert chunk_hashing.blob_ids(chunks) == expected


def test_a_backup_hashed_in_batches_is_the_same_backup(
    repository: Repository, monkeypatch: pytest.MonkeyPatch, restic_binary: str
) -> None:
    """Batches of 16 (lanes) and one chunk at a time (hashlib) cut and name the same blobs."""
    generator = random.Random(11)
    # Compressible and varied, so the chunker cuts many chunks of different lengths.
    words = [generator.randbytes(generator.randrange(3, 12)).hex().encode() for _ in range(5000)]
    data = b" ".join(generator.choice(words) for _ in range(2_500_000))
    contents = []
    for batch in (16, 1):
        monkeypatch.setattr(chunk_hashing, "BATCH", batch)
        blobs_before = repository.blobs_added
        summary = Archiver(repository).backup_stream(io.BytesIO(data), "db.sql")
        (node,) = repository.load_tree(repository.load_snapshot(summary.snapshot_id).tree).nodes
        assert node.content is not None and len(node.content) > 16
        contents.append(node.content)
        if batch == 16:
            # Every blob is read back and checked against its ID (the SHA-256 of its bytes).
            assert b"".join(repository.load_blob(BlobType.DATA, blob_id) for blob_id in node.content) == data
        else:
            # The second backup found every data blob stored already; only its tree is new.
            assert repository.blobs_added - blobs_before == 1
    assert contents[0] == contents[1]
    location = str(repository.backend.location).removeprefix("local:")
    check = run_restic(location, ["check", "--read-data"])
    assert check.returncode == 0, check.err


@pytest.mark.parametrize("batch", [16, 1])
def test_reading_a_blob_whose_bytes_do_not_match_its_id_fails_naming_it(
    repository: Repository, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The check after decryption holds whether IDs are hashed in batches or one at a time."""
    monkeypatch.setattr(chunk_hashing, "BATCH", batch)
    generator = random.Random(5)
    pieces = [generator.randbytes(100_000) for _ in range(20)]
    blob_ids = [repository.save_blob(BlobType.DATA, piece) for piece in pieces]
    # Sealed with the right key (it authenticates), but stored under another blob's name.
    impostor = hashlib.sha256(b"what the ID promises").digest()
    prepared = repository.prepare_blob(BlobType.DATA, b"something else entirely", impostor)
    assert prepared is not None
    repository.add_prepared(prepared)
    repository.flush()
    assert b"".join(read_blobs(repository, blob_ids)) == b"".join(pieces)
    with pytest.raises(IntegrityError, match=f"blob {impostor.hex()[:8]} in pack .* does not match its ID"):
        list(read_blobs(repository, [*blob_ids[:17], impostor, *blob_ids[17:]]))
