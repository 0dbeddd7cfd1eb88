"""Encoding of the "unpacked" files (index, snapshot, lock) and of the config file (§4, §5).

In a v2 repository these are sealed `0x02 ‖ zstd(JSON)`; a leading `{` or `[` means plain
JSON (older writers). The config file is sealed plain JSON with no prefix, in v1 and v2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import zstandard

from lockstep.repository.crypto import Key
from lockstep.repository.gojson import go_json

ZSTD_PREFIX = 0x02


def decompress_frame(data: bytes | memoryview, expected_size: int | None = None) -> bytes:
    """Decompress one zstd frame; streaming, because restic's small frames carry no size."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    output = decompressor.decompress(data)
    if expected_size is not None and len(output) != expected_size:
        raise ValueError(f"decompressed to {len(output)} bytes, expected {expected_size}")
    return output


def encode_unpacked(key: Key, document: Any, repository_version: int) -> bytes:
    """Seal a JSON document as restic writes index, snapshot and lock files."""
    text = go_json(document).encode("utf-8")
    if repository_version >= 2:
        payload = bytes([ZSTD_PREFIX]) + zstandard.ZstdCompressor(level=3).compress(text)
    else:
        payload = text
    return key.seal(payload)


def decode_unpacked(key: Key, sealed: bytes, repository_version: int) -> Any:
    """Open and parse an index, snapshot or lock file. Raises AuthenticationFailed or ValueError."""
    payload = key.open(sealed)
    if repository_version >= 2 and payload and payload[0] not in (0x7B, 0x5B):
        if payload[0] != ZSTD_PREFIX:
            raise ValueError(f"unsupported encoding format {payload[0]:#x}")
        payload = decompress_frame(memoryview(payload)[1:])
    return json.loads(payload)


@dataclass(frozen=True)
class RepositoryConfig:
    """The repository's `config` file: format version, ID and chunker polynomial."""

    version: int
    id: str
    chunker_polynomial: int

    @classmethod
    def new(cls, chunker_polynomial: int) -> RepositoryConfig:
        return cls(version=2, id=os.urandom(32).hex(), chunker_polynomial=chunker_polynomial)

    def seal(self, key: Key) -> bytes:
        document = {"version": self.version, "id": self.id, "chunker_polynomial": f"{self.chunker_polynomial:x}"}
        return key.seal(go_json(document).encode("utf-8"))

    @classmethod
    def open(cls, key: Key, sealed: bytes) -> RepositoryConfig:
        document = json.loads(key.open(sealed))
        version = int(document["version"])
        if version not in (1, 2):
            raise ValueError(f"unsupported repository version {version}")
        return cls(version=version, id=str(document["id"]), chunker_polynomial=int(document["chunker_polynomial"], 16))
