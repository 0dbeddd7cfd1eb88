"""Pack files and their headers, byte for byte as restic lays them out (§7)."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from lockstep.repository.blobs import BlobType, PackedBlob
from lockstep.repository.crypto import OVERHEAD, Key
from lockstep.repository.pack import (
    EAGER_TAIL,
    PackFormatError,
    PackWriter,
    decode_header,
    encode_header,
    expected_pack_size,
    header_entry_size,
    header_length_from_tail,
)


def blob_id(seed: int) -> bytes:
    return hashlib.sha256(seed.to_bytes(4, "little")).digest()


def test_header_entries_are_37_or_41_bytes_with_restics_type_codes() -> None:
    blobs = [
        PackedBlob(BlobType.DATA, blob_id(0), 0, 100, 0),
        PackedBlob(BlobType.TREE, blob_id(1), 100, 200, 0),
        PackedBlob(BlobType.DATA, blob_id(2), 300, 300, 5000),
        PackedBlob(BlobType.TREE, blob_id(3), 600, 400, 6000),
    ]
    header = encode_header(blobs)
    assert [header_entry_size(blob) for blob in blobs] == [37, 37, 41, 41]
    assert len(header) == 37 + 37 + 41 + 41
    assert header[:37] == b"\x00" + struct.pack("<I", 100) + blob_id(0)
    assert header[37:74] == b"\x01" + struct.pack("<I", 200) + blob_id(1)
    assert header[74:115] == b"\x02" + struct.pack("<II", 300, 5000) + blob_id(2)
    assert header[115:] == b"\x03" + struct.pack("<II", 400, 6000) + blob_id(3)
    assert decode_header(header) == blobs


def test_decoded_offsets_are_running_sums_of_lengths() -> None:
    lengths = [33, 1000, 77, 5]
    header = b"".join(b"\x02" + struct.pack("<II", length, length * 3) + blob_id(i) for i, length in enumerate(lengths))
    decoded = decode_header(header)
    assert [blob.offset for blob in decoded] == [0, 33, 1033, 1110]
    assert [blob.uncompressed_length for blob in decoded] == [99, 3000, 231, 15]


def test_decodes_restics_sample_header() -> None:
    """The 41-byte header of the sample pack c1eebe51… (§7.2): one compressed 77-byte data blob."""
    identifier = bytes.fromhex("1d58d390d90f" + "00" * 26)
    header = bytes.fromhex("02" + "66000000" + "4d000000") + identifier
    assert decode_header(header) == [PackedBlob(BlobType.DATA, identifier, 0, 102, 77)]


@pytest.mark.parametrize(
    "header",
    [b"\x04" + bytes(36), b"\x00" + bytes(35), b"\x02" + bytes(39), b"\x00" + bytes(36) + b"\x01"],
    ids=["unknown type", "short plain entry", "short compressed entry", "trailing partial entry"],
)
def test_broken_headers_are_refused(header: bytes) -> None:
    with pytest.raises(PackFormatError):
        decode_header(header)


def test_expected_pack_size_matches_restics_formula() -> None:
    """The sample tree pack: five type-3 blobs of 1583 bytes in all make 1824 bytes (§7.2)."""
    lengths = [300, 300, 300, 300, 383]
    blobs = [PackedBlob(BlobType.TREE, blob_id(i), 0, length, 1) for i, length in enumerate(lengths)]
    assert expected_pack_size(blobs) == 1824
    raw = [PackedBlob(BlobType.DATA, blob_id(0), 0, 100, 0)]
    assert expected_pack_size(raw) == 100 + 37 + 32 + 4  # 173: restic's minimum is 73 + blob


def test_written_pack_parses_back_from_its_tail() -> None:
    key = Key.generate()
    writer = PackWriter()
    plaintexts = [os.urandom(size) for size in (10, 0, 1000, 3)]
    for number, plaintext in enumerate(plaintexts):
        # Pretend odd blobs were compressed: the header records whatever length it is given.
        writer.add(BlobType.DATA, blob_id(number), key.seal(plaintext), number % 2 * (len(plaintext) + 1))
    assert writer.count == 4
    expected_blobs = list(writer.blobs)
    data, pack_id, blobs = writer.finish(key)

    assert pack_id == hashlib.sha256(data).digest()
    assert blobs == expected_blobs
    assert len(data) == expected_pack_size(blobs)
    assert writer.count == 0 and len(writer) == 0

    header_length = header_length_from_tail(data[-EAGER_TAIL:], len(data))
    sealed_header = data[-4 - header_length : -4]
    assert header_length == OVERHEAD + sum(header_entry_size(blob) for blob in blobs)
    assert decode_header(key.open(sealed_header)) == blobs
    for blob, plaintext in zip(blobs, plaintexts, strict=True):
        assert key.open(data[blob.offset : blob.offset + blob.length]) == plaintext
    # Blobs are contiguous from offset 0, then the header, then its length: no gaps, no padding.
    assert blobs[0].offset == 0
    assert blobs[-1].offset + blobs[-1].length == len(data) - 4 - header_length


def test_an_empty_pack_is_never_written() -> None:
    with pytest.raises(ValueError):
        PackWriter().finish(Key.generate())


@pytest.mark.parametrize(
    ("length", "pack_size"),
    [(31, 1000), (997, 1000), (10, 50), (17 * 1024 * 1024, 64 * 1024 * 1024)],
    ids=["below overhead", "longer than pack", "pack too short", "header above 16 MiB"],
)
def test_impossible_header_lengths_are_refused(length: int, pack_size: int) -> None:
    with pytest.raises(PackFormatError):
        header_length_from_tail(struct.pack("<I", length), pack_size)
