"""The dump between the tools: what lockstep adds to mariadb-dump's output, and changes on its
way into the `mariadb` client, so that it restores under any database name.

mariadb-dump without `--databases` leaves out the database's default character set and
collation, so a database created for a restore (verify's scratch database, `restore --to` a
new name) would get the server's, and so would the code (routines, triggers, events) created
in it. The dump starts with a statement that sets them (`database_default`); restored over an
existing database, it gives that one back the default it had at the snapshot.

mariadb-dump names the dumped database in one kind of statement even without `--databases`:
around each trigger, event and routine whose collation differs from the database's default it
writes "ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;" (the object
is created with the database's character set of its time), and another one after it to set
the default back. Restored into another database (verify's scratch database, `restore --to`),
those statements change the source database's default, or fail once it is gone. Without the
name, `ALTER DATABASE CHARACTER SET ...` applies to the database being restored into.

The rewrite looks at lines starting with "ALTER DATABASE `" only (bytes.find on each chunk, so a
dump of gigabytes costs a scan, not a parse), and changes a line only if all of it is such a
statement. Data never starts a line: mariadb-dump writes a newline inside a value as "\\n".
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import IO

from lockstep.chunk_stream import ChunkStream

CHUNK_BYTES = 1024 * 1024
NAME = re.compile(r"\w+")
NEEDLE = b"\nALTER DATABASE `"
# The whole line: a backquoted name (`` is a backquote in it), then what is kept.
STATEMENT = re.compile(rb"ALTER DATABASE `(?:[^`\n]|``)*` (CHARACTER SET \w+ COLLATE \w+ ;;?)")
# A line this long after NEEDLE is not one of those statements (names have at most 64 characters).
LONGEST_STATEMENT = 1024


def database_default(row: list[str]) -> bytes:
    """The statement that gives the database restored into the source's default character set
    and collation (`row`: @@character_set_database, @@collation_database); nothing for names
    that are not plain words."""
    charset, collation = row
    if not (NAME.fullmatch(charset) and NAME.fullmatch(collation)):
        return b""
    return f"ALTER DATABASE CHARACTER SET {charset} COLLATE {collation};\n".encode()


def with_prefix(prefix: bytes, stream: IO[bytes]) -> IO[bytes]:
    """`stream` with `prefix` before it; reads go straight to `stream` once the prefix is read."""
    return io.BufferedReader(_Prefixed(prefix, stream), buffer_size=CHUNK_BYTES) if prefix else stream


def without_database_names(source: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> IO[bytes]:
    """`source` (a mariadb-dump dump) with its ALTER DATABASE statements naming no database."""
    return io.BufferedReader(ChunkStream(rewritten_chunks(source, chunk_bytes)), buffer_size=chunk_bytes)


def rewritten_chunks(source: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The dump's bytes in pieces, rewritten; a statement split between two reads is put back
    together first (what might be its start is held back until the next read)."""
    held = b""
    while True:
        chunk = source.read(chunk_bytes)
        data = held + chunk if held else chunk
        pieces, held = _rewrite(data, final=not chunk)
        yield from (piece for piece in pieces if piece)
        if not chunk:
            return


def _rewrite(data: bytes, final: bool) -> tuple[list[bytes], bytes]:
    """(the pieces of `data` that can go on, rewritten; the end to hold back for the next read)."""
    pieces: list[bytes] = []
    sent = 0  # data[:sent] is in pieces
    search = 0
    while True:
        found = data.find(NEEDLE, search)
        if found < 0:
            # NEEDLE may begin in the last bytes and end in the next read.
            cut = len(data) if final else max(sent, len(data) - len(NEEDLE) + 1)
            pieces.append(data[sent:cut])
            return pieces, data[cut:]
        start = found + 1
        stop = data.find(b"\n", start)
        if stop < 0:
            if not final and len(data) - start < LONGEST_STATEMENT:
                pieces.append(data[sent:found])
                return pieces, data[found:]
            stop = len(data)
        match = STATEMENT.fullmatch(data, start, stop)
        if match:
            pieces += [data[sent:start], b"ALTER DATABASE " + match.group(1)]
            sent = stop
        search = start


class _Prefixed(io.RawIOBase):
    """Some bytes, then a raw stream (read into the caller's buffer, without a copy of ours)."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._prefix:
            return int(self._stream.readinto(buffer))  # type: ignore[attr-defined]
        count = min(len(buffer), len(self._prefix))
        buffer[:count] = self._prefix[:count]
        self._prefix = self._prefix[count:]
        return count
