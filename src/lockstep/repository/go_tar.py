"""Tar headers as Go's archive/tar writes them, so `repo dump` gives restic's dump byte for byte.

restic 0.14 (built with Go 1.19) writes its tar stream with archive/tar and leaves the format to
the writer. Python's tarfile writes the same entries in other bytes: a PAX header named
``././@PaxHeader`` rather than ``DIR/PaxHeaders.0/NAME``, no prefix field for a long path, empty
device fields, and the end padded to a 10 KiB record. This module follows Go's choices instead:
ustar whenever it can hold the header (a path over 100 bytes split into prefix and name), else PAX
with the records Go adds (path, linkpath, uname, gname, uid, gid, size, mtime) sorted by keyword,
and two zero blocks at the end, nothing more.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)
_NAME_SIZE = 100
_PREFIX_SIZE = 155

REGULAR = b"0"
SYMLINK = b"2"
CHARACTER_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_PAX_HEADER = b"x"

# (offset, length) of the header fields written here.
_NAME, _MODE, _UID, _GID, _SIZE, _MTIME = (0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12)
_CHECKSUM, _TYPE, _LINKNAME, _MAGIC = (148, 8), (156, 1), (157, 100), (257, 8)
_UNAME, _GNAME, _DEVMAJOR, _DEVMINOR, _PREFIX = (265, 32), (297, 32), (329, 8), (337, 8), (345, 155)
_USTAR_MAGIC = b"ustar\x0000"


@dataclass
class GoTarHeader:
    """One entry's header, in Go's tar.Header terms; strings are raw bytes, as in a Go string."""

    name: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    uname: bytes
    gname: bytes
    mtime: int  # seconds, already rounded as Go's WriteHeader rounds them
    size: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    pax_records: dict[bytes, bytes] = field(default_factory=dict)


def is_ascii(text: bytes) -> bool:
    """Go's isASCII: no NUL and nothing from 0x80 up (a byte there is never a rune below it)."""
    return all(0 < byte < 0x80 for byte in text)


def to_ascii(text: bytes) -> bytes:
    """Go's toASCII: the runes below 0x80 other than NUL, which are exactly those bytes."""
    return bytes(byte for byte in text if 0 < byte < 0x80)


def fits_in_octal(length: int, value: int) -> bool:
    return value >= 0 and (length >= 22 or value < 1 << ((length - 1) * 3))


def split_ustar_path(name: bytes) -> tuple[bytes, bytes] | None:
    """Go's splitUSTARPath: a long ASCII path as (prefix, name) at a slash, if both fit."""
    length = len(name)
    if length <= _NAME_SIZE or not is_ascii(name):
        return None
    if length > _PREFIX_SIZE + 1:
        length = _PREFIX_SIZE + 1
    elif name[length - 1 : length] == b"/":
        length -= 1
    index = name.rfind(b"/", 0, length)
    suffix_length = len(name) - index - 1
    if index <= 0 or suffix_length > _NAME_SIZE or suffix_length == 0 or index > _PREFIX_SIZE:
        return None
    return name[:index], name[index + 1 :]


def pax_record(keyword: bytes, value: bytes) -> bytes:
    """ "LENGTH KEYWORD=VALUE\\n", LENGTH counting its own digits (Go's formatPAXRecord)."""
    size = len(keyword) + len(value) + 3
    size += len(str(size))
    record = str(size).encode() + b" " + keyword + b"=" + value + b"\n"
    if len(record) != size:
        record = str(len(record)).encode() + b" " + keyword + b"=" + value + b"\n"
    return record


class _Block:
    """A 512-byte header being filled in, with Go's formatString and formatOctal."""

    def __init__(self) -> None:
        self.data = bytearray(BLOCK_SIZE)

    def string(self, where: tuple[int, int], text: bytes) -> None:
        offset, length = where
        self.data[offset : offset + min(len(text), length)] = text[:length]
        if len(text) < length:
            self.data[offset + len(text)] = 0
        # Go ends a path cut off at a slash before the slash, not to be read as a directory.
        if len(text) > length and text[length - 1 : length] == b"/":
            self.data[offset + len(text[:length].rstrip(b"/"))] = 0

    def octal(self, where: tuple[int, int], value: int) -> None:
        length = where[1]
        digits = format(value if fits_in_octal(length, value) else 0, "o").encode()
        self.string(where, digits.rjust(length - 1, b"0"))

    def finish(self) -> bytes:
        """Go's SetFormat for ustar and PAX: the magic, then the checksum ("%06o\\0 ")."""
        self.data[_MAGIC[0] : _MAGIC[0] + _MAGIC[1]] = _USTAR_MAGIC
        self.data[_CHECKSUM[0] : _CHECKSUM[0] + _CHECKSUM[1]] = b" " * 8
        self.octal((_CHECKSUM[0], 7), sum(self.data))
        self.data[_CHECKSUM[0] + 7] = ord(" ")
        return bytes(self.data)


def _main_block(header: GoTarHeader, name: bytes, ascii_only: bool) -> _Block:
    """Go's templateV7Plus: the fields every ustar and PAX header carries."""
    text = to_ascii if ascii_only else (lambda value: value)
    block = _Block()
    block.data[_TYPE[0]] = header.typeflag[0]
    block.string(_NAME, text(name))
    block.string(_LINKNAME, text(header.linkname))
    block.octal(_MODE, header.mode)
    block.octal(_UID, header.uid)
    block.octal(_GID, header.gid)
    block.octal(_SIZE, header.size)
    block.octal(_MTIME, header.mtime)
    block.string(_UNAME, text(header.uname))
    block.string(_GNAME, text(header.gname))
    block.octal(_DEVMAJOR, header.devmajor)
    block.octal(_DEVMINOR, header.devminor)
    return block


def _pax_needs(header: GoTarHeader) -> tuple[bool, dict[bytes, bytes]]:
    """Go's allowedFormats, for the headers a dump writes: whether ustar holds this header, and
    the PAX records it needs otherwise."""
    ustar = not header.pax_records
    records: dict[bytes, bytes] = {}
    for keyword, value, length in (
        (b"path", header.name, _NAME_SIZE),
        (b"linkpath", header.linkname, _NAME_SIZE),
        (b"uname", header.uname, 32),
        (b"gname", header.gname, 32),
    ):
        if not is_ascii(value) or len(value) > length:
            if keyword != b"path" or split_ustar_path(value) is None:
                ustar = False
            records[keyword] = value
    for keyword, number, length in (
        (b"uid", header.uid, 8),
        (b"gid", header.gid, 8),
        (b"size", header.size, 12),
        (b"mtime", header.mtime, 12),
    ):
        if not fits_in_octal(length, number):
            ustar = False
            records[keyword] = str(number).encode()
    for keyword, value in header.pax_records.items():
        records.setdefault(keyword, value)
    return ustar, records


def header_bytes(header: GoTarHeader) -> bytes:
    """The blocks Go's Writer.WriteHeader writes for `header` (a PAX header first if needed)."""
    ustar, records = _pax_needs(header)
    if ustar:
        name, prefix = header.name, b""
        split = split_ustar_path(header.name)
        if split is not None:
            prefix, name = split
        block = _main_block(header, name, ascii_only=False)
        block.string(_PREFIX, prefix)
        return block.finish()
    data = b"".join(pax_record(keyword, records[keyword]) for keyword in sorted(records))
    directory, _, file = header.name.rpartition(b"/")
    pax_name = posixpath.normpath(b"/".join(part for part in (directory, b"PaxHeaders.0", file) if part))
    pax_block = _Block()
    pax_block.data[_TYPE[0]] = _PAX_HEADER[0]
    pax_block.string(_NAME, to_ascii(pax_name)[:_NAME_SIZE].rstrip(b"/"))
    for where in (_MODE, _UID, _GID, _MTIME):
        pax_block.octal(where, 0)
    pax_block.octal(_SIZE, len(data))
    main = _main_block(header, header.name, ascii_only=True)
    return pax_block.finish() + data + padding(len(data)) + main.finish()


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK_SIZE)


class GoTarWriter:
    """Writes entries and the end of the stream as Go's tar.Writer does; counts the bytes."""

    def __init__(self, output: BinaryIO) -> None:
        self._output = output
        self.written = 0

    def _write(self, data: bytes) -> None:
        self._output.write(data)
        self.written += len(data)

    def add(self, header: GoTarHeader) -> None:
        """A header alone: a directory, link, pipe or device."""
        self._write(header_bytes(header))

    def add_file(self, header: GoTarHeader, chunks: Iterable[bytes]) -> int:
        """A regular file's header and content, padded to a block. Returns how many content
        bytes there were, for the caller to hold against the header's size."""
        self._write(header_bytes(header))
        length = 0
        for chunk in chunks:
            self._write(chunk)
            length += len(chunk)
        self._write(padding(length))
        return length

    def close(self) -> None:
        """Go's Close: two zero blocks, with no padding to a 10 KiB record as tarfile adds."""
        self._write(ZERO_BLOCK + ZERO_BLOCK)
