"""The chunker reads large blocks and cuts inside them; block borders must not change the cuts."""

from __future__ import annotations

import io
import os

import pytest
from pyfastcdc import FastCDC

import lockstep.repository.chunker as chunker_module
from lockstep.repository.chunker import Chunker

POLYNOMIAL = 0x3DA3358B4DC173


class TrickleReader(io.RawIOBase):
    """A pipe-like stream that hands out at most `step` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._step, len(self._data))
        buffer[:count] = self._data[:count]
        self._data = self._data[count:]
        return count


def reference_cuts(data: bytes) -> list[bytes]:
    fastcdc = FastCDC(
        chunker_module.AVERAGE_SIZE,
        min_size=chunker_module.MINIMUM_SIZE,
        max_size=chunker_module.MAXIMUM_SIZE,
        seed=POLYNOMIAL & ((1 << 62) - 1),
    )
    return [bytes(chunk.data) for chunk in fastcdc.cut_buf(data)]


@pytest.mark.parametrize("block_size", [3 * 1024 * 1024 + 7, 8 * 1024 * 1024, 64 * 1024 * 1024])
def test_cuts_equal_a_whole_buffer_cut_whatever_the_block_size(
    monkeypatch: pytest.MonkeyPatch, block_size: int
) -> None:
    monkeypatch.setattr(chunker_module, "BLOCK_SIZE", block_size)
    data = os.urandom(5 << 20) + b"lockstep " * (500_000) + os.urandom(3 << 20) + b"tail"
    chunks = [bytes(chunk) for chunk in Chunker(POLYNOMIAL).chunks(io.BytesIO(data))]
    assert chunks == reference_cuts(data)
    assert b"".join(chunks) == data


def test_short_reads_from_a_pipe_still_fill_whole_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunker_module, "BLOCK_SIZE", 2 * 1024 * 1024)
    data = os.urandom(7 << 20)
    chunks = [bytes(chunk) for chunk in Chunker(POLYNOMIAL).chunks(TrickleReader(data, 65536))]
    assert chunks == reference_cuts(data)


def test_chunks_stay_valid_after_later_chunks_are_read() -> None:
    data = os.urandom(40 << 20)
    chunks = list(Chunker(POLYNOMIAL).chunks(io.BytesIO(data)))
    assert b"".join(bytes(chunk) for chunk in chunks) == data
    assert all(chunk.readonly for chunk in chunks)


def test_empty_and_tiny_streams() -> None:
    assert list(Chunker(POLYNOMIAL).chunks(io.BytesIO(b""))) == []
    assert [bytes(chunk) for chunk in Chunker(POLYNOMIAL).chunks(io.BytesIO(b"x"))] == [b"x"]


def test_different_polynomials_cut_differently() -> None:
    data = os.urandom(16 << 20)
    first = [len(chunk) for chunk in Chunker(POLYNOMIAL).chunks(io.BytesIO(data))]
    second = [len(chunk) for chunk in Chunker(0x22D5819F370319).chunks(io.BytesIO(data))]
    assert first != second


class HoldingConsumer:
    """Keeps every chunk's view until the chunker asks for it back, then checks it is unchanged:
    a block reused too early would show up as a changed chunk."""

    def __init__(self) -> None:
        self.held: list[tuple[memoryview, bytes]] = []
        self.completed = 0
        self.waits = 0

    def submitted(self) -> int:
        return len(self.held)

    def wait_completed(self, count: int) -> None:
        if count > self.completed:
            self.waits += 1
        while self.completed < count:
            view, expected = self.held[self.completed]
            assert bytes(view) == expected, f"chunk {self.completed} changed before it was completed"
            self.completed += 1


def test_reused_blocks_cut_the_same_and_never_change_a_chunk_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunker_module, "BLOCK_SIZE", 2 * 1024 * 1024)
    data = os.urandom(9 << 20) + b"lockstep " * 1_000_000 + os.urandom(5 << 20)
    consumer = HoldingConsumer()
    chunker = Chunker(POLYNOMIAL)
    for chunk in chunker.chunks(TrickleReader(data, 1 << 20), consumer):
        consumer.held.append((chunk, bytes(chunk)))
    consumer.wait_completed(len(consumer.held))
    assert [expected for _, expected in consumer.held] == reference_cuts(data)
    assert consumer.waits > 0, "the ring was never reused"
    # A second stream through the same chunker (the next file of a directory backup) reuses the
    # ring too, and must wait for the first stream's chunks.
    first_count = len(consumer.held)
    more = os.urandom(7 << 20)
    for chunk in chunker.chunks(io.BytesIO(more), consumer):
        consumer.held.append((chunk, bytes(chunk)))
    consumer.wait_completed(len(consumer.held))
    assert b"".join(expected for _, expected in consumer.held[first_count:]) == more


def test_small_streams_are_copied_and_leave_the_ring_free() -> None:
    """A directory of small files must not hold a block per file (that would cap the work in
    flight at the ring's size and make each file wait for an older one)."""
    consumer = HoldingConsumer()
    chunker = Chunker(POLYNOMIAL)
    files = [os.urandom(size) for size in (0, 1, 4096, 300_000, 1024 * 1024, 0, 70_000)]
    for data in files * 3:
        for chunk in chunker.chunks(io.BytesIO(data), consumer):
            consumer.held.append((chunk, bytes(chunk)))
    assert consumer.waits == 0
    consumer.wait_completed(len(consumer.held))
    assert b"".join(expected for _, expected in consumer.held) == b"".join(files * 3)


def test_a_large_regular_file_is_mapped_and_cut_as_a_stream_would_be(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.setattr(chunker_module, "BLOCK_SIZE", 2 * 1024 * 1024)
    monkeypatch.setattr(chunker_module, "MAP_AT_LEAST", 4 * 1024 * 1024)
    data = os.urandom(9 << 20) + b"lockstep " * 1_000_000 + os.urandom(5 << 20) + b"tail"
    path = tmp_path / "dump.sql"  # type: ignore[operator]
    path.write_bytes(b"skipped header" + data)
    mapped_windows: list[int] = []
    original = Chunker.mapped_chunks

    def recording(self: Chunker, mapping: object, start: int, consumer: object = None) -> object:
        mapped_windows.append(start)
        return original(self, mapping, start, consumer)  # type: ignore[arg-type]

    monkeypatch.setattr(Chunker, "mapped_chunks", recording)
    consumer = HoldingConsumer()
    with open(path, "rb") as stream:
        stream.read(len(b"skipped header"))  # a stream already partly read is mapped from there
        for chunk in Chunker(POLYNOMIAL).chunks(stream, consumer, map_large_file=True):
            consumer.held.append((chunk, bytes(chunk)))
    consumer.wait_completed(len(consumer.held))
    assert mapped_windows == [len(b"skipped header")]
    assert [expected for _, expected in consumer.held] == reference_cuts(data)
    assert consumer.waits > 0, "no window's pages were ever released"


def test_pipes_small_files_and_unmapped_requests_are_read(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "small.sql"  # type: ignore[operator]
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    with open(path, "rb") as stream:  # below MAP_AT_LEAST
        assert chunker_module._map_rest_of_file(stream) is None
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stream:
        os.close(write_end)
        assert chunker_module._map_rest_of_file(stream) is None
    with open(path, "rb") as stream:
        assert b"".join(bytes(chunk) for chunk in Chunker(POLYNOMIAL).chunks(stream)) == data
