"""Table data read straight out of a pg_dump custom-format stream, without pg_restore.

After its table of contents, an uncompressed custom-format dump is a run of data blocks: a
block type byte, the dump ID of its table-of-contents entry, then frames of COPY text, each a
length followed by that many bytes, ended by a frame of length 0. pg_dump writes a frame per
row, millions of them in a big dump, so the frames are stripped by the compiled `_copy_frames`
module (a memcpy per row); `unframe_in_python` is the same function for installs without a C
compiler, correct but slow (about 5 s for the shop dump's 4.6M rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from lockstep.databases.postgresql_archive import BLOCK_DATA, ArchiveReader
from lockstep.errors import SourceError

Unframed = tuple[bytes, int, int, bool]


def unframe_in_python(data: bytes, position: int, int_size: int, remaining: int) -> Unframed:
    """The bytes of the frames in `data[position:]`, joined: (text, position, remaining, ended).

    `remaining` says how many bytes of a frame begun in an earlier buffer are still to come; the
    result's says the same for the next buffer. Stops at the end of `data`, before a length that
    the end of `data` cuts (the next call starts there, with more bytes), or after the frame of
    length 0 (`ended`). A negative length raises ValueError.
    """
    pieces: list[bytes] = []
    size = len(data)
    while position < size:
        if remaining > 0:
            take = min(remaining, size - position)
            pieces.append(data[position : position + take])
            position += take
            remaining -= take
            continue
        if size - position < 1 + int_size:
            break
        sign = data[position]
        length = int.from_bytes(data[position + 1 : position + 1 + int_size], "little")
        if sign > 1 or (sign == 1 and length != 0):
            raise ValueError(f"unframe: a frame at offset {position} has an invalid length")
        position += 1 + int_size
        if length == 0:
            return b"".join(pieces), position, 0, True
        remaining = length
    return b"".join(pieces), position, remaining, False


try:
    from lockstep.databases._copy_frames import unframe
except ImportError:  # not built (no compiler when installed)
    unframe = unframe_in_python


def data_blocks(
    buffered: bytes, read: Callable[[int], bytes], int_size: int, read_size: int
) -> Iterator[tuple[int, bytes, bool]]:
    """(dump ID, a piece of its COPY text, whether the block ends with it) for each data block,
    from the bytes after the table of contents: `buffered` first, then `read(read_size)` until it
    returns nothing. A stream that ends inside a block, or holds anything but table data, raises
    SourceError."""
    data, position = buffered, 0
    header = 2 + int_size  # block type, then the dump ID's sign byte and digits
    while True:
        while len(data) - position < header:
            more = read(read_size)
            if not more:
                if position == len(data):
                    return
                raise SourceError("the dump ends inside a data block's header")
            data, position = data[position:] + more, 0
        reader = ArchiveReader(data)
        reader.position, reader.int_size = position, int_size
        kind, dump_id = reader.byte(), reader.integer()
        position = reader.position
        if kind != BLOCK_DATA:
            raise SourceError(f"the dump holds a block of type {kind} where table data was expected")
        if dump_id < 0:
            raise SourceError("the dump's data block has a negative entry ID: the dump is damaged")
        remaining = 0
        while True:
            try:
                text, position, remaining, ended = unframe(data, position, int_size, remaining)
            except ValueError as error:
                raise SourceError(f"the dump's data for entry {dump_id} is damaged: {error}") from None
            if text or ended:
                yield dump_id, text, ended
            if ended:
                break
            more = read(read_size)
            if not more:
                raise SourceError("the dump ends inside a table's data")
            data, position = (data[position:] + more if position < len(data) else more), 0
