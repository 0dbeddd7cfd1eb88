"""Pack files: sealed blobs back to back, then a sealed header, then its length (§7).

blob_1 ‖ … ‖ blob_n ‖ seal(header) ‖ uint32_le(len(seal(header)))
"""

from __future__ import annotations

import hashlib
import struct

from lockstep.repository.blobs import BlobType, PackedBlob
from lockstep.repository.crypto import OVERHEAD, Key

_TYPE_CODES = {
    (BlobType.DATA, False): 0,
    (BlobType.TREE, False): 1,
    (BlobType.DATA, True): 2,
    (BlobType.TREE, True): 3,
}
_CODE_TYPES = {code: blob_type for (blob_type, _), code in _TYPE_CODES.items()}
_PLAIN_ENTRY = struct.Struct("<BI32s")  # 37 bytes
_COMPRESSED_ENTRY = struct.Struct("<BII32s")  # 41 bytes
HEADER_LENGTH_SIZE = 4
MAX_HEADER_SIZE = 16 * 1024 * 1024
# restic reads this many bytes from the end first: 15 entries plus the overhead.
EAGER_TAIL = 15 * _COMPRESSED_ENTRY.size + OVERHEAD + HEADER_LENGTH_SIZE


class PackFormatError(ValueError):
    """A pack whose header cannot be parsed."""


def header_entry_size(blob: PackedBlob) -> int:
    """37 bytes for a raw blob's entry, 41 for a compressed one."""
    return _COMPRESSED_ENTRY.size if blob.uncompressed_length else _PLAIN_ENTRY.size


def expected_pack_size(blobs: list[PackedBlob]) -> int:
    """What restic's check computes from the index: blobs + header entries + 32 + 4."""
    return sum(blob.length + header_entry_size(blob) for blob in blobs) + OVERHEAD + HEADER_LENGTH_SIZE


def encode_header(blobs: list[PackedBlob]) -> bytes:
    """The plaintext pack header, entries in the order the blobs were written."""
    parts = []
    for blob in blobs:
        compressed = blob.uncompressed_length > 0
        code = _TYPE_CODES[(blob.blob_type, compressed)]
        if compressed:
            parts.append(_COMPRESSED_ENTRY.pack(code, blob.length, blob.uncompressed_length, blob.blob_id))
        else:
            parts.append(_PLAIN_ENTRY.pack(code, blob.length, blob.blob_id))
    return b"".join(parts)


def decode_header(header: bytes) -> list[PackedBlob]:
    """Parse header entries; offsets are the running sum of lengths, starting at 0."""
    blobs: list[PackedBlob] = []
    position = 0
    offset = 0
    while position < len(header):
        code = header[position]
        if code in (0, 1):
            if position + _PLAIN_ENTRY.size > len(header):
                raise PackFormatError("pack header ends inside an entry")
            _, length, blob_id = _PLAIN_ENTRY.unpack_from(header, position)
            uncompressed_length = 0
            position += _PLAIN_ENTRY.size
        elif code in (2, 3):
            if position + _COMPRESSED_ENTRY.size > len(header):
                raise PackFormatError("pack header ends inside an entry")
            _, length, uncompressed_length, blob_id = _COMPRESSED_ENTRY.unpack_from(header, position)
            position += _COMPRESSED_ENTRY.size
        else:
            raise PackFormatError(f"invalid blob type {code} in pack header")
        blobs.append(PackedBlob(_CODE_TYPES[code], blob_id, offset, length, uncompressed_length))
        offset += length
    return blobs


def header_length_from_tail(tail: bytes, pack_size: int) -> int:
    """The sealed header's length, read from the last four bytes of a pack."""
    if pack_size < _PLAIN_ENTRY.size + OVERHEAD + HEADER_LENGTH_SIZE:
        raise PackFormatError(f"pack is too short ({pack_size} bytes)")
    (length,) = struct.unpack("<I", tail[-HEADER_LENGTH_SIZE:])
    if length < OVERHEAD or length > MAX_HEADER_SIZE or length + HEADER_LENGTH_SIZE > pack_size:
        raise PackFormatError(f"pack header length {length} is impossible for a pack of {pack_size} bytes")
    return int(length)


class PackWriter:
    """Collects sealed blobs of one type into a pack, in memory, until it is big enough.

    The pack grows in one buffer that becomes the file as it is: joining a list of blobs at the
    end held each pack being finished twice (16 MiB each, two uploads at a time)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.blobs: list[PackedBlob] = []

    def __len__(self) -> int:
        return len(self._data)

    @property
    def count(self) -> int:
        return len(self.blobs)

    def add(self, blob_type: BlobType, blob_id: bytes, sealed: bytes, uncompressed_length: int) -> PackedBlob:
        """Append a sealed blob; uncompressed_length is 0 when it is stored raw."""
        entry = PackedBlob(blob_type, blob_id, len(self._data), len(sealed), uncompressed_length)
        self._data += sealed
        self.blobs.append(entry)
        return entry

    def finish_discard(self) -> None:
        """Forget everything collected so far."""
        self._data = bytearray()
        self.blobs = []

    def finish(self, key: Key) -> tuple[bytearray, bytes, list[PackedBlob]]:
        """Seal the header and return (pack bytes, pack ID, entries); the writer is empty after."""
        if not self.blobs:
            raise ValueError("a pack needs at least one blob")
        sealed_header = key.seal(encode_header(self.blobs))
        data = self._data
        data += sealed_header
        data += struct.pack("<I", len(sealed_header))
        blobs = self.blobs
        self.finish_discard()
        return data, hashlib.sha256(data).digest(), blobs
