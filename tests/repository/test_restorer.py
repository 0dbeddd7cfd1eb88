"""Reading a stored file that the reader leaves before its end (a table restore that has what
it needs): the read-ahead threads end with the stream, and the blobs not yet started are not read."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockstep.chunk_stream import ChunkStream
from lockstep.repository import chunk_hashing
from lockstep.repository.blobs import BlobType
from lockstep.repository.repository import Repository
from lockstep.repository.restorer import read_blobs
from lockstep.storage.local import LocalBackend
from tests.conftest import TEST_PASSWORD

BLOBS = 120


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository.init(LocalBackend(tmp_path / "repository"), TEST_PASSWORD)
    yield repository
    repository.close()


def reading_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("lockstep-read")]


@pytest.mark.parametrize("batch", [16, 1])
def test_closing_the_stream_early_ends_the_read_ahead_and_reads_no_more_blobs(
    repository: Repository, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """A stream over 120 blobs, read for its first megabyte and closed: by the time close()
    returns, no read-ahead thread is left and only the blobs read or already under way were
    loaded (a window of a few), not the other hundred."""
    monkeypatch.setattr(chunk_hashing, "BATCH", batch)
    generator = random.Random(7)
    blob_ids = [repository.save_blob(BlobType.DATA, generator.randbytes(64 * 1024)) for _ in range(BLOBS)]
    repository.flush()
    loaded: list[bytes] = []
    load_blob = repository.load_blob

    def counting_load_blob(*arguments: object) -> bytes:
        loaded.append(b"")
        return load_blob(*arguments)  # type: ignore[arg-type]

    monkeypatch.setattr(repository, "load_blob", counting_load_blob)
    stream = io.BufferedReader(ChunkStream(read_blobs(repository, blob_ids)), buffer_size=1024 * 1024)
    assert len(stream.read(1024 * 1024)) == 1024 * 1024
    assert reading_threads()
    stream.close()
    assert reading_threads() == []
    assert len(loaded) < BLOBS // 2  # the 16 read and a read-ahead window
