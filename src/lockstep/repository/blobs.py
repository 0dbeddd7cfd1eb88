"""Blob identities and where blobs live in packs."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class BlobType(Enum):
    """restic keeps file contents (data) and directory listings (tree) as separate blob types."""

    DATA = "data"
    TREE = "tree"


class BlobLocation(NamedTuple):
    """Where one blob's sealed bytes sit: pack, offset, length; uncompressed_length 0 = stored raw."""

    pack_id: bytes
    offset: int
    length: int
    uncompressed_length: int

    @property
    def plaintext_length(self) -> int:
        """The blob's length after decryption and decompression."""
        if self.uncompressed_length:
            return self.uncompressed_length
        return self.length - 32


class PackedBlob(NamedTuple):
    """One entry of a pack header (and of the index): a blob and its place in the pack."""

    blob_type: BlobType
    blob_id: bytes
    offset: int
    length: int
    uncompressed_length: int
