"""Content-defined chunking: cut a byte stream where its content says, so that an insertion
shifts only nearby boundaries and unchanged regions deduplicate.

lockstep uses FastCDC (compiled, releases the GIL) rather than restic's Rabin chunker; any
chunking yields a valid restic repository, it just does not deduplicate against chunks
that restic itself cut. The gear table is seeded from the repository's polynomial so that
chunk boundaries, like restic's, differ between repositories.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Generator, Iterator
from typing import IO, Protocol

from pyfastcdc import FastCDC

# Sizes chosen by measuring on the shop database dump (BENCHMARKS.md): about 1.5 MiB on average
# (FastCDC's average is AVERAGE_SIZE + MINIMUM_SIZE), of restic's order. Smaller chunks compressed
# worse (zstd sees less context) and did not deduplicate a realistic change set any better.
# The minimum is restic's, 512 KiB: with some polynomials (about 2 in 100) a string that recurs
# all through a dump is a boundary, and every chunk ends at the first one past the minimum. With
# 256 KiB such a repository stored 9 % more than others; with 512 KiB, 4 %, as restic does.
AVERAGE_SIZE = 1024 * 1024
MINIMUM_SIZE = 512 * 1024
MAXIMUM_SIZE = 8 * 1024 * 1024

BLOCK_SIZE = 16 * 1024 * 1024
# Blocks reused in turn when the consumer says when it is done with their chunks. Two would do
# (the carry comes from the previous block); a third lets workers finish the older one's chunks
# while the next is read.
RING_SIZE = 3
# A stream that ends within its first block and is at most this long is copied out of the ring,
# so that a directory of small files does not hold one block per file (and wait for it).
COPY_BELOW = 1024 * 1024
# A regular file at least this large is mapped instead of read (mapped_chunks): read() copies
# every byte out of the page cache once more, about 6 % of a backup's CPU time.
MAP_AT_LEAST = 64 * 1024 * 1024


class ChunkConsumer(Protocol):
    """What the chunker needs to know to reuse a block: chunks handed out, chunks finished with."""

    def submitted(self) -> int:
        """How many chunks the consumer has taken so far."""

    def wait_completed(self, count: int) -> None:
        """Return once the first `count` chunks taken are no longer in use."""


class Chunker:
    """Cuts streams into chunks with parameters fixed per repository."""

    def __init__(
        self, polynomial: int, average: int | None = None, minimum: int | None = None, maximum: int | None = None
    ) -> None:
        self._maximum = maximum or MAXIMUM_SIZE
        self._fastcdc = FastCDC(
            average or AVERAGE_SIZE,
            min_size=minimum or MINIMUM_SIZE,
            max_size=self._maximum,
            seed=polynomial & ((1 << 62) - 1),
        )
        self._ring: list[bytearray] = []
        self._ring_marks: list[int] = []
        self._ring_next = 0
        self._ring_consumer: ChunkConsumer | None = None

    def _block(self, minimum_size: int, consumer: ChunkConsumer | None) -> tuple[bytearray, int]:
        """A buffer of at least `minimum_size` bytes and its ring slot (-1: a fresh one).

        A fresh buffer is zero-filled on the reading thread while it holds the GIL, and costs a
        page fault per 4 KiB; a reused one costs neither.
        """
        if consumer is None:
            return bytearray(minimum_size), -1
        if consumer is not self._ring_consumer:
            self._ring_consumer = consumer
            self._ring_marks = [0] * len(self._ring)
        capacity = max(minimum_size, BLOCK_SIZE + self._maximum)
        slot = self._ring_next
        self._ring_next = (slot + 1) % RING_SIZE
        if slot >= len(self._ring):
            self._ring.append(bytearray(capacity))
            self._ring_marks.append(0)
            return self._ring[slot], slot
        consumer.wait_completed(self._ring_marks[slot])
        if len(self._ring[slot]) < minimum_size:  # only if BLOCK_SIZE changed (tests)
            self._ring[slot] = bytearray(capacity)
        return self._ring[slot], slot

    def chunks(
        self, stream: IO[bytes], consumer: ChunkConsumer | None = None, map_large_file: bool = False
    ) -> Iterator[memoryview]:
        """Yield the stream's chunks as read-only views into large blocks (no copy per chunk).

        Without a consumer every block is a fresh buffer and the views stay valid for as long as
        they are kept. With one, blocks are reused: a view is valid until the consumer reports
        it completed (ChunkConsumer.wait_completed). The last cut of a block is not a real
        boundary, so it is carried into the next block.

        `map_large_file`: if the stream is a large regular file, its rest is mapped rather than
        read (see mapped_chunks). Only for files nobody truncates meanwhile: a mapped page
        past a new end of file kills the process with SIGBUS.
        """
        mapping = _map_rest_of_file(stream) if map_large_file else None
        if mapping is not None:
            yield from self.mapped_chunks(*mapping, consumer)
            return
        carry: memoryview | bytes = b""
        slot = -1
        try:
            while True:
                buffer, slot = self._block(len(carry) + BLOCK_SIZE, consumer)
                carried = len(carry)
                buffer[:carried] = carry
                block = memoryview(buffer)[: carried + BLOCK_SIZE]
                filled = carried + _read_into(stream, block[carried:])
                at_end = filled < len(block)
                view = block[:filled].toreadonly()
                if at_end and slot >= 0 and filled <= COPY_BELOW:
                    view = memoryview(bytes(view))
                    self._ring_next, slot = slot, -1  # nothing points into the block: reuse it next
                if not filled:
                    return
                pending = yield from self._cut_window(view, at_end)
                if at_end:
                    return
                carry = pending if pending is not None else b""
                self._release(slot, consumer)
        finally:
            self._release(slot, consumer)

    def mapped_chunks(
        self, mapping: mmap.mmap, start: int, consumer: ChunkConsumer | None = None
    ) -> Iterator[memoryview]:
        """Yield the chunks of `mapping[start:]`, cut exactly as chunks() cuts a stream.

        Windows of BLOCK_SIZE bytes are cut in turn, as blocks are; nothing is copied. Pages of
        windows whose chunks the consumer has completed are unmapped again (they stay in the
        page cache), so the resident size stays that of a few windows.
        """
        size = len(mapping)
        whole = memoryview(mapping).toreadonly()
        position = start
        carried = 0
        released = start - start % mmap.PAGESIZE
        window_marks: list[tuple[int, int]] = []  # (window start, chunks submitted before it)
        try:
            while True:
                end = min(position + carried + BLOCK_SIZE, size)
                at_end = end == size
                view = whole[position:end]
                if consumer is not None:
                    window_marks.append((position, consumer.submitted()))
                pending = yield from self._cut_window(view, at_end)
                if at_end:
                    return
                assert pending is not None  # a window longer than the largest chunk holds a cut
                carried = len(pending)
                position = end - carried
                if consumer is not None and len(window_marks) > RING_SIZE:
                    # Every chunk that starts before the window RING_SIZE back has been submitted
                    # before the window after it began; once those are done, its pages can go.
                    release_to, mark = window_marks[-RING_SIZE]
                    consumer.wait_completed(mark)
                    release_to -= release_to % mmap.PAGESIZE
                    if release_to > released:
                        mapping.madvise(mmap.MADV_DONTNEED, released, release_to - released)
                        released = release_to
        finally:
            whole.release()

    def _cut_window(self, view: memoryview, at_end: bool) -> Generator[memoryview, None, memoryview | None]:
        """Yield the chunks cut in `view`. Its last cut is a real boundary only at the stream's
        end; otherwise it is returned instead, to be cut again with what follows."""
        pending: memoryview | None = None
        for chunk in self._fastcdc.cut_buf(view):
            if pending is not None:
                yield pending
            pending = view[chunk.offset : chunk.offset + chunk.length]
        if at_end and pending is not None:
            yield pending
            return None
        return pending

    def _release(self, slot: int, consumer: ChunkConsumer | None) -> None:
        """Remember how many chunks the consumer had taken when we left a ring block."""
        if slot >= 0 and consumer is not None:
            self._ring_marks[slot] = consumer.submitted()


def _map_rest_of_file(stream: IO[bytes]) -> tuple[mmap.mmap, int] | None:
    """A read-only mapping of the whole file behind `stream` and the stream's position, if it is
    a regular file with at least MAP_AT_LEAST bytes left; None for pipes and small files."""
    try:
        descriptor = stream.fileno()
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return None
        position = stream.tell()  # what the stream would yield next, whatever it has buffered
    except (AttributeError, OSError, ValueError):  # io.BytesIO and the like have no descriptor
        return None
    if info.st_size - position < MAP_AT_LEAST:
        return None
    try:
        mapping = mmap.mmap(descriptor, info.st_size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    mapping.madvise(mmap.MADV_SEQUENTIAL)
    return mapping, position


def _read_into(stream: IO[bytes], buffer: memoryview) -> int:
    """Fill `buffer` from `stream` until it is full or the stream ends (pipes return short reads)."""
    filled = 0
    while filled < len(buffer):
        read = stream.readinto(buffer[filled:])  # type: ignore[attr-defined]
        if not read:
            break
        filled += read
    return filled
