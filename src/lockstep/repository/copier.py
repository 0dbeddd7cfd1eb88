"""Copying snapshots from one repository into another, as restic's `copy` does.

Both repositories have their own keys, so every blob the destination lacks is read from the
source (authenticated, decrypted, hash-checked) and sealed again with the destination's key.
Blob IDs are SHA-256 of the plaintext, so trees copy byte for byte and keep their IDs; what the
destination already holds, from any earlier backup or copy, is not sent again.

One snapshot at a time: its blobs, then the destination's packs and index, then the snapshot
file. An interrupted copy leaves at worst packs no index names (prune removes them), never a
snapshot that refers to something missing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from lockstep.errors import IntegrityError
from lockstep.repository.blobs import BlobType
from lockstep.repository.repository import Repository
from lockstep.repository.snapshot import Snapshot
from lockstep.repository.tag_lists import has_tags
from lockstep.repository.tree import Tree

ProgressCallback = Callable[[int], None]
# Blobs read and re-sealed at once: chunks are at most 8 MiB (1 MiB on average), so this bounds
# the memory in flight to a few dozen MiB while reads from object storage overlap.
BLOBS_IN_FLIGHT = 8


def similar_snapshots(a: Snapshot, b: Snapshot) -> bool:
    """restic's similarSnapshots: everything but `parent` and `original` is the same, so `b` is
    (a copy of) `a` and copying it again would only add a duplicate."""
    if (
        a.time_ns != b.time_ns
        or a.tree != b.tree
        or a.hostname != b.hostname
        or a.username != b.username
        or a.uid != b.uid
        or a.gid != b.gid
        or len(a.paths) != len(b.paths)
        or len(a.excludes) != len(b.excludes)
        or len(a.tags) != len(b.tags)
    ):
        return False
    return all(path in a.paths for path in b.paths) and has_tags(a, b.tags) and a.excludes == b.excludes


def persistent_id(snapshot: Snapshot) -> str:
    """The ID a snapshot keeps through copies: its `original`, else its own."""
    return snapshot.original.hex() if snapshot.original else snapshot.id


@dataclass(frozen=True)
class CopiedSnapshot:
    source_id: str
    destination_id: str
    blobs_added: int
    bytes_added: int


@dataclass(frozen=True)
class SkippedSnapshot:
    source_id: str
    existing_id: str  # the similar snapshot already in the destination


@dataclass
class CopyReport:
    """What a copy did; `blobs_added`/`bytes_added` are sealed blobs written to the destination."""

    copied: list[CopiedSnapshot] = field(default_factory=list)
    skipped: list[SkippedSnapshot] = field(default_factory=list)

    @property
    def blobs_added(self) -> int:
        return sum(item.blobs_added for item in self.copied)

    @property
    def bytes_added(self) -> int:
        return sum(item.bytes_added for item in self.copied)


def find_copy(snapshot: Snapshot, existing: dict[str, list[Snapshot]]) -> Snapshot | None:
    """The destination snapshot that `snapshot` was already copied to, if any. `existing` maps
    persistent IDs and own IDs to the destination's snapshots (see index_by_original)."""
    for candidate in existing.get(persistent_id(snapshot), []):
        if similar_snapshots(candidate, snapshot):
            return candidate
    return None


def index_by_original(snapshots: list[Snapshot]) -> dict[str, list[Snapshot]]:
    """The destination's snapshots by their `original` and by their own ID, as restic keys them
    (a destination snapshot that is itself the source's original counts too)."""
    found: dict[str, list[Snapshot]] = {}
    for snapshot in snapshots:
        if snapshot.original:
            found.setdefault(snapshot.original.hex(), []).append(snapshot)
        found.setdefault(snapshot.id, []).append(snapshot)
    return found


class Copier:
    """Copies snapshots from `source` into `destination` (both open, index loaded, locked)."""

    def __init__(self, source: Repository, destination: Repository, progress: ProgressCallback | None = None) -> None:
        self.source = source
        self.destination = destination
        self.progress = progress or (lambda _: None)
        # Trees already walked in this run: snapshots of one host share most of their trees.
        self._visited_trees: set[bytes] = set()
        self._add_lock = threading.Lock()

    def copy_snapshot(self, snapshot: Snapshot) -> CopiedSnapshot:
        """Copy the blobs `snapshot` needs, flush, then save it with `original` set and no parent
        (the parent names a snapshot of the source). On failure the packs written for it are
        removed again (best effort)."""
        blobs_before, bytes_before = self.destination.blobs_added, self.destination.bytes_added
        try:
            self._copy_tree(snapshot.tree)
            self.destination.flush()
        except BaseException:
            self.destination.discard_unindexed_packs()
            raise
        copy = replace(snapshot, parent=None, original=bytes.fromhex(persistent_id(snapshot)), id="")
        new_id = self.destination.save_snapshot(copy)
        return CopiedSnapshot(
            snapshot.id,
            new_id,
            self.destination.blobs_added - blobs_before,
            self.destination.bytes_added - bytes_before,
        )

    def _copy_tree(self, root: bytes) -> None:
        with ThreadPoolExecutor(max_workers=BLOBS_IN_FLIGHT, thread_name_prefix="lockstep-copy") as pool:
            in_flight: deque[Future[None]] = deque()
            for blob_type, blob_id, plaintext in self._missing_blobs(root):
                in_flight.append(pool.submit(self._store, blob_type, blob_id, plaintext))
                if len(in_flight) >= BLOBS_IN_FLIGHT:
                    in_flight.popleft().result()
            while in_flight:
                in_flight.popleft().result()

    def _store(self, blob_type: BlobType, blob_id: bytes, plaintext: bytes | None) -> None:
        """On a worker: read and verify a data blob from the source (a tree comes already read),
        and seal it for the destination. Packs take one blob at a time, hence the lock."""
        if plaintext is None:
            plaintext = self.source.load_blob(blob_type, blob_id)
        prepared = self.destination.prepare_blob(blob_type, plaintext, blob_id)
        if prepared is not None:
            with self._add_lock:
                self.destination.add_prepared(prepared)
        self.progress(len(plaintext))

    def _missing_blobs(self, root: bytes) -> Iterator[tuple[BlobType, bytes, bytes | None]]:
        """Every tree and data blob under `root` (trees not walked before in this run) that the
        destination lacks, each once; trees with their plaintext, read here to be walked."""
        pending = [root]
        queued: set[bytes] = set()
        while pending:
            tree_id = pending.pop()
            if tree_id in self._visited_trees:
                continue
            self._visited_trees.add(tree_id)
            raw = self.source.load_blob(BlobType.TREE, tree_id)
            try:
                tree = Tree.decode(raw)
            except ValueError as error:
                raise IntegrityError(f"tree {tree_id.hex()[:8]} cannot be decoded: {error}") from error
            if not self.destination.is_known(BlobType.TREE, tree_id):
                # The bytes as stored, not a re-encoding: the ID is their hash.
                yield BlobType.TREE, tree_id, raw
            for node in tree.nodes:
                for blob_id in node.content or ():
                    if blob_id not in queued and not self.destination.is_known(BlobType.DATA, blob_id):
                        queued.add(blob_id)
                        yield BlobType.DATA, blob_id, None
                if node.type == "dir" and node.subtree:
                    pending.append(node.subtree)
