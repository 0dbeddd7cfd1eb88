"""Content-defined chunking: cut a byte stream where its content says, so that an insertion
shifts only nearby boundaries and unchanged regions deduplicate.

lockstep uses FastCDC (compiled, releases the GIL) rather than restic's Rabin chunker; any
chunking yields a valid restic repository, it just does not deduplicate against chunks
that restic itself cut. The gear table is seeded from the repository's polynomial so that
chunk boundaries, like restic's, differ between repositories.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

# Sizes chosen by bench/backup_stream.py: smaller chunks deduplicate scattered row updates
# in database dumps far better than restic's ~1 MiB, for a larger index (see BENCHMARKS.md).
AVERAGE_SIZE = 256 * 1024
MINIMUM_SIZE = 64 * 1024
MAXIMUM_SIZE = 2 * 1024 * 1024


class Chunker:
    """Cuts streams into chunks with parameters fixed per repository."""

    def __init__(self, polynomial: int, average: int = AVERAGE_SIZE, minimum: int = MINIMUM_SIZE, maximum: int = MAXIMUM_SIZE) -> None:
        self._fastcdc = FastCDC(average, min_size=minimum, max_size=maximum, seed=polynomial & ((1 << 62) - 1))

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield the stream's chunks as independent bytes objects (the chunker reuses its buffer)."""
        for chunk in self._fastcdc.cut_stream(stream):
            yield bytes(chunk.data)
