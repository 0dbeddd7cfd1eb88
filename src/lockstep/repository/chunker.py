"""Content-defined chunking: cut a byte stream where its content says, so that an insertion
shifts only nearby boundaries and unchanged regions deduplicate.

lockstep uses FastCDC (compiled, releases the GIL) rather than restic's Rabin chunker; any
chunking yields a valid restic repository, it just does not deduplicate against chunks
that restic itself cut. The gear table is seeded from the repository's polynomial so that
chunk boundaries, like restic's, differ between repositories.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from pyfastcdc import FastCDC

# Sizes chosen by measuring on the shop database dump (BENCHMARKS.md): about 1.25 MiB on average
# (FastCDC's average is AVERAGE_SIZE + MINIMUM_SIZE), close to restic's. Smaller chunks compressed
# worse (zstd sees less context) and did not deduplicate a realistic change set any better.
AVERAGE_SIZE = 1024 * 1024
MINIMUM_SIZE = 256 * 1024
MAXIMUM_SIZE = 8 * 1024 * 1024


class Chunker:
    """Cuts streams into chunks with parameters fixed per repository."""

    def __init__(
        self, polynomial: int, average: int | None = None, minimum: int | None = None, maximum: int | None = None
    ) -> None:
        self._fastcdc = FastCDC(
            average or AVERAGE_SIZE,
            min_size=minimum or MINIMUM_SIZE,
            max_size=maximum or MAXIMUM_SIZE,
            seed=polynomial & ((1 << 62) - 1),
        )

    def chunks(self, stream: IO[bytes]) -> Iterator[memoryview]:
        """Yield the stream's chunks as read-only views that stay valid after the next chunk.

        The stream is read in large blocks straight into a fresh buffer per block (no copy per
        chunk); the last cut of a block is not a real boundary, so it is carried into the next.
        """
        carry = b""
        while True:
            block = bytearray(len(carry) + BLOCK_SIZE)
            block[: len(carry)] = carry
            filled = len(carry) + _read_into(stream, memoryview(block)[len(carry) :])
            at_end = filled < len(block)
            view = memoryview(block)[:filled].toreadonly()
            if not filled:
                return
            pending: memoryview | None = None
            for chunk in self._fastcdc.cut_buf(view):
                if pending is not None:
                    yield pending
                pending = view[chunk.offset : chunk.offset + chunk.length]
            if at_end:
                if pending is not None:
                    yield pending
                return
            carry = bytes(pending) if pending is not None else b""


BLOCK_SIZE = 16 * 1024 * 1024


def _read_into(stream: IO[bytes], buffer: memoryview) -> int:
    """Fill `buffer` from `stream` until it is full or the stream ends (pipes return short reads)."""
    filled = 0
    while filled < len(buffer):
        read = stream.readinto(buffer[filled:])  # type: ignore[attr-defined]
        if not read:
            break
        filled += read
    return filled
