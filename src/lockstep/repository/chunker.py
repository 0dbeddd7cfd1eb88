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

# Sizes chosen by measuring on the shop database dump (BENCHMARKS.md): about 1 MiB on average
# (FastCDC's average is AVERAGE_SIZE + MINIMUM_SIZE), like restic. Smaller chunks compressed
# worse (zstd sees less context) and did not deduplicate a realistic change set any better.
AVERAGE_SIZE = 768 * 1024
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

    def chunks(self, stream: IO[bytes]) -> Iterator[bytes]:
        """Yield the stream's chunks as independent bytes objects (the chunker reuses its buffer)."""
        for chunk in self._fastcdc.cut_stream(stream):
            yield bytes(chunk.data)
