"""An iterator of byte chunks as a readable stream, read into the caller's buffer.

A snapshot's stored file arrives blob by blob and a rewritten dump chunk by chunk, while the
tools that take them (a restore's subprocess, `shutil.copyfileobj`) want a file object.
"""

from __future__ import annotations

import io
from collections.abc import Iterator


class ChunkStream(io.RawIOBase):
    """The chunks in order, as one stream. Wrap it in io.BufferedReader for small reads."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")  # a view: handing out a chunk piece by piece copies it once

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Close the stream and, when it is a generator, the chunks: a reader that stops before
        the end (a table restore that has what it needs) lets go of what they hold now, such as
        the threads that read a snapshot's blobs ahead, not whenever the stream is collected."""
        if not self.closed:
            ending = getattr(self._chunks, "close", None)
            if ending is not None:
                ending()
        super().close()

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
