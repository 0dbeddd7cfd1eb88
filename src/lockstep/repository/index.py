"""The index: which pack holds each blob, at which offset (§8).

The in-memory index is the union of every index file. Its size is bounded by the number of
blobs, not by the amount of data, which is what keeps backup and prune memory small.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from lockstep.repository.blobs import BlobLocation, BlobType, PackedBlob

# restic starts a new index file at 50,000 blobs.
MAX_BLOBS_PER_INDEX_FILE = 50_000


class Index:
    """Blob ID → location, one map per blob type, plus which index files were loaded."""

    def __init__(self) -> None:
        self._maps: dict[BlobType, dict[bytes, BlobLocation]] = {BlobType.DATA: {}, BlobType.TREE: {}}
        self.index_file_ids: set[str] = set()

    def __len__(self) -> int:
        return sum(len(blobs) for blobs in self._maps.values())

    def count(self, blob_type: BlobType) -> int:
        return len(self._maps[blob_type])

    def has(self, blob_type: BlobType, blob_id: bytes) -> bool:
        return blob_id in self._maps[blob_type]

    def lookup(self, blob_type: BlobType, blob_id: bytes) -> BlobLocation | None:
        return self._maps[blob_type].get(blob_id)

    def add_pack(self, pack_id: bytes, blobs: Iterable[PackedBlob]) -> None:
        """Record every blob of a pack; a blob already known keeps its first location."""
        for blob in blobs:
            blob_map = self._maps[blob.blob_type]
            if blob.blob_id not in blob_map:
                blob_map[blob.blob_id] = BlobLocation(pack_id, blob.offset, blob.length, blob.uncompressed_length)

    def remove_pack(self, pack_id: bytes, blobs: Iterable[PackedBlob]) -> None:
        """Forget the blobs of a pack, where this pack is where the index has them."""
        for blob in blobs:
            blob_map = self._maps[blob.blob_type]
            location = blob_map.get(blob.blob_id)
            if location is not None and location.pack_id == pack_id:
                del blob_map[blob.blob_id]

    def blobs(self, blob_type: BlobType) -> Iterator[tuple[bytes, BlobLocation]]:
        yield from self._maps[blob_type].items()

    def pack_ids(self) -> set[bytes]:
        return {location.pack_id for blob_map in self._maps.values() for location in blob_map.values()}

    def merge_file(self, index_file_id: str, document: Any) -> list[tuple[bytes, list[PackedBlob]]]:
        """Add the packs of one decoded index file; returns them for callers that need them."""
        packs = parse_index_document(document)
        for pack_id, blobs in packs:
            self.add_pack(pack_id, blobs)
        self.index_file_ids.add(index_file_id)
        return packs


def parse_index_document(document: Any) -> list[tuple[bytes, list[PackedBlob]]]:
    """Decode an index file's JSON (also the ancient bare-list form) into packs and blobs."""
    pack_list = document if isinstance(document, list) else document.get("packs") or []
    packs = []
    for pack in pack_list:
        pack_id = bytes.fromhex(pack["id"])
        blobs = [
            PackedBlob(
                BlobType(blob["type"]),
                bytes.fromhex(blob["id"]),
                int(blob["offset"]),
                int(blob["length"]),
                int(blob.get("uncompressed_length") or 0),
            )
            for blob in pack.get("blobs") or []
        ]
        packs.append((pack_id, blobs))
    return packs


def index_document(packs: Iterable[tuple[bytes, list[PackedBlob]]]) -> dict[str, Any]:
    """The JSON document of an index file listing whole packs."""
    pack_list = []
    for pack_id, blobs in packs:
        entries = []
        for blob in blobs:
            entry: dict[str, Any] = {
                "id": blob.blob_id.hex(),
                "type": blob.blob_type.value,
                "offset": blob.offset,
                "length": blob.length,
            }
            if blob.uncompressed_length:
                entry["uncompressed_length"] = blob.uncompressed_length
            entries.append(entry)
        pack_list.append({"id": pack_id.hex(), "blobs": entries})
    return {"packs": pack_list}
