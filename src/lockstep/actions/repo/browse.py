"""`lockstep repo snapshots`, `ls`, `stats`: reading what a repository holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockstep.actions.repo.session import RepositoryAccess
from lockstep.repository.blobs import BlobType
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tag_lists import matches_tag_options
from lockstep.repository.tree import Node
from lockstep.storage.base import FileType


def list_snapshots(access: RepositoryAccess, tags: list[str] | None = None) -> list[Snapshot]:
    """Snapshots oldest first; with tags, restic's filter: `a,b` = both, repeated options = either."""
    with access.session(lock=False, load_index=False) as repository:
        snapshots = repository.list_snapshots(skip_unreadable=True)
    return [snapshot for snapshot in snapshots if matches_tag_options(snapshot, tags or ())]


def snapshot_document(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as `--json` prints it: restic's fields plus id and short_id."""
    document = snapshot.to_document()
    document["id"] = snapshot.id
    document["short_id"] = snapshot.short_id
    return document


@dataclass(frozen=True)
class ListedNode:
    path: str
    node: Node


def list_files(access: RepositoryAccess, reference: str) -> tuple[Snapshot, list[ListedNode]]:
    with access.session(lock=False) as repository:
        snapshot = repository.find_snapshot(reference)
        nodes = [
            ListedNode(path.decode("utf-8", "backslashreplace"), node) for path, node in repository.walk(snapshot.tree)
        ]
    return snapshot, nodes


@dataclass(frozen=True)
class RepositoryStats:
    snapshots: int
    packs: int
    pack_bytes: int
    data_blobs: int
    tree_blobs: int
    uncompressed_bytes: int
    index_files: int

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.pack_bytes if self.pack_bytes else 0.0


def repository_stats(access: RepositoryAccess) -> RepositoryStats:
    with access.session(lock=False) as repository:
        packs = list(repository.backend.list(FileType.PACK))
        snapshots = sum(1 for _ in repository.backend.list(FileType.SNAPSHOT))
        uncompressed = sum(location.plaintext_length for _, location in repository.index.blobs(BlobType.DATA))
        uncompressed += sum(location.plaintext_length for _, location in repository.index.blobs(BlobType.TREE))
        return RepositoryStats(
            snapshots=snapshots,
            packs=len(packs),
            pack_bytes=sum(size for _, size in packs),
            data_blobs=sum(1 for _ in repository.index.blobs(BlobType.DATA)),
            tree_blobs=sum(1 for _ in repository.index.blobs(BlobType.TREE)),
            uncompressed_bytes=uncompressed,
            index_files=len(repository.index.index_file_ids),
        )
